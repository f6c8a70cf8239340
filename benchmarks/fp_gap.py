"""The score Fokker-Planck residual and the ODE-vs-SDE sample gap, with and without the FP regularizer
(issue 17, item 6).

Residual (``pfode.metrics.fp_residual``, Lai et al., ICML 2023; Deveney et al., 2023): the scaled norm
``|sigma R / (-dlam/dt)| / sqrt(d)`` (eps units per unit log-SNR, per element) at points ``x_t`` of the forward
process from data, at times spread over the path (10 log-SNR-spaced times between ``t_min`` and ``t_max``);
median and 90th percentile over points. Models: the exact score of a 2-D Gaussian mixture (should be ~0),
the shipped ``builtin:moons`` (exact divergence) and ``builtin:digits`` (Hutchinson, 1 probe), and the trained
toy models below.

Gap. On 2-D toys (moons, 8gaussians, checkerboard) a residual MLP (width 128, depth 3) trains with eps-prediction
DSM on the VP path (objective ``dsm-fp``) at ``fp_weight`` 0 (plain DSM) and > 0, same seed and steps. From the
same ``n`` starting noises each model is sampled by the PF-ODE (``dpm++2m``, 100 NFE, log-SNR grid) and by the
reverse SDE (``euler-maruyama``, eta = 1, 500 steps; ``--sde-steps``); "ODE-SDE W2" is the exact W2 between the
two sample sets (``pfode.metrics.w2_samples``, POT). "floor" is the W2 between two ODE sample sets from
independent noises (the finite-sample level below which a gap cannot be seen); "W2 ODE / SDE to data" compare
each with fresh data.

Run: ``python benchmarks/fp_gap.py`` (``--quick``: shorter training, fewer samples). Writes
``benchmarks/results/fp_gap.json`` and ``fp_gap.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from idode import train  # noqa: E402
from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

from pfode import paths as P  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.fokker_planck import score_function  # noqa: E402
from pfode.metrics import fp_residual, w2_samples  # noqa: E402
from pfode.nets import build  # noqa: E402
from pfode.predictions import Denoiser  # noqa: E402
from pfode.sample import sample  # noqa: E402
from pfode.train.losses import get_objective  # noqa: E402


def residual_stats(model, path, x0: torch.Tensor, n_times: int = 10, seed: int = 0, **options) -> dict:
    """Median / 90th percentile of the scaled residual per element at forward-process points of ``x0``."""
    _, path = score_function(model, path)
    g = torch.Generator().manual_seed(seed)
    lam = torch.linspace(float(path.lam(path.t_max)), float(path.lam(path.t_min)), n_times, dtype=torch.float64)
    ts = path.t_of_lam(lam)
    d = x0[0].numel()
    vals = []
    for t in ts.tolist():
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x = float(path.alpha(t)) * x0 + float(path.sigma(t)) * eps
        tt = torch.full((x0.shape[0],), t, dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed + 1)
        vals.append(fp_residual(model, path, x, tt, scaled=True, generator=gen, **options) / math.sqrt(d))
    v = torch.cat(vals)
    return {"median": float(v.median()), "p90": float(v.quantile(0.9)), "points": v.numel()}


def shipped_residuals(quick: bool) -> list[dict]:
    from pfode.data import digits
    from pfode.models import load

    rows = []
    gm = GaussianMixture.random(2, 4, std_range=(0.1, 0.8), generator=torch.Generator().manual_seed(0))
    vp = P.VP()
    x0 = gm.sample(200, torch.Generator().manual_seed(1))
    rows.append({"model": "exact GMM score (VP)", **residual_stats(lambda x, t: gm.score(x, t, vp), vp, x0, seed=2)})
    rows.append(
        {
            "model": "GMM score x 1.05 (VP)",
            **residual_stats(lambda x, t: 1.05 * gm.score(x, t, vp), vp, x0, seed=2),
        }
    )
    m = load("builtin:moons")
    xm = toy2d("moons", 200 if quick else 500, seed=11)
    rows.append({"model": "builtin:moons (exact div)", **residual_stats(m.denoiser, None, xm, seed=3)})
    xd = digits()[: 16 if quick else 64]
    den_d = load("builtin:digits").denoiser
    rows.append(
        {
            "model": "builtin:digits (Hutchinson)",
            **residual_stats(den_d, None, xd, seed=4, divergence_mode="hutchinson"),
        }
    )
    return rows


def gap_for(kind: str, fp_weights, iters: int, n: int, sde_steps: int = 500) -> list[dict]:
    path = P.VP()
    data_g = torch.Generator().manual_seed(100)
    pool = toy2d(kind, 50_000, generator=data_g)

    def draw(g):
        return pool[torch.randint(0, pool.shape[0], (256,), generator=g)]

    ref = toy2d(kind, n, seed=12345)
    out = []
    for w in fp_weights:
        obj = get_objective("dsm-fp", path=path, prediction="eps", fp_weight=w)
        torch.manual_seed(0)
        net = build("mlp", data_shape=[2], width=128, depth=3, time_dim=64)
        with Timer() as tt:
            ema = train(net, obj, draw, iters, 2e-3, seed=1)
        den = Denoiser(ema, path, "eps")
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(7))
        z2 = torch.randn(n, 2, generator=torch.Generator().manual_seed(8))
        x_T, x_T2 = float(path.sigma(path.t_max)) * z, float(path.sigma(path.t_max)) * z2
        with torch.no_grad(), Timer() as ts:
            ode = sample(den, x_T, solver="dpm++2m", nfe=100)
            ode2 = sample(den, x_T2, solver="dpm++2m", nfe=100)
            sde = sample(den, x_T, solver="euler-maruyama", nfe=sde_steps, generator=torch.Generator().manual_seed(9))
        res = residual_stats(den, None, ref[:300], seed=5)
        r = {
            "toy": kind,
            "fp_weight": w,
            "sde_steps": sde_steps,
            "ode_sde_w2": w2_samples(ode, sde),
            "floor_w2": w2_samples(ode, ode2),
            "ode_data_w2": w2_samples(ode, ref),
            "sde_data_w2": w2_samples(sde, ref),
            "residual_median": res["median"],
            "residual_p90": res["p90"],
            "train_s": tt.s,
            "sample_s": ts.s,
        }
        print(
            f"  {kind} fp_weight={w}: ODE-SDE W2 {r['ode_sde_w2']:.4f} (floor {r['floor_w2']:.4f}), residual "
            f"{r['residual_median']:.3g}, train {tt.s:.0f}s",
            flush=True,
        )
        out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--toys", default="moons,8gaussians,checkerboard")
    ap.add_argument("--fp-weights", default="0,0.01,0.1")
    ap.add_argument("--iterations", type=int, default=None, help="training steps (default 3000, quick 400)")
    ap.add_argument("--samples", type=int, default=None, help="samples per set (default 2000, quick 1000)")
    ap.add_argument("--sde-steps", type=int, default=500, help="Euler-Maruyama steps of the reverse SDE")
    ap.add_argument("--skip-shipped", action="store_true", help="skip the residuals of the exact and shipped models")
    ap.add_argument("--name", default=None, help="results file stem (default fp_gap or fp_gap_quick)")
    args = ap.parse_args()
    setup(1)
    iters, n = (400, 1000) if args.quick else (3000, 2000)
    iters, n = args.iterations or iters, args.samples or n
    print("== residual of exact and shipped models ==", flush=True)
    shipped = [] if args.skip_shipped else shipped_residuals(args.quick)
    print(table([[r["model"], r["median"], r["p90"], r["points"]] for r in shipped], ["model", "median", "p90", "n"]))
    print("== ODE-vs-SDE gap with and without the FP regularizer ==", flush=True)
    weights = [float(w) for w in args.fp_weights.split(",")]
    gaps = []
    for kind in args.toys.split(","):
        gaps += gap_for(kind, weights, iters, n, args.sde_steps)
    print(
        table(
            [
                [
                    r["toy"],
                    r["fp_weight"],
                    r["ode_sde_w2"],
                    r["floor_w2"],
                    r["ode_data_w2"],
                    r["sde_data_w2"],
                    r["residual_median"],
                    r["train_s"],
                ]
                for r in gaps
            ],
            ["toy", "fp_weight", "ODE-SDE W2", "floor", "W2 ODE-data", "W2 SDE-data", "residual med", "train s"],
        )
    )
    name = args.name or ("fp_gap_quick" if args.quick else "fp_gap")
    p = write_json(
        f"{name}.json", {"quick": args.quick, "iterations": iters, "samples": n, "shipped": shipped, "gap": gaps}
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        toys = list(dict.fromkeys(r["toy"] for r in gaps))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for kind in toys:
            rs = [r for r in gaps if r["toy"] == kind]
            ws = [max(r["fp_weight"], 1e-3) for r in rs]
            axes[0].plot(ws, [r["ode_sde_w2"] for r in rs], "o-", label=f"{kind} ODE-SDE")
            axes[0].plot(ws, [r["floor_w2"] for r in rs], "x:", label=f"{kind} floor")
            axes[1].plot(ws, [r["residual_median"] for r in rs], "o-", label=kind)
        for ax, title in zip(axes, ("W2 between ODE and SDE samples", "median scaled FP residual")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("fp_weight (0 drawn at 1e-3)")
            ax.set_title(title)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
