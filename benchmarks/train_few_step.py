"""Few-step generators on 2-D toys: W2 against NFE, and training steps to a one-step target (issue 17).

For each of ``moons`` and ``checkerboard`` (``pfode.data.toy2d``, 50,000 training points):

1. the **teacher**: a 1-rectified flow (flow matching on the Linear path, independent coupling), sampled with
   100 Euler steps in path time (uniform grid t = 1 -> 0);
2. the students, each a dict entry of :data:`METHODS` (``name -> train function``), all with the same residual MLP
   (width 128, depth 3; CTM's adds an embedding of its second time), AdamW, batch 256, lr 1e-3 after a 100-step
   warm-up, EMA 0.995 (evaluated and, where the method uses one, the target):

   * ``consistency-fm``: Consistency Flow Matching (Yang et al., 2024), one segment (``-2seg``: two), delta 1e-3,
     alpha 1e-5, boundary 0.1 (the paper's CIFAR-10 settings), stop-gradient target; Euler steps;
   * ``ctm``: Consistency Trajectory Model (Kim et al., 2024) distilled from the teacher, 18-point grid uniform in
     t on the Linear path, up to 4 teacher Heun steps per target, DSM weight 1 (EDM weighting), EMA target;
     gamma = 0 jumps;
   * ``ct`` / ``cd``: the library's consistency training / distillation (``objective: consistency-*``, Song et al.
     2023 with Song & Dhariwal 2024's pseudo-Huber metric) on the EDM path (sigma_data = 1), CT with the
     discretisation curriculum 10 -> 1280 and the log-normal step sampler, CD with 18 Heun steps of the teacher;
     multistep consistency sampling;
   * ``2-rf``: reflow (Liu et al., 2023): the teacher's 100-step Euler solutions from fresh noise as pairs, flow
     matching on them from the teacher's weights, U-shaped times and pseudo-Huber metric (Lee et al., 2024);
   * ``instaflow``: 2-RF + one-step distillation, from ``benchmarks/train_instaflow.py`` when that file is present
     (its own 2-RF; reported without a curve).

3. W2 (exact: POT ``emd2`` on 2,000 samples against 2,000 fresh data points) at 1, 2 and 4 NFE for each method and
   at 100 NFE for the teacher; the data-vs-data W2 of two 2,000-point sets is the floor;
4. convergence: every ``eval_every`` steps, W2 at 1 NFE (1,000 samples against 1,000 data points, exact OT) of the
   EMA model; the **target** is ``1.2 x`` the teacher's 100-NFE W2 on those same 1,000 points, and the table
   reports the first evaluated step that reaches it ("-" if none). Steps count the method's own optimiser steps:
   ``2-rf``, ``cd`` and ``ctm`` also need the teacher (its steps are listed once), ``consistency-fm`` and ``ct``
   train from data alone -- the comparison the Consistency-FM paper's claim (4.4x faster than consistency models,
   1.7x faster than rectified flow) is about; the teacher's own curve (W2 of the 1-RF at 1 NFE over its training,
   ``1-rf (teacher)`` in the plot) is the rectified-flow side of that comparison.

Adding a method: write ``fn(ctx: Context) -> Result`` and put it in :data:`METHODS` (or call
:func:`register`); ``ctx`` holds the data, the teacher and the evaluation helpers, :func:`train_curve` trains any
``pfode.train`` objective with the curve.

Run: ``.venv/bin/python benchmarks/train_few_step.py`` (about 10 minutes on 2 busy CPU cores; ``--quick``:
a smoke run of a minute or two; ``--methods``/``--datasets`` to select). Writes
``benchmarks/results/train_few_step.json`` and ``train_few_step.png`` (the curves).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode import metrics  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.nets import MLP  # noqa: E402
from pfode.nets.ctm import TwoTimeMLP  # noqa: E402
from pfode.solvers import get as get_solver  # noqa: E402
from pfode.train import (  # noqa: E402
    CTM,
    Consistency,
    ConsistencyFM,
    FlowMatching,
    Paired,
    Trainer,
    generate_reflow_pairs,
)

NFES = (1, 2, 4)
N_EVAL = 2000
N_CURVE = 1000
WIDTH, DEPTH, BATCH, LR, EMA = 128, 3, 256, 1e-3, 0.995
TARGET_FACTOR = 1.2

Sampler = Callable[[torch.Tensor, int], torch.Tensor]  # (z [n, 2] standard normal, nfe) -> samples


@dataclass
class Context:
    """What a method's train function gets."""

    name: str  # the toy
    data: torch.Tensor
    steps: int  # optimiser steps per method
    eval_every: int
    quick: bool
    curve_z: torch.Tensor
    curve_ref: torch.Tensor
    teacher: pfode.Denoiser | None = None  # the 1-rectified flow (velocity on the Linear path)
    teacher_net: torch.nn.Module | None = None
    target_w2: float | None = None  # the one-step target on the curve set
    seed: int = 0


