"""Posterior sampling of every registered pfode.inverse method against the exact Gaussian-mixture posterior.

Targets (exact priors, exact denoisers ``target.x0_eps`` wrapped as a velocity network on the rectified-flow path
``Linear()``, so that velocity-only methods run too):

* ``gmm64``: ``GaussianMixture.random(64, 8, std_range=(0.05, 1))``, the family of ``benchmarks/solvers_gmm.py``;
* ``img256``: an image-like mixture on 16x16: 8 smooth means (Gaussian-blurred noise, unit std), per-pixel stds
  log-uniform in (0.05, 0.5).

Problems: inpainting 50% (random mask), 4x downsampling (4 consecutive entries / 4x4 blocks), random projection
(``m = d / 4``), each at noise 0.05 and 0.2; one measurement ``y = A x* + noise`` of a prior draw ``x*``.

Per method and NFE: ``N`` samples for the one ``y``, compared with ``N`` exact posterior samples
(``pfode.inverse.posterior``): exact W2 (EMD, POT) and sliced W2 (512 directions), each with its Monte Carlo floor (the
same distance between two independent sets of ``N`` exact samples); the posterior-mean error (RMS per coordinate) and
its floor (the error of an exact sample mean); ``in90``, the fraction of samples inside the exact 90% central credible
interval of each coordinate, averaged over coordinates (0.90 if exact); wall time. In d = 64..256 with a few hundred
samples the exact W2 is dominated by its floor (an under-dispersed method can score below it); the sliced W2 and the
mean error separate the methods. Methods: every name in ``pfode.inverse.available()`` (methods registered later appear
by themselves); a method that refuses a problem is recorded as skipped, one slower than 5 s a call skips its larger
NFEs. DPS's ``zeta'`` is dimension-dependent (the paper's 1.0 is for 256x256x3 images): the better of {0.3, 1} by
distance to the exact posterior is kept per cell -- an oracle-tuned, optimistic DPS.

Run: ``python benchmarks/inverse_gmm.py [--quick]`` (full: gmm64 at NFE 10/20/50/100 and img256 at NFE 10/50, N = 160,
about 10 minutes on 2 busy cores; quick: gmm64 at NFE 10/50, N = 128, 2 minutes); writes
``benchmarks/results/inverse_gmm[_quick].{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import pfode  # noqa: F401
from pfode.analytic import GaussianMixture
from pfode.inverse import METHODS, Blur, Downsample, Inpaint, RandomProjection, available, posterior, solve
from pfode.metrics import sliced_w2, w2_samples
from pfode.paths import Linear
from pfode.predictions import Coeffs, Denoiser, from_x0_eps

RESULTS = Path(__file__).resolve().parent / "results"
DPS_ZETAS = (0.3, 1.0)
PROJECTIONS = 512
NOISES = (0.05, 0.2)


def velocity_denoiser(target, path):
    """The exact denoiser of ``target`` as a velocity-prediction network on ``path``."""

    def net(x, t):
        x0, eps = target.x0_eps(x, t, path)
        return from_x0_eps("velocity", x0, eps, Coeffs.at(path, t, like=x))

    return Denoiser(net, path, "velocity")


def targets(gen):
    gmm64 = GaussianMixture.random(64, 8, std_range=(0.05, 1.0), generator=gen)
    k, shape = 8, (1, 16, 16)
    field = torch.randn(k, *shape, dtype=torch.float64, generator=gen)
    smooth = Blur(shape, std=2.0)(field).reshape(k, -1)
    means = smooth / smooth.std(dim=1, keepdim=True)
    u = torch.rand(k, 256, dtype=torch.float64, generator=gen)
    std = torch.exp(math.log(0.05) + u * (math.log(0.5) - math.log(0.05)))
    w = torch.rand(k, dtype=torch.float64, generator=gen) + 0.5
    img = GaussianMixture(w / w.sum(), means, std**2)
    return {"gmm64": (gmm64, (64,)), "img256": (img, shape)}


def problems(shape, noise, gen):
    d = math.prod(shape)
    return {
        "inpaint50": Inpaint.random(shape, 0.5, noise=noise, generator=gen),
        "down4": Downsample(shape, 4, noise=noise),
        "proj": RandomProjection(shape, d // 4, noise=noise, seed=int(torch.randint(0, 2**31, (1,), generator=gen))),
    }


def coverage(xs, lo, hi):
    f = xs.reshape(xs.shape[0], -1)
    return float(((f > lo.reshape(-1)) & (f < hi.reshape(-1))).double().mean())


def run_cell(target, shape, op, den, n, nfes, gen, budget_s):
    """All methods and NFEs on one (target, operator) pair; returns rows and the floors."""
    x_star = target.sample(1, generator=gen).reshape(1, *shape)
    y = op.measure(x_star, generator=gen)[0]
    post = posterior(target, op, y)
    ex_a, ex_b = post.sample(n, generator=gen), post.sample(n, generator=gen)
    d = math.prod(shape)
    floor = w2_samples(ex_a, ex_b)
    sfloor = sliced_w2(ex_a, ex_b, PROJECTIONS, generator=torch.Generator().manual_seed(7))
    mean_floor = float((ex_a.reshape(n, -1).mean(0) - post.mean().reshape(-1)).norm()) / math.sqrt(d)
    lo, hi = post.credible_interval(0.9)
    rows, skipped = [], {}
    for name in available():
        slow = False
        for nfe in nfes:
            if slow:
                break
            opts = [{"zeta": z} for z in DPS_ZETAS] if name == "dps" else [{}]
            best = None
            for o in opts:
                seed = int(torch.randint(0, 2**31, (1,), generator=gen))
                t0 = time.perf_counter()
                try:
                    g = torch.Generator().manual_seed(seed)
                    out = solve(den, y, op, method=name, nfe=nfe, n=n, generator=g, **o)
                except (ValueError, TypeError, NotImplementedError) as e:
                    skipped[name] = f"{type(e).__name__}: {e}"
                    break
                wall = time.perf_counter() - t0
                xs = out.x.to(torch.float64)
                if not bool(torch.isfinite(xs).all()):
                    row = {"w2": math.inf}
                else:
                    row = {
                        "w2": w2_samples(xs, ex_a),
                        "sw2": sliced_w2(xs, ex_a, PROJECTIONS, generator=torch.Generator().manual_seed(7)),
                        "mean_err": float((xs.reshape(n, -1).mean(0) - post.mean().reshape(-1)).norm()) / math.sqrt(d),
                        "coverage90": coverage(xs, lo, hi),
                    }
                row.update(method=name, nfe=nfe, grad_evals=out.grad_evals, nfe_used=out.nfe, time_s=wall, **o)
                if best is None or row["w2"] + row.get("sw2", 0) < best["w2"] + best.get("sw2", 0):
                    best = row
                if wall > budget_s:
                    slow = True
            if name in skipped:
                break
            if best is not None:
                best["w2_over_floor"] = best["w2"] / floor
                best["sw2_over_floor"] = best.get("sw2", math.inf) / sfloor
                rows.append(best)
    return rows, {"w2_floor": floor, "sw2_floor": sfloor, "mean_err_floor": mean_floor, "m": op.m}, skipped


def fmt(v, spec=".3f"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else "inf"
    return str(v)


def table(rows, header):
    cols = [[fmt(r[i]) for r in rows] for i in range(len(header))]
    widths = [max(len(h), *(len(c) for c in col)) if col else len(h) for h, col in zip(header, cols)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    for r in rows:
        out.append("  ".join(fmt(v).rjust(w) for v, w in zip(r, widths)))
    return "\n".join(out)


def _geo(vals):
    return math.exp(sum(math.log(max(v, 1e-300)) for v in vals) / len(vals))


def plot(fname, cells, methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tnames = list(dict.fromkeys(c["target"] for c in cells))
    keys = (("sw2_over_floor", "sliced W2 / floor"), ("w2_over_floor", "W2 / floor"))
    keys += (("mean_over_floor", "mean err / floor"),)
    fig, axes = plt.subplots(len(tnames), 3, figsize=(14, 4.0 * len(tnames)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, tn in zip(axes, tnames):
        for ax, (key, label) in zip(row, keys):
            for i, m in enumerate(methods):
                by_nfe: dict[int, list[float]] = {}
                for c in cells:
                    if c["target"] != tn:
                        continue
                    for r in c["rows"]:
                        if r["method"] == m and math.isfinite(r.get(key, math.inf)):
                            by_nfe.setdefault(r["nfe"], []).append(r[key])
                if by_nfe:
                    ns = sorted(by_nfe)
                    ax.loglog(ns, [_geo(by_nfe[k]) for k in ns], "-o", ms=3, color=colors[i % len(colors)], label=m)
            ax.axhline(1.0, color="k", ls="--", lw=0.8, label="MC floor")
            ax.axhline(2.0, color="gray", ls=":", lw=0.8, label="2x floor")
            ax.set_title(f"{tn}: {label} (geo-mean, 6 problems)", fontsize=9)
            ax.set_xlabel("NFE")
            ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fname, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="gmm64 only, NFE 10 and 50, 128 samples")
    ap.add_argument("--samples", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        plan = {"gmm64": (10, 50)}
        n = args.samples or 128
    else:
        plan = {"gmm64": (10, 20, 50, 100), "img256": (10, 50)}
        n = args.samples or 160
    budget_s = 5.0  # a method slower than this per call skips its larger NFEs (keeps the run ~10 minutes)
    gen = torch.Generator().manual_seed(0)
    path = Linear()
    t_all = time.perf_counter()
    cells = []
    all_skipped = {}
    for tname, (target, shape) in targets(gen).items():
        if tname not in plan:
            continue
        den = velocity_denoiser(target, path)
        for noise in NOISES:
            for pname, op in problems(shape, noise, gen).items():
                t0 = time.perf_counter()
                rows, floors, skipped = run_cell(target, shape, op, den, n, plan[tname], gen, budget_s)
                for r in rows:
                    r["mean_over_floor"] = r.get("mean_err", math.inf) / max(floors["mean_err_floor"], 1e-300)
                for k, v in skipped.items():
                    all_skipped.setdefault(k, set()).add(v)
                cells.append({"target": tname, "problem": pname, "noise": noise, **floors, "rows": rows})
                print(f"[{tname} {pname} noise={noise}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_all
    methods = available()

    print(f"pfode.inverse on exact GMM posteriors; path Linear (velocity); N={n} samples; NFE {plan}")
    print(f"methods: {', '.join(methods)}")
    for k, v in all_skipped.items():
        print(f"  skipped {k}: {'; '.join(sorted(v))}")
    hdr = ["target", "problem", "noise", "method", "nfe", "grads", "W2", "W2/fl", "SW2", "SW2/fl", "mean_err"]
    hdr += ["mean/fl", "in90", "time_s", "zeta"]
    body = []
    for c in cells:
        for r in c["rows"]:
            body.append(
                [c["target"], c["problem"], c["noise"], r["method"], r["nfe"], r["grad_evals"], r["w2"],
                 r["w2_over_floor"], r.get("sw2"), r["sw2_over_floor"], r.get("mean_err"), r["mean_over_floor"],
                 r.get("coverage90"), r["time_s"], r.get("zeta")]
            )  # fmt: skip
    print(table(body, hdr))

    print("\nFloors (two independent exact-posterior sets of N) and the best method per problem at its best NFE:")
    best_rows, n_pass, n_pass_sw = [], 0, 0
    for c in cells:
        ok = [r for r in c["rows"] if math.isfinite(r["w2"])]
        if not ok:
            continue
        b = min(ok, key=lambda r: r["w2"])
        bs = min(ok, key=lambda r: r["sw2"])
        n_pass += b["w2_over_floor"] <= 2.0
        n_pass_sw += bs["sw2_over_floor"] <= 2.0
        best_rows.append(
            [c["target"], c["problem"], c["noise"], c["w2_floor"], c["sw2_floor"], c["mean_err_floor"],
             f"{b['method']}@{b['nfe']}", b["w2_over_floor"], f"{bs['method']}@{bs['nfe']}", bs["sw2_over_floor"],
             bs["mean_over_floor"], bs["coverage90"]]
        )  # fmt: skip
    print(table(best_rows, ["target", "problem", "noise", "W2 floor", "SW2 floor", "mean floor", "best W2",
                            "W2/fl", "best SW2", "SW2/fl", "mean/fl", "in90"]))  # fmt: skip
    nb = len(best_rows)
    print(f"target (best method within 2x the floor): W2 {n_pass}/{nb}, sliced W2 {n_pass_sw}/{nb}")

    print("\nBias per method at its best NFE (by W2 + SW2), geo-means over problems; in90 = mean fraction of samples")
    print("inside the exact 90% interval per coordinate (0.90 if exact; lower: shifted or over-dispersed; higher:")
    print("under-dispersed):")
    bias_rows = []
    for m in methods:
        picks = []
        for c in cells:
            rs = [r for r in c["rows"] if r["method"] == m and math.isfinite(r["w2"])]
            if rs:
                picks.append(min(rs, key=lambda r: r["w2_over_floor"] + r["sw2_over_floor"]))
        if picks:
            nfe_best = [p["nfe"] for p in picks]
            bias_rows.append(
                [m, len(picks), _geo([p["w2_over_floor"] for p in picks]), _geo([p["sw2_over_floor"] for p in picks]),
                 max(p["sw2_over_floor"] for p in picks), _geo([p["mean_over_floor"] for p in picks]),
                 sum(p["coverage90"] for p in picks) / len(picks), max(set(nfe_best), key=nfe_best.count)]
            )  # fmt: skip
    bias_hdr = ["method", "problems", "W2/fl", "SW2/fl", "worst SW2/fl", "mean/fl", "in90", "typical nfe"]
    print(table(bias_rows, bias_hdr))
    print(f"\nelapsed {elapsed:.0f}s")

    RESULTS.mkdir(exist_ok=True)
    stem = "inverse_gmm_quick" if args.quick else "inverse_gmm"
    payload = {
        "config": {"samples": n, "nfe": plan, "noises": list(NOISES), "path": "linear", "prediction": "velocity",
                   "dps_zetas": list(DPS_ZETAS), "projections": PROJECTIONS, "methods": methods,
                   "papers": {m: METHODS[m][1] for m in methods}},
        "cells": cells,
        "bias": [dict(zip(bias_hdr, r)) for r in bias_rows],
        "target_met": {"w2": [n_pass, len(best_rows)], "sliced_w2": [n_pass_sw, len(best_rows)]},
        "skipped": {k: sorted(v) for k, v in all_skipped.items()},
        "elapsed_s": elapsed,
    }  # fmt: skip
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=float))
    plot(RESULTS / f"{stem}.png", cells, methods)
    print(f"wrote {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
