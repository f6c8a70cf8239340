"""Heavy-ball momentum against divergence under strong classifier-free guidance, on an exact conditional mixture.

Target: a Gaussian mixture whose components are the classes (``K`` classes in ``d`` dimensions, well separated
means, small per-dimension stds), on the DDPM linear-beta table (``VPDiscrete.ddpm()``), float64. The conditional
denoiser of class ``c`` is the exact denoiser of component ``c`` alone (a Gaussian); the unconditional one is the
exact denoiser of the whole mixture. Guidance is :func:`pfode.cfg`: ``x0_u + w (x0_c - x0_u)`` at ``w`` = 3, 7, 15,
with class labels drawn from the mixture weights and ``x_T ~ N(0, I)`` at ``t = 1``.

For each scale and NFE (4, 6, 8, 10; the final denoising call counted) every sampler runs on the same noise and
labels (logsnr grid). Reported per cell:

* ``div``: the fraction of diverged samples, ``||x|| > bound`` (or not finite), with
  ``bound = max_c (||mu_c|| + 6 sqrt(tr Sigma_c))`` (a sample farther than six RMS radii beyond the farthest class
  mean); the same fraction of the reference is printed (it should be 0);
* ``rmse``: the mean over the finite samples of the per-sample RMSE to the reference: the same guided ODE solved
  by ``dpm++2m`` at 500 NFE (its own error is estimated against ``unipc`` at 500 NFE and printed).

Samplers: ``dpm++2m``, ``unipc``, ``ipndm`` and their heavy-ball variants (``-hb``, ``beta`` 0.8, the default, and
``--betas`` more), and GHVB (order 4 with beta 0.8 = the paper's "GHVB 3.8", and order 2 with beta 0.8 = "GHVB 1.8").
Run: ``python benchmarks/momentum_guidance.py [--samples N] [--betas 0.8,0.5] [--spacing uniform --tag _uniform]``
(about 40 s of one CPU thread at the defaults); writes ``benchmarks/results/momentum_guidance{tag}.{json,png}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import Gaussian, GaussianMixture  # noqa: E402
from pfode.paths import VPDiscrete  # noqa: E402
from pfode.solvers import GHVB, heavy_ball  # noqa: E402

SCALES = (3.0, 7.0, 15.0)
NFES = (4, 6, 8, 10)
REF_NFE = 500


def make_target(d: int, k: int, seed: int) -> GaussianMixture:
    """``k`` classes: means on a sphere of radius 2 (well separated), per-dimension stds in [0.05, 0.2]."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = 2.0 * means / means.norm(dim=1, keepdim=True)
    std = 0.05 + 0.15 * torch.rand(k, d, generator=g, dtype=torch.float64)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    return GaussianMixture(w, means, std**2)


def conditional_denoiser(mix: GaussianMixture, path) -> pfode.Denoiser:
    """x0-prediction network ``net(x, t, y)``: the exact denoiser of class ``y`` (component ``y`` alone) for
    ``y >= 0`` and of the whole mixture for ``y < 0`` (the unconditional call of :func:`pfode.cfg`)."""
    comps = [Gaussian(mix.means[c], torch.diag(mix.variances[c])) for c in range(mix.k)]

    def net(x, t, y):
        out = mix.x0_eps(x, t, path)[0]
        for c, comp in enumerate(comps):
            sel = y == c
            if bool(sel.any()):
                out[sel] = comp.x0_eps(x[sel], t[sel], path)[0]
        return out

    return pfode.Denoiser(net, path, prediction="x0", time_input="t")