@dataclass
class Result:
    sampler: Sampler
    curve: list = field(default_factory=list)  # [(step, W2 at 1 NFE on the curve set)]
    steps: int = 0
    train_s: float = 0.0
    info: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the trained (EMA) network, where there is one


def euler_sampler(den: pfode.Denoiser) -> Sampler:
    """Euler in path time on ``nfe`` uniform steps from ``t = 1`` to ``0`` (the rectified-flow sampler)."""

    def run(z, nfe):
        grid = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)
        return pfode.sample(den, z, grid, get_solver("euler", variable="t"))

    return run


def w2_1nfe(sampler: Sampler, ctx: Context) -> float:
    with torch.no_grad():
        return metrics.w2_samples(sampler(ctx.curve_z, 1), ctx.curve_ref)


def train_curve(obj, net, ctx: Context, sampler_of: Callable, *, data=None, init=None, lr=LR, seed=None) -> Result:
    """Train ``net`` with objective ``obj`` for ``ctx.steps`` steps, evaluating W2 at 1 NFE of the EMA model every
    ``ctx.eval_every`` steps; ``sampler_of(model) -> Sampler``."""
    seed = ctx.seed if seed is None else seed
    if init is not None:
        net.load_state_dict(init.state_dict())
    cfg = dict(
        iterations=ctx.steps,
        batch_size=BATCH,
        lr=lr,
        warmup_steps=100,
        grad_clip=1.0,
        ema_decay=EMA,
        seed=seed,
        quiet=True,
        log_every=0,
        tensorboard=False,
    )
    tr = Trainer(net, obj, ctx.data if data is None else data, cfg)
    curve, train_s = [], 0.0
    for stop in range(ctx.eval_every, ctx.steps + 1, ctx.eval_every):
        with Timer() as t:
            tr.fit(stop, save_final=False)
        train_s += t.s
        curve.append((stop, w2_1nfe(sampler_of(tr.ema), ctx)))
    return Result(sampler_of(tr.ema), curve, ctx.steps, train_s, model=tr.ema)


def _mlp(seed):
    torch.manual_seed(seed)
    return MLP((2,), width=WIDTH, depth=DEPTH, time_dim=64)


# --- methods -------------------------------------------------------------------------------------
def consistency_fm(segments: int, delta: float = 1e-3):
    def train(ctx: Context) -> Result:
        obj = ConsistencyFM(segments=segments, delta=delta)
        res = train_curve(obj, _mlp(ctx.seed + 1), ctx, lambda m: lambda z, nfe: obj.sample(m, z, nfe=nfe))
        res.info.update(segments=segments, delta=delta, sampler="Euler, nfe/N steps per segment (1 NFE: one step)")
        return res

    return train


def ctm(ctx: Context) -> Result:
    obj = CTM(ctx.teacher.path, teacher=ctx.teacher, steps=18, heun_steps=4, spacing="uniform", sigma_data=1.0)
    torch.manual_seed(ctx.seed + 2)
    net = TwoTimeMLP((2,), width=WIDTH, depth=DEPTH, time_dim=64)
    res = train_curve(obj, net, ctx, lambda m: lambda z, nfe: obj.sample(m, z, nfe=nfe))
    res.info.update(sampler="gamma = 0 jumps on uniform times")
    return res


def consistency(mode: str):
    def train(ctx: Context) -> Result:
        if mode == "training":
            obj = Consistency(
                "edm", "training", sigma_data=1.0, curriculum=True, total_steps=ctx.steps, index_sampler="lognormal"
            )
        else:
            obj = Consistency("edm", "distillation", teacher=ctx.teacher, sigma_data=1.0, teacher_solver="heun")
        res = train_curve(obj, _mlp(ctx.seed + 3), ctx, lambda m: lambda z, nfe: obj.sample(m, z, nfe=nfe))
        res.info.update(sampler="multistep consistency sampling")
        return res

    return train


