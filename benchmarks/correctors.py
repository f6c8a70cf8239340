"""Correctors and Denoising MCMC on an imperfect and on the exact model of a Gaussian mixture: sample error vs NFE.

Target: ``GaussianMixture.random(8, 6, std_range=(0.1, 0.6), spread=3)`` (seed 0) on ``VP()``. The ``biased`` model
is the exact denoiser with a smooth known bias, ``x0_hat + c sigma^2 / (1 + sigma^2) tanh(x)`` (``c = 2``; ``sigma``
of the path at the evaluation time): wrong most at high noise, exact at zero noise. The ``exact`` model is the
unbiased denoiser. Every sampler starts from the same ``x_T ~ N(0, I)`` at ``t = 1`` and ends with the final
denoising step; NFE counts every model call.

Error: sliced W2 (``pfode.metrics.sliced_w2``, 256 projections) between ``N = 2000`` samples and ``N`` exact samples
of the target, and the RBF MMD of the first 1000 of each (exact W2 between empirical sets is no use here: in d = 8
with N = 1000 its Monte-Carlo floor, 1.43, exceeds every sampler's error); ``floor`` is the error of an independent
exact sample set.

Rows, per model, on logsnr grids of 3, 5, 8, 12 steps: predictors ``ddim`` (single-step) and ``dpm++2m`` (multistep)
alone; with one Langevin move per step (``+langevin``: Song et al.'s defaults, snr 0.16 and the VP step factor
``(alpha_prev/alpha)^2``); with three moves per step at snr 0.3 without the factor (``+langevin x3``); with three LML
moves likewise (``+lml x3``: damping 1, kappa 0.5; for ddim also the paper's damping scale 1e-3). DMCMC (Kim & Ye):
one Langevin move per sweep (snr 0.3) on 8 levels (logsnr-spaced, t in [0.25, 0.7]), the exact noise classifier of
the target (the paper trains one), N/8 chains, 40 burn-in sweeps, 8 samples per chain 3 sweeps apart, and dpm++2m
from each sample's level with 3/5/8 evaluations; its NFE is per sample (the chain's evaluations shared among the
samples it yields, plus the ODE's).

Run: ``python benchmarks/correctors.py [--n N]``; writes ``benchmarks/results/correctors.{json,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.metrics import mmd_rbf, sliced_w2  # noqa: E402
from pfode.paths import VP  # noqa: E402
from pfode.solvers import Corrected, DenoisingMCMC, density_noise_classifier  # noqa: E402

C_BIAS = 2.0
STEPS = (3, 5, 8, 12)  # grid steps; NFE = the solver's evaluations on that grid plus the final denoising step
PREDICTORS = ("ddim", "dpm++2m")
STRONG = {"steps": 3, "snr": 0.3, "alpha_scaling": False}  # three moves per step, snr 0.3, no VP step factor


def biased(target, path, c: float) -> pfode.Denoiser:
    def net(x, t):
        s2 = path.sigma(t).to(x.dtype)[:, None] ** 2
        return target.x0_eps(x, t, path)[0] + c * s2 / (1.0 + s2) * torch.tanh(x)

    return pfode.Denoiser(net, path, prediction="x0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="samples per run (and exact samples)")
    args = ap.parse_args()
    setup(1)
    path = VP()
    target = GaussianMixture.random(8, 6, std_range=(0.1, 0.6), spread=3.0, generator=torch.Generator().manual_seed(0))
    den, exact_den = biased(target, path, C_BIAS), target.denoiser(path)
    n = args.n
    ref = target.sample(n, generator=torch.Generator().manual_seed(1))

    def errors(x):
        return sliced_w2(x, ref, 256, generator=torch.Generator().manual_seed(9)), mmd_rbf(x[:1000], ref[:1000])

    floor = errors(target.sample(n, generator=torch.Generator().manual_seed(2)))
    x_T = torch.randn(n, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    rows, curves = [], {}

    def record(model, label, nfe, x, seconds):
        sw2, mmd = errors(x)
        curves.setdefault(model, {}).setdefault(label, []).append((nfe, sw2))
        rows.append([model, label, nfe, sw2, mmd, seconds])
        print(f"{model:<7} {label:<26} NFE {nfe:>5.1f}  sliced W2 {sw2:.4f}  MMD {mmd:.5f}  ({seconds:.2f} s)",
              flush=True)

    levels = pfode.grid(path, 7, t_start=0.7, t_end=0.25)
    clf = density_noise_classifier(lambda x, t: target.log_prob(x, t, path), levels)
    x0 = torch.randn(n // 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with Timer() as total:
        for model, dn in (("biased", den), ("exact", exact_den)):
            for pred in PREDICTORS:
                configs = [
                    (pred, pfode.solvers.get(pred)),
                    ("+langevin", Corrected(pred, "langevin")),
                    ("+langevin x3", Corrected(pred, "langevin", **STRONG)),
                    ("+lml x3", Corrected(pred, "lml", **STRONG)),
                ]
                if pred == "ddim":  # the paper's damping scale (1e-4..1e-3 on images): nearly undamped
                    configs.append(("+lml x3 (damping 1e-3)", Corrected(pred, "lml", damping=1e-3, **STRONG)))
                for label, solver in configs:
                    label = label if label == pred else pred + label
                    for steps in STEPS:
                        nfe = solver.evals(steps, True)
                        with Timer() as tm:
                            x = pfode.sample(dn, x_T, nfe=nfe, solver=solver,
                                             generator=torch.Generator().manual_seed(4))
                        record(model, label, nfe, x, tm.s)
            for ode in (3, 5, 8):
                mcmc = DenoisingMCMC(levels, clf, solver="dpm++2m", nfe=ode, snr=0.3, burn_in=40, thin=3)
                with Timer() as tm:
                    out = mcmc(dn, x0, samples=8, generator=torch.Generator().manual_seed(6))
                record(model, "dmcmc (dpm++2m)", out.nfe_per_sample, out.x, tm.s)
    print(f"\nMonte-Carlo floor (two exact sets of {n}): sliced W2 {floor[0]:.4f}, MMD {floor[1]:.5f}; "
          f"total {total.s:.1f} s\n")
    print(table(rows, ["model", "sampler", "NFE", "sliced W2", "MMD", "seconds"]))

    payload = {
        "setup": {"target": "GaussianMixture.random(8, 6, std_range=(0.1, 0.6), spread=3), seed 0", "path": "VP()",
                  "bias": f"x0_hat + {C_BIAS} sigma^2/(1+sigma^2) tanh(x)", "n": n,
                  "floor": {"sliced_w2": floor[0], "mmd": floor[1]},
                  "metric": "sliced W2 (256 projections), RBF MMD (first 1000 of each)"},
        "rows": [dict(zip(("model", "sampler", "nfe", "sliced_w2", "mmd", "seconds"), r)) for r in rows],
        "seconds": total.s,
    }
    print(f"wrote {write_json('correctors.json', payload)}")
    plot(curves, floor[0], RESULTS / "correctors.png")


def plot(curves, floor, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    styles = {"": "-", "+langevin": "--", "+langevin x3": "-.", "+lml x3": ":", "+lml x3 (damping 1e-3)": (0, (1, 4))}
    colors = dict(zip(PREDICTORS, ("C0", "C1")))
    for ax, (model, lines) in zip(axes, curves.items()):
        for label, pts in lines.items():
            pts = sorted(pts)
            base = next((p for p in PREDICTORS if label.startswith(p)), "")
            kw = {"color": colors.get(base, "C2"), "linestyle": styles.get(label[len(base):], "-"), "marker": "o",
                  "ms": 3}
            if label.startswith("dmcmc"):
                kw.update(marker="s", lw=2, linestyle="-")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **kw)
        ax.axhline(floor, color="k", lw=0.8, ls=":", label="Monte-Carlo floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (per sample)")
        ax.set_title(f"{model} model" + (f" (x0_hat + {C_BIAS} s^2/(1+s^2) tanh x)" if model == "biased" else ""),
                     fontsize=9)
    axes[0].set_ylabel("sliced W2 to exact target samples")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("GMM d=8 on VP: correctors and Denoising MCMC", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
