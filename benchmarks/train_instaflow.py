"""InstaFlow on 2-D toys: 1-rectified flow teacher -> 2-rectified flow (reflow) -> one-step distillation.

Liu et al., "InstaFlow: One Step is Enough for High-Quality Diffusion-Based Text-to-Image Generation"
(ICLR 2024): reflow straightens the teacher's flow and fixes a good noise -> sample coupling; a student,
initialised from the 2-rectified flow, is then regressed on the 2-RF's own (noise, sample) pairs with a
distance D (here L2, pseudo-Huber or random-Fourier-feature distance; :class:`pfode.train.distill.Distillation`).

:func:`train_instaflow` is the reusable piece (``benchmarks/train_few_step.py`` imports it): given data and a
teacher it returns samplers ``sampler(z, nfe) -> x`` of the 2-RF and of the distilled student. All sampling is
DDIM on the Linear path = Euler in ``t`` on ``nfe`` uniform times from ``t = 1`` with the last step to ``t = 0``.

Run alone: ``.venv/bin/python benchmarks/train_instaflow.py`` (``--quick`` for a smoke run) takes the shipped
moons 1-RF (``builtin:moons``) and trains a checkerboard 1-RF (MLP 128 x 3), then 2-RF and 2-RF + distillation
(10,000 pairs of 50-step Euler each stage), and prints W2 (exact, POT, 2,000 samples against 2,000
fresh data points) at 1, 2 and 4 NFE beside the teacher at 100 NFE and the data-vs-data floor. Writes
``benchmarks/results/train_instaflow.json`` and ``train_instaflow.png``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

from pfode import metrics  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.nets import MLP  # noqa: E402
from pfode.paths import Linear  # noqa: E402
from pfode.predictions import Denoiser  # noqa: E402
from pfode.solvers import get as get_solver  # noqa: E402
from pfode.train import FlowMatching, Paired, Trainer, generate_reflow_pairs  # noqa: E402
from pfode.train.distill import Distillation, ddim_sample, uniform_times  # noqa: E402

NFES = (1, 2, 4)
N_EVAL = 2000
PATH = Linear()


def sampler_of(den: Denoiser):
    """``sampler(z, nfe)``: DDIM (Euler in t on the Linear path) on ``nfe`` uniform times from t = 1."""

    def sampler(z: torch.Tensor, nfe: int) -> torch.Tensor:
        return ddim_sample(den, z, uniform_times(den.path, nfe, 1.0))

    return sampler


def _train(obj, data, steps, lr, init=None, seed=0, width=256, batch=512):
    torch.manual_seed(seed)
    net = MLP((2,), width=width, depth=3, time_dim=64)
    if init is not None:
        net.load_state_dict(init.state_dict())
    cfg = dict(
        iterations=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=min(200, steps // 5),
        lr_schedule="cosine",
        min_lr_ratio=0.05,
        grad_clip=1.0,
        ema_decay=0.999,
        seed=seed,
        quiet=True,
        log_every=0,
    )
    tr = Trainer(net, obj, data, cfg)
    with Timer() as t:
        tr.fit(save_final=False)
    return tr, t.s


def _pairs(den, n, seed, nfe):
    tmp = Path(tempfile.mkdtemp(prefix="instaflow-pairs-"))
    grid = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)
    with Timer() as t:
        store = generate_reflow_pairs(
            den, n, tmp, (2,), batch_size=5000, grid=grid, solver=get_solver("euler", variable="t"), seed=seed,
            progress=False,
        )  # fmt: skip
        pairs = store.load()
    shutil.rmtree(tmp, ignore_errors=True)
    return pairs, t.s


@dataclass
class InstaFlow:
    """What :func:`train_instaflow` returns: samplers ``(z, nfe) -> x`` and timings."""

    reflow: object  # the 2-rectified flow
    distilled: object  # 2-RF + distillation
    reflow_model: torch.nn.Module
    student_model: torch.nn.Module
    info: dict = field(default_factory=dict)


def train_instaflow(
    teacher: Denoiser,
    *,
    data: torch.Tensor | None = None,
    n_pairs: int = 20_000,
    teacher_nfe: int = 100,
    reflow_steps: int = 2000,
    distill_steps: int = 1000,
    distance: str = "l2",
    distill_nfe: int = 1,
    init: torch.nn.Module | None = None,
    width: int = 256,
    seed: int = 0,
) -> InstaFlow:
    """Reflow then distillation (InstaFlow) of ``teacher`` on a 2-D toy; returns the samplers.

    Args:
        teacher: the 1-rectified flow (or any teacher) as a :class:`pfode.Denoiser`; pairs are its 100-step
            Euler solutions (in path time, from ``t = 1``).
        data: unused by the method (reflow needs no data) -- accepted so callers can pass their toy set.
        n_pairs: teacher pairs for reflow, and 2-RF pairs for distillation.
        reflow_steps, distill_steps: optimiser steps of the two stages (batch 512).
        distance: ``"l2"``, ``"pseudo-huber"`` or ``"features"`` (:class:`~pfode.train.distill.Distillation`).
        distill_nfe: steps of the distilled student (1: InstaFlow's one-step generator).
        init: the 2-RF's initial weights (an MLP ``(2,) width x 3``, e.g. the teacher's network); default fresh.
        width: MLP width (when ``init`` is not given).
    Returns:
        :class:`InstaFlow` with ``reflow(z, nfe)`` and ``distilled(z, nfe)`` samplers; the distilled one runs on
        its trained grid when ``nfe == distill_nfe``, else on ``nfe`` uniform times (off its grid).
    """
    del data
    pairs, t_p1 = _pairs(teacher, n_pairs, seed + 7, teacher_nfe)
    reflow = FlowMatching(coupling=Paired(), time_sampler="u-shaped", metric="pseudo-huber")
    rf2, t_rf = _train(reflow, pairs, reflow_steps, 1e-3, init=init, seed=seed + 1, width=width)
    rf2_den = reflow.denoiser(rf2.ema)
    pairs2, t_p2 = _pairs(rf2_den, n_pairs, seed + 8, teacher_nfe)
    times = uniform_times(PATH, distill_nfe, 1.0)
    dist = Distillation(PATH, "velocity", distance=distance, times=times)
    st, t_d = _train(dist, pairs2, distill_steps, 5e-4, init=rf2.ema, seed=seed + 2, width=width)
    st_den = dist.denoiser(st.ema)
    base = sampler_of(st_den)

    def distilled(z, nfe):
        return ddim_sample(st_den, z, times) if nfe == distill_nfe else base(z, nfe)

    info = {
        "pairs_s": t_p1,
        "reflow_s": t_rf,
        "student_pairs_s": t_p2,
        "distill_s": t_d,
        "reflow_steps": reflow_steps,
        "distill_steps": distill_steps,
        "n_pairs": n_pairs,
        "distance": distance,
        "distill_times": times.tolist(),
    }
    return InstaFlow(sampler_of(rf2_den), distilled, rf2.ema, st.ema, info)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    ap.add_argument("--datasets", nargs="+", default=["moons", "checkerboard"])
    ap.add_argument("--distance", default="l2", choices=("l2", "pseudo-huber", "features"))
    ap.add_argument("--train-moons-teacher", action="store_true", help="train the moons 1-RF (default: builtin:moons)")
    ap.add_argument("--steps-2rf", type=int, default=None, help="reflow steps (default 1500)")
    ap.add_argument("--steps-distill", type=int, default=None, help="distillation steps (default 800)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per stage (default 10000)")
    ap.add_argument("--tag", default="", help="suffix of the JSON/PNG names")
    args = ap.parse_args(argv)
    setup()
    t_start = time.perf_counter()
    s1, s2, sd, n_pairs, t_nfe = (300, 200, 150, 4000, 50) if args.quick else (2000, 1500, 800, 10_000, 50)
    s2, sd, n_pairs = args.steps_2rf or s2, args.steps_distill or sd, args.pairs or n_pairs
    stem = "train_instaflow" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    report = {
        "settings": {
            "steps_1rf": s1,
            "steps_2rf": s2,
            "steps_distill": sd,
            "pairs": n_pairs,
            "pair_nfe": t_nfe,
            "width": 128,
            "n_eval": N_EVAL,
            "distance": args.distance,
            "sampler": "DDIM = Euler in t on the Linear path, uniform times from t=1, last step to t=0",
        },
        "datasets": {},
    }
    curves = {}
    for name in args.datasets:
        data = toy2d(name, 50_000, seed=0)
        ref = toy2d(name, N_EVAL, seed=1001)
        z = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(2024))
        floor = metrics.w2_samples(toy2d(name, N_EVAL, seed=1002), ref)
        if name == "moons" and not args.train_moons_teacher:  # the shipped 1-RF (5,000 steps, MLP 128 x 3)
            from pfode.models import load

            shipped = load("builtin:moons")
            teacher, init, t1 = shipped.denoiser, shipped.net, 0.0
        else:
            fm = FlowMatching(time_sampler="uniform")
            rf1, t1 = _train(fm, data, s1, 2e-3, width=128)
            teacher, init = fm.denoiser(rf1.ema), rf1.ema
        t_sampler = sampler_of(teacher)
        res = train_instaflow(
            teacher,
            n_pairs=n_pairs,
            teacher_nfe=t_nfe,
            reflow_steps=s2,
            distill_steps=sd,
            distance=args.distance,
            init=init,
            width=128,
        )
        rows, entry = (
            [],
            {
                "w2_data_vs_data": floor,
                "train_1rf_s": t1,
                "teacher": "builtin:moons" if t1 == 0 else "trained",
                **res.info,
            },
        )
        with torch.no_grad():
            w_t100 = metrics.w2_samples(t_sampler(z, 100), ref)
            for label, smp in (("1-RF teacher", t_sampler), ("2-RF", res.reflow), ("2-RF + distill", res.distilled)):
                w = {nfe: metrics.w2_samples(smp(z, nfe), ref) for nfe in NFES}
                entry[label] = {f"w2_nfe{k}": v for k, v in w.items()}
                rows.append([label, *w.values()])
                curves[(name, label)] = w
        entry["1-RF teacher"]["w2_nfe100"] = w_t100
        ratio = entry["2-RF + distill"]["w2_nfe1"] / w_t100
        entry["one_step_over_teacher_100"] = ratio
        entry["pass_within_1.2x"] = ratio <= 1.2
        report["datasets"][name] = entry
        rows.append(["1-RF teacher, 100 NFE", w_t100, "", ""])
        rows.append(["data vs data", floor, "", ""])
        print(f"\n## {name}")
        print(table(rows, ["model", *[f"W2@{k}" for k in NFES]]))
        print(
            f"2-RF + distill at 1 NFE / teacher at 100 NFE = {ratio:.3f} (<= 1.2: {ratio <= 1.2}); times: 1-RF "
            f"{t1:.0f}s, pairs {res.info['pairs_s']:.0f}s, 2-RF {res.info['reflow_s']:.0f}s, "
            f"student pairs {res.info['student_pairs_s']:.0f}s, distill {res.info['distill_s']:.0f}s"
        )
    from pfode.plots import _figure

    fig = _figure(5 * len(args.datasets), 4)
    for j, name in enumerate(args.datasets):
        ax = fig.add_subplot(1, len(args.datasets), j + 1)
        for label in ("1-RF teacher", "2-RF", "2-RF + distill"):
            w = curves[(name, label)]
            ax.plot(list(w), list(w.values()), "o-", label=label)
        e = report["datasets"][name]
        ax.axhline(e["1-RF teacher"]["w2_nfe100"], color="k", ls="--", lw=1, label="teacher, 100 NFE")
        ax.axhline(e["w2_data_vs_data"], color="gray", ls=":", lw=1, label="data vs data")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("W2")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = RESULTS / f"{stem}.png"
    fig.savefig(png)
    report["plot"] = png.name
    report["total_s"] = time.perf_counter() - t_start
    p = write_json(f"{stem}.json", report)
    print(f"total {report['total_s']:.0f}s\nwrote {p}")


if __name__ == "__main__":
    main()