def reflow(ctx: Context) -> Result:
    n_pairs = 4000 if ctx.quick else 20_000
    tmp = Path(tempfile.mkdtemp(prefix=f"fewstep-pairs-{ctx.name}-"))
    grid = torch.linspace(1.0, 0.0, 101, dtype=torch.float64)
    with Timer() as tg:
        store = generate_reflow_pairs(
            ctx.teacher, n_pairs, tmp, (2,), batch_size=5000, grid=grid, solver=get_solver("euler", variable="t"),
            seed=ctx.seed + 7, progress=False,
        )  # fmt: skip
        pairs = store.load()
    shutil.rmtree(tmp, ignore_errors=True)
    obj = FlowMatching(coupling=Paired(), time_sampler="u-shaped", metric="pseudo-huber")
    res = train_curve(
        obj, _mlp(ctx.seed + 4), ctx, lambda m: euler_sampler(obj.denoiser(m)), data=pairs, init=ctx.teacher_net
    )
    res.info.update(pairs=n_pairs, pair_generation_s=tg.s, init="teacher")
    return res


def _instaflow():
    try:
        from train_instaflow import train_instaflow
    except ImportError:
        return None

    def train(ctx: Context) -> Result:
        n = ctx.steps // 2
        with Timer() as t:
            out = train_instaflow(
                ctx.teacher, data=ctx.data, n_pairs=4000 if ctx.quick else 20_000, reflow_steps=n,
                distill_steps=ctx.steps - n, init=ctx.teacher_net, width=WIDTH, seed=ctx.seed + 5,
            )  # fmt: skip
        res = Result(out.distilled, [], ctx.steps, t.s, {"note": "no curve; steps = reflow + distillation"})
        res.info.update({k: v for k, v in out.info.items() if k != "distill_times"})
        return res

    return train


METHODS: dict[str, Callable[[Context], Result]] = {
    "consistency-fm": consistency_fm(1),
    "consistency-fm-2seg": consistency_fm(2),
    "ctm": ctm,
    "ct": consistency("training"),
    "cd": consistency("distillation"),
    "2-rf": reflow,
}


# run only when named with --methods
OPTIONAL: dict[str, Callable[[Context], Result]] = {
    "consistency-fm-delta0.05": consistency_fm(1, delta=0.05),  # a 50x larger gap than the paper's
}


def register(name: str, fn: Callable[[Context], Result]):
    """Add a method (``fn(ctx) -> Result``) to the comparison."""
    METHODS[name] = fn


if (_fn := _instaflow()) is not None:
    register("instaflow", _fn)


# --- driver --------------------------------------------------------------------------------------
def steps_to_target(curve, target):
    return next((s for s, w in curve if w <= target), None)


def run_dataset(name: str, methods: list[str], steps: int, eval_every: int, quick: bool) -> dict:
    data = toy2d(name, 50_000, seed=0)
    ref = toy2d(name, N_EVAL, seed=1001)
    z = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(2024))
    ctx = Context(
        name, data, steps, eval_every, quick,
        curve_z=torch.randn(N_CURVE, 2, generator=torch.Generator().manual_seed(77)),
        curve_ref=toy2d(name, N_CURVE, seed=1003),
    )  # fmt: skip
    floor = metrics.w2_samples(toy2d(name, N_EVAL, seed=1002), ref)
    out = {"w2_data_vs_data": floor, "methods": {}}
    # teacher
    obj = FlowMatching(time_sampler="uniform")
    sub = Context(**{**ctx.__dict__, "steps": ctx.steps if quick else 2 * ctx.steps})
    t_res = train_curve(obj, _mlp(0), sub, lambda m: euler_sampler(obj.denoiser(m)))
    ctx.teacher, ctx.teacher_net = obj.denoiser(t_res.model), t_res.model
    with torch.no_grad():
        t100 = metrics.w2_samples(t_res.sampler(z, 100), ref)
        t100_curve = metrics.w2_samples(t_res.sampler(ctx.curve_z, 100), ctx.curve_ref)
        tw = {f"w2_nfe{k}": metrics.w2_samples(t_res.sampler(z, k), ref) for k in NFES}
    ctx.target_w2 = TARGET_FACTOR * t100_curve
    t_hit = steps_to_target(t_res.curve, ctx.target_w2)
    out["teacher"] = {"w2_nfe100": t100, "w2_nfe100_curve_set": t100_curve, **tw, "steps": sub.steps,
                      "train_s": t_res.train_s, "curve": t_res.curve, "steps_to_target": t_hit}  # fmt: skip
    out["target_w2_curve_set"] = ctx.target_w2
    rows = [["teacher (1-RF)", *(tw[f"w2_nfe{k}"] for k in NFES), t100, sub.steps, "-" if t_hit is None else t_hit,
             t_res.train_s]]  # fmt: skip
    for m in methods:
        res = METHODS[m](ctx)
        with torch.no_grad():
            w = {f"w2_nfe{k}": metrics.w2_samples(res.sampler(z, k), ref) for k in NFES}
        hit = steps_to_target(res.curve, ctx.target_w2)
        ratio = w["w2_nfe1"] / t100
        out["methods"][m] = {
            **w,
            "w2_nfe1_over_teacher_nfe100": ratio,
            "pass_target_1.2x": ratio <= TARGET_FACTOR,
            "steps_to_target": hit,
            "curve": res.curve,
            "steps": res.steps,
            "train_s": res.train_s,
            **{k: v for k, v in res.info.items() if isinstance(v, (int, float, str, type(None)))},
        }
        rows.append([m, *(w[f"w2_nfe{k}"] for k in NFES), "-", res.steps, "-" if hit is None else hit, res.train_s])
        print(f"  {name}/{m}: W2@1 {w['w2_nfe1']:.4f} ({ratio:.2f}x teacher@100), {res.train_s:.0f}s", flush=True)
    print(f"\n## {name}  (W2 data vs data, {N_EVAL} points each: {floor:.4f}; teacher W2@100 {t100:.4f}; target on "
          f"the {N_CURVE}-point curve set: W2@1 <= {ctx.target_w2:.4f})")  # fmt: skip
    print(table(rows, ["method", *(f"W2@{k}" for k in NFES), "W2@100", "steps", "steps to target", "train s"]))
    return out