def solvers(betas) -> dict:
    out = {}
    for base in ("dpm++2m", "unipc", "ipndm"):
        out[base] = pfode.solvers.get(base)
        for b in betas:
            out[f"{base}-hb{b:g}"] = heavy_ball(base, b)
    out["ghvb3.8"] = GHVB.from_number(3.8)
    out["ghvb1.8"] = GHVB.from_number(1.8)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--betas", default="0.8,0.5", help="comma-separated heavy-ball betas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", default="logsnr", help="grid spacing of the few-step runs (pfode.grid)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    args = ap.parse_args()
    setup(1)
    t0 = time.perf_counter()
    betas = [float(b) for b in args.betas.split(",")]

    path = VPDiscrete.ddpm()
    mix = make_target(args.d, args.classes, args.seed)
    den = conditional_denoiser(mix, path)
    bound = float(max(mix.means[c].norm() + 6 * mix.variances[c].sum().sqrt() for c in range(mix.k)))
    g = torch.Generator().manual_seed(args.seed + 1)
    x_T = torch.randn(args.samples, args.d, generator=g, dtype=torch.float64) * float(path.sigma(path.t_max))
    y = torch.multinomial(mix.weights, args.samples, replacement=True, generator=g)
    cond, uncond = {"y": y}, {"y": torch.full_like(y, -1)}
    sv = solvers(betas)

    rows, results, refs = [], {}, {}
    for w in SCALES:
        guided = pfode.cfg(den, w, uncond)
        ref = pfode.sample(guided, x_T, nfe=REF_NFE, solver="dpm++2m", cond=cond)
        check = pfode.sample(guided, x_T, nfe=REF_NFE, solver="unipc", cond=cond)
        ref_err = float((check - ref).pow(2).mean(1).sqrt().mean())
        ref_div = float((ref.norm(dim=1) > bound).double().mean())
        refs[w] = {"rmse_unipc500_vs_ref": ref_err, "div": ref_div, "max_norm": float(ref.norm(dim=1).max())}
        print(
            f"w={w:g}: reference dpm++2m@{REF_NFE} vs unipc@{REF_NFE} rmse {ref_err:.2e}, ref div {ref_div:.3f}, "
            f"max |x| {refs[w]['max_norm']:.2f} (bound {bound:.2f})",
            flush=True,
        )
        for name, s in sv.items():
            for nfe in NFES:
                x = pfode.sample(guided, x_T, nfe=nfe, solver=s, cond=cond, spacing=args.spacing, check_finite=False)
                fin = torch.isfinite(x).all(dim=1)
                div = float(((x.norm(dim=1) > bound) | ~fin).double().mean())
                err = (x - ref).pow(2).mean(1).sqrt()[fin]
                rmse = float(err.mean()) if len(err) else math.nan
                results.setdefault(str(w), {}).setdefault(name, {})[nfe] = {"div": div, "rmse": rmse}
    for w in SCALES:
        for name in sv:
            r = results[str(w)][name]
            rows.append([w, name] + [f"{r[n]['div']:.3f} / {r[n]['rmse']:.3g}" for n in NFES])
    print(f"\ndiverged fraction / RMSE to the reference (bound {bound:.2f}); columns: NFE")
    print(table(rows, ["w", "solver"] + [f"NFE {n}" for n in NFES]))
    verdict = summary(results, sv)
    seconds = time.perf_counter() - t0
    print(f"\n{seconds:.0f} s")
    payload = {
        "target": {
            "d": args.d,
            "classes": args.classes,
            "seed": args.seed,
            "path": "VPDiscrete.ddpm()",
            "std_range": [0.05, 0.2],
            "mean_radius": 2.0,
        },
        "samples": args.samples,
        "bound": bound,
        "scales": SCALES,
        "nfes": NFES,
        "reference": f"dpm++2m@{REF_NFE}",
        "spacing": args.spacing,
        "reference_checks": {str(k): v for k, v in refs.items()},
        "results": results,
        "verdict": verdict,
        "seconds": seconds,
    }
    p = write_json(f"momentum_guidance{args.tag}.json", payload)
    print(f"wrote {p}")
    plot(results, list(sv), RESULTS / f"momentum_guidance{args.tag}.png")


def summary(results, sv) -> list[str]:
    """Where a plain multistep solver diverges (more than 1% of samples), what its momentum variants give there."""
    lines = []
    for base in ("dpm++2m", "unipc", "ipndm"):
        variants = [n for n in sv if n.startswith(base + "-hb")] + (["ghvb3.8", "ghvb1.8"] if base == "ipndm" else [])
        for w in SCALES:
            r = results[str(w)]
            bad = [n for n in NFES if r[base][n]["div"] > 0.01]
            if not bad:
                continue
            fracs = {v: ", ".join(f"{r[v][n]['div']:.3f}" for n in bad) for v in [base, *variants]}
            parts = "; ".join(f"{v} {fracs[v]}" for v in variants)
            lines.append(f"w={w:g} {base} diverges at NFE {bad} ({fracs[base]}); {parts}")
    print("\nwhere the plain solver diverges (>1% of samples), the diverged fractions of its momentum variants:")
    print("\n".join(lines) if lines else "no plain solver diverged")
    return lines


def plot(results, names, out: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no PNG")
        return
    fig, axes = plt.subplots(2, len(SCALES), figsize=(5 * len(SCALES), 8), squeeze=False)
    for j, w in enumerate(SCALES):
        for idx, name in enumerate(names):
            r = results[str(w)][name]
            kw = {
                "ls": "-" if ("hb" in name or "ghvb" in name) else "--",
                "marker": "o",
                "color": plt.cm.tab20(idx % 20),
                "label": name,
            }
            axes[0][j].plot(NFES, [r[n]["div"] for n in NFES], **kw)
            axes[1][j].semilogy(NFES, [r[n]["rmse"] for n in NFES], **kw)
        axes[0][j].set_title(f"guidance w = {w:g}")
        axes[0][j].set_ylabel("diverged fraction")
        axes[1][j].set_ylabel("RMSE to reference")
        axes[1][j].set_xlabel("NFE")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
