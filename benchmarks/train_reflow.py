"""Rectified flow and reflow on 2-D toys; minibatch-OT coupling vs independent.

For each of ``checkerboard`` and ``moons``:

1. train the 1-rectified flow (flow matching on the Linear path, independent coupling);
2. W2 (exact, POT ``emd2``, 2,000 samples against 2,000 fresh data points) at 1, 2, 4, 8, 100 NFE
   (Euler in path time on a uniform grid from t = 1 to 0), and the straightness of Liu et al. on the
   100-step trajectories;
3. reflow: solve the 1-rectified flow's ODE (100-step Euler, the reference above) from 40,000 noise draws
   with :func:`pfode.train.generate_reflow_pairs` (safetensors shards + JSON index), then train the
   2-rectified flow on those pairs, initialised from the 1-rectified flow, with the U-shaped time
   distribution and pseudo-Huber metric of Lee et al. (2024); the same evaluation;
4. OT-CFM: the 1-rectified flow's recipe with the exact minibatch OT coupling (Tong et al.), OT solved
   exactly (Hungarian algorithm) on minibatches of 256; straightness and W2 at 4 NFE against the
   independent coupling;
5. trajectories before/after reflow as PNG.

Checks: the 2-rectified flow at 1 NFE within 1.5x the teacher's 100-NFE W2, straightness down >= 5x.

Run: ``.venv/bin/python benchmarks/train_reflow.py`` (about 5 minutes on 2 CPU cores; ``--quick`` for a
smoke run). Writes ``benchmarks/results/train_reflow.json`` and ``train_reflow_<data>.png``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode import metrics  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.nets import MLP  # noqa: E402
from pfode.plots import save_trajectories  # noqa: E402
from pfode.solvers import get as get_solver  # noqa: E402
from pfode.train import FlowMatching, MinibatchOT, Paired, Trainer, generate_reflow_pairs  # noqa: E402

NFES = (1, 2, 4, 8, 100)
N_EVAL = 2000
OT_BLOCK = 256  # exact OT on minibatches of 256 (two per optimiser batch of 512): half the Hungarian cost


def euler_grid(n):
    return torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)


def run_ode(den, z, nfe, trajectory=False):
    out = pfode.sample(
        den, z, euler_grid(nfe), get_solver("euler", variable="t"), return_trajectory=trajectory
    )
    return out


def evaluate(obj, model, z, ref) -> dict:
    den = obj.denoiser(model)
    res = {}
    with torch.no_grad():
        for nfe in NFES:
            out = run_ode(den, z, nfe, trajectory=nfe == 100)
            x = out.x if nfe == 100 else out
            res[f"w2_nfe{nfe}"] = metrics.w2_samples(x, ref)
            if nfe == 100:
                traj = torch.stack(out.trajectory)
                res["straightness"] = metrics.straightness(traj, torch.tensor(out.times))
                res["_traj"] = traj
    return res


def train(obj, data, steps, lr, init=None, seed=0, width=128):
    torch.manual_seed(seed)
    net = MLP((2,), width=width, depth=3, time_dim=64)
    if init is not None:
        net.load_state_dict(init.state_dict())
    cfg = dict(
        iterations=steps,
        batch_size=512,
        lr=lr,
        warmup_steps=200,
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    ap.add_argument("--datasets", nargs="+", default=["checkerboard", "moons"])
    args = ap.parse_args(argv)
    setup()
    t_start = time.perf_counter()
    steps1, steps2, n_pairs = (300, 200, 4000) if args.quick else (3000, 2500, 30_000)
    report = {
        "settings": {
            "steps_1rf": steps1,
            "steps_2rf": steps2,
            "pairs": n_pairs,
            "n_eval": N_EVAL,
            "nfe": list(NFES),
            "sampler": "Euler in t, uniform grid 1 -> 0",
            "ot_block": OT_BLOCK,
        },
        "datasets": {},
    }
    for name in args.datasets:
        data = toy2d(name, 50_000, seed=0)
        ref = toy2d(name, N_EVAL, seed=1001)
        z = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(2024))
        floor = metrics.w2_samples(toy2d(name, N_EVAL, seed=1002), ref)

        fm = FlowMatching(time_sampler="uniform")
        rf1, t1 = train(fm, data, steps1, 2e-3)
        e1 = evaluate(fm, rf1.ema, z, ref)

        tmp = Path(tempfile.mkdtemp(prefix=f"pairs-{name}-"))
        with Timer() as tg:
            store = generate_reflow_pairs(
                fm.denoiser(rf1.ema),
                n_pairs,
                tmp,
                (2,),
                batch_size=5000,
                grid=euler_grid(100),
                solver=get_solver("euler", variable="t"),
                seed=7,
                progress=False,
            )
        reflow = FlowMatching(coupling=Paired(store), time_sampler="u-shaped", metric="pseudo-huber")
        rf2, t2 = train(reflow, None, steps2, 1e-3, init=rf1.ema.to("cpu"), seed=1)
        e2 = evaluate(reflow, rf2.ema, z, ref)
        shutil.rmtree(tmp, ignore_errors=True)

        ot = FlowMatching(time_sampler="uniform", coupling=MinibatchOT(block=OT_BLOCK))
        otm, t3 = train(ot, data, steps1, 2e-3)
        e3 = evaluate(ot, otm.ema, z, ref)

        png = RESULTS / f"train_reflow_{name}.png"
        with torch.no_grad():
            one = torch.stack(run_ode(fm.denoiser(rf2.ema), z[:300], 1, trajectory=True).trajectory)
        save_trajectories(
            [
                (f"1-rectified flow (100 steps), S={e1['straightness']:.3f}", e1["_traj"][:, :300]),
                (f"2-rectified flow (100 steps), S={e2['straightness']:.4f}", e2["_traj"][:, :300]),
                ("2-rectified flow, 1 Euler step", one),
                (f"OT-CFM (100 steps), S={e3['straightness']:.3f}", e3["_traj"][:, :300]),
            ],
            png,
            n_lines=300,
        )
        for e in (e1, e2, e3):
            e.pop("_traj")
        ratio = e2["w2_nfe1"] / e1["w2_nfe100"]
        drop = e1["straightness"] / e2["straightness"]
        report["datasets"][name] = {
            "w2_data_vs_data": floor,
            "1-rectified": {**e1, "train_s": t1},
            "2-rectified": {**e2, "train_s": t2, "pair_generation_s": tg.s},
            "ot-cfm": {**e3, "train_s": t3},
            "checks": {
                "w2_2rf_nfe1_over_teacher_nfe100": ratio,
                "pass_w2_within_1.5x": ratio <= 1.5,
                "straightness_drop": drop,
                "pass_straightness_drop_5x": drop >= 5.0,
            },
            "plot": png.name,
        }
        rows = [
            [m]
            + [report["datasets"][name][m][f"w2_nfe{k}"] for k in NFES]
            + [report["datasets"][name][m]["straightness"]]
            for m in ("1-rectified", "2-rectified", "ot-cfm")
        ]
        print(f"\n## {name}  (W2 of data vs data, {N_EVAL} samples each: {floor:.4f})")
        print(table(rows, ["model"] + [f"W2@{k}" for k in NFES] + ["straightness"]))
        print(
            f"2-RF W2@1 / 1-RF W2@100 = {ratio:.3f} (<= 1.5: {ratio <= 1.5}); straightness drop {drop:.1f}x "
            f"(>= 5: {drop >= 5}); OT-CFM vs independent at 4 NFE: W2 {e3['w2_nfe4']:.4f} vs {e1['w2_nfe4']:.4f}, "
            f"straightness {e3['straightness']:.4f} vs {e1['straightness']:.4f}"
        )
        print(f"train times: 1-RF {t1:.0f}s, pairs {tg.s:.0f}s, 2-RF {t2:.0f}s, OT-CFM {t3:.0f}s")
    report["total_s"] = time.perf_counter() - t_start
    p = write_json("train_reflow.json", report)
    print(f"total {report['total_s']:.0f}s")
    print(f"\nwrote {p}")


if __name__ == "__main__":
    main()