def plot(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = report["datasets"][name]
        for m, r in [("1-rf (teacher)", d["teacher"]), *d["methods"].items()]:
            if r["curve"]:
                s, w = zip(*r["curve"])
                ax.plot(s, w, marker="o", ms=3, label=m)
        ax.axhline(d["target_w2_curve_set"], color="k", ls="--", lw=1, label="target 1.2x teacher@100")
        ax.set_yscale("log")
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel(f"W2 at 1 NFE ({N_CURVE} samples)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run (small budgets)")
    ap.add_argument("--datasets", nargs="+", default=["moons", "checkerboard"])
    ap.add_argument("--methods", nargs="+", default=None, help=f"subset of {', '.join([*METHODS, *OPTIONAL])}")
    ap.add_argument("--tag", default=None, help="suffix of the result files")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per method")
    ap.add_argument(
        "--merge", nargs="+", default=None, metavar="JSON",
        help="combine per-dataset result files (runs with one --datasets each, e.g. in parallel) into one",
    )  # fmt: skip
    args = ap.parse_args(argv)
    setup()
    if args.merge:
        return merge(args.merge)
    methods = args.methods or list(METHODS)
    METHODS.update({m: OPTIONAL[m] for m in methods if m in OPTIONAL})
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: {', '.join([*METHODS, *OPTIONAL])}")
    steps = args.steps or (150 if args.quick else 1000)
    eval_every = max(steps // 6, 25)
    t0 = time.perf_counter()
    report = {
        "settings": {
            "steps_per_method": steps,
            "teacher_steps": steps if args.quick else 2 * steps,
            "eval_every": eval_every,
            "n_eval": N_EVAL,
            "n_curve": N_CURVE,
            "nfe": list(NFES),
            "net": f"MLP width {WIDTH} depth {DEPTH}",
            "batch": BATCH,
            "lr": LR,
            "ema": EMA,
            "target": f"W2@1 <= {TARGET_FACTOR} x teacher W2@100",
            "quick": args.quick,
        },
        "datasets": {},
    }
    for name in args.datasets:
        report["datasets"][name] = run_dataset(name, methods, steps, eval_every, args.quick)
    report["total_s"] = time.perf_counter() - t0
    stem = (
        "train_few_step" if args.datasets == ["moons", "checkerboard"] else "train_few_step_" + "_".join(args.datasets)
    ) + (f"_{args.tag}" if args.tag else "")
    png = RESULTS / f"{stem}.png"
    plot(report, png)
    p = write_json(f"{stem}.json", report)
    print(f"\ntotal {report['total_s']:.0f}s; wrote {p} and {png}")


def merge(files: list[str]):
    """One report (``train_few_step.json`` + ``.png``) from runs on single datasets."""
    import json

    parts = [json.loads(Path(f).read_text()) for f in files]
    report = {"settings": parts[0]["settings"], "datasets": {}, "parts": [str(f) for f in files]}
    for part in parts:
        report["datasets"].update(part["datasets"])
    report["total_s"] = sum(p["total_s"] for p in parts)
    png = RESULTS / "train_few_step.png"
    plot(report, png)
    p = write_json("train_few_step.json", report)
    print(f"wrote {p} and {png}")


if __name__ == "__main__":
    main()
