"""Exact W2 of the sampled law to a Gaussian target against steps, per path and solver (issue 15, item 6).

Setup. Target ``N(m, S)`` in ``d = 16`` dimensions, ``S = Q diag(lam) Q^T`` with eigenvalues log-spaced from
``1e-2`` to ``4`` (standard deviations 0.1 .. 2) and a random rotation ``Q``; the model is the exact denoiser
``pfode.analytic.Gaussian(m, S).denoiser(path)``. With an affine denoiser every fixed-step pfode ODE solver is an
affine map ``x_T -> A x_T + b``, so running ``pfode.sample`` (float64) on ``x_T = 0`` (gives ``b``) and on the basis
vectors (gives ``b + A e_i``) recovers the map exactly up to round-off, and the law of the samples is exactly
``N(A m_T + b, A S_T A^T)`` for a Gaussian start ``N(m_T, S_T)`` -- no sampling noise. Affinity is checked on a random
input. W2 is ``pfode.metrics.w2_gaussian`` (Bures). Grids: ``pfode.grid(path, steps)`` (log-SNR spacing) from
``t_max`` to ``t_min``, then the library's final denoising step ``x0_hat`` (``denoise=True``).

Three numbers per (path, solver, steps):

* ``w2_target``: W2 to the target with the usual start ``x_T ~ N(0, sigma(t_max)^2 I)``;
* ``w2_target_true_start``: W2 to the target starting from the true marginal at ``t_max``,
  ``N(alpha m, alpha^2 S + sigma^2 I)`` (removes the initialization error);
* ``w2_disc``: W2 between the law sampled from the true marginal and the law of the *exact* ODE solution from the
  same start, stopped at ``t_min`` and denoised the same way (``Gaussian.flow_map`` + the exact ``x0_hat``). This is
  the pure discretization error; its log-log slope against steps is fitted over 16..256 steps.

Per path we also report two step-independent parts: ``floor`` = W2(exact ODE from the true start, stopped at
``t_min`` and denoised, target) -- the early-stopping/denoising bias no step count removes -- and ``init`` =
W2(exact ODE from ``N(0, sigma(t_max)^2 I)``, exact ODE from the true marginal) after the same end treatment.

Paper (Gao & Zhu, "Convergence Analysis for General Probability Flow ODEs of Diffusion Models in Wasserstein
Distances", arXiv:2401.17958). What could be read here through the search tool: the abstract (non-asymptotic W2
bounds for a general class of probability-flow ODE samplers, accurate scores, smooth (strongly) log-concave data,
synchronous coupling, discretization by a specific exponential integrator; iteration-complexity results for
examples) and a third-party summary stating explicit complexities for VE and VP forward processes, VP generally
better than VE, and an ``O~(sqrt(d)/eps)`` complexity. The theorem/corollary statements and their numbers could not
be read. An ``O~(sqrt(d)/eps)`` iteration complexity means W2 <= eps after ``N ~ sqrt(d)/eps`` steps, i.e. the bound
decays like ``W2 ~ 1/N`` (log-log slope -1 up to logarithms); for VE the stated complexity is worse, i.e. a slope
shallower than (or equal to) -1 for the bound.

Why the measured slopes differ from the bound:

1. The bound is for a first-order scheme (the exponential integrator; pfode's ``ddim`` is the first-order
   exponential integrator, and ``euler`` in ``s = sigma/alpha`` is the same map). Those measure slope ~ -1, as
   the bound predicts. Higher-order solvers (heun, midpoint, dpm++2m: 2; unipc: 3; rk4: 4) reach their classical
   order because the exact Gaussian denoiser is smooth in time along every path; the paper does not analyse them.
2. The bound is a worst case over a class (strongly log-concave, L-smooth targets); a single smooth Gaussian has
   small constants, so the measured W2 sits far below any such bound and the asymptotic range starts early.
3. Early stopping at ``t_min`` plus the final denoising step leaves a bias (``floor``) no step count removes, so
   W2 to the target saturates; the discretization error proper (``w2_disc``) keeps falling. Bounds of this type
   only reach accuracy eps if ``t_min`` (and ``t_max``) are chosen for eps.
4. The initialization error (``init``) is ~ alpha(t_max) for VP-type paths and ~ 1/sigma_max for VE/EDM: a
   constant added to the bound's iteration count, not to its rate.
5. ``d`` is fixed (16): the sqrt(d) factor of the complexity is not probed; steps are grid intervals (NFE =
   steps x evaluations per step + 1), on the library's log-SNR grid, not the paper's step-size choice.
6. Observed exceptions: midpoint (in ``s``) measures ~ -3 rather than -2 here (a cancellation of its leading
   error term for this target and grid, observed, not derived); Euler in path time (``euler-t``) on VE, where
   sigma is exponential in t, is far less accurate and still pre-asymptotic at 256 steps. The Bures formula has a
   float64 round-off floor ~1e-7 in W2; points below 1e-6 are excluded from the fits.

Run: ``python benchmarks/w2_convergence.py``; writes ``benchmarks/results/w2_convergence.{json,png}``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import Gaussian  # noqa: E402
from pfode.metrics import w2_gaussian  # noqa: E402
from pfode.paths import EDM, VE, VP, Linear, VPCosine  # noqa: E402

D = 16
STEPS = [2, 4, 8, 16, 32, 64, 128, 256]
FIT = (16, 256)  # asymptotic range of the slope fit
# The Bures formula cancels O(tr S) terms: in float64 W2 below ~1e-7 is round-off (printed 0 when W2^2 < 0);
# points under this threshold are left out of the slope fit.
ROUNDOFF = 1e-6
PATHS = {"vp": VP(), "ve": VE(), "edm": EDM(), "linear": Linear(), "cosine": VPCosine()}
# name -> (solver name, options)
SOLVERS = {
    "euler": ("euler", {}),
    "euler-t": ("euler", {"variable": "t"}),
    "ddim": ("ddim", {}),
    "heun": ("heun", {}),
    "midpoint": ("midpoint", {}),
    "dpm++2m": ("dpm++2m", {}),
    "unipc": ("unipc", {}),
    "rk4": ("rk4", {}),
}
PAPER = {
    "reference": "Gao & Zhu, Convergence Analysis for General Probability Flow ODEs of Diffusion Models in "
    "Wasserstein Distances, arXiv:2401.17958",
    "read": "abstract (arxiv.org/html/2401.17958v2, openreview.net/forum?id=EkO8rb3liX) and a third-party summary "
    "(sciencestack.ai/paper/2401.17958); the theorem statements and numbers could not be read",
    "scheme": "exponential integrator (first order), accurate scores, smooth log-concave data, W2 via synchronous "
    "coupling",
    "vp": "O~(sqrt(d)/eps) (as summarised) -> W2 ~ 1/N, slope -1",
    "ve": "worse than VP (exponent not read) -> bound slope >= -1",
}
BOUND_SLOPE = {"vp": "-1", "cosine": "-1 (VP-type)", "linear": "n/a (not analysed)", "ve": ">= -1", "edm": ">= -1"}


def target() -> Gaussian:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.logspace(-2, math.log10(4.0), D, dtype=torch.float64)
    cov = (q * lam) @ q.T
    return Gaussian(torch.randn(D, generator=g, dtype=torch.float64), 0.5 * (cov + cov.T))


def affine(fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` of an affine map of ``[B, d]`` rows, from the origin and the basis vectors."""
    out = fn(torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)]))
    b = out[0]
    return (out[1:] - b).T, b


def push(ab, mean, cov):
    a, b = ab
    return a @ mean + b, a @ cov @ a.T


def start_laws(tg: Gaussian, path) -> dict:
    a, s = float(path.alpha(path.t_max)), float(path.sigma(path.t_max))
    return {
        "default": (torch.zeros(D, dtype=torch.float64), s * s * torch.eye(D, dtype=torch.float64)),
        "true": (a * tg.mean, a * a * tg.cov + s * s * torch.eye(D, dtype=torch.float64)),
    }


def exact_parts(tg: Gaussian, path, starts) -> tuple[dict, float, float]:
    """The exact ODE's laws (stopped at t_min, denoised) from both starts; the floor and the init error."""
    t_max, t_min = path.t_max, path.t_min

    def fn(x):
        y = tg.flow_map(x, t_max, t_min, path)
        return tg.x0_eps(y, t_min, path)[0]

    ab = affine(fn)
    laws = {k: push(ab, *v) for k, v in starts.items()}
    floor = w2_gaussian(*laws["true"], tg.mean, tg.cov)
    init = w2_gaussian(*laws["default"], *laws["true"])
    return laws, floor, init


def slope(steps, vals, lo, hi, tiny=ROUNDOFF):
    pts = [(n, v) for n, v in zip(steps, vals) if lo <= n <= hi and v is not None and v > tiny]
    if len(pts) < 3:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def run_one(tg, path, den, solver, steps, starts, exact, gen):
    g = pfode.grid(path, steps)

    def fn(x):
        return pfode.sample(den, x, grid=g, solver=solver, denoise=True)

    ab = affine(fn)
    x = torch.randn(3, D, generator=gen, dtype=torch.float64) * float(path.sigma(path.t_max))
    out = pfode.sample(den, x, grid=g, solver=solver, denoise=True, return_info=True)
    lin = float((out.x - (x @ ab[0].T + ab[1])).abs().max() / out.x.abs().max().clamp_min(1e-300))
    laws = {k: push(ab, *v) for k, v in starts.items()}
    return {
        "nfe": out.nfe,
        "w2_target": w2_gaussian(*laws["default"], tg.mean, tg.cov),
        "w2_target_true_start": w2_gaussian(*laws["true"], tg.mean, tg.cov),
        "w2_disc": w2_gaussian(*laws["true"], *exact["true"]),
        "affine_residual": lin,
    }


def plot(fname, res, parts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(4.2 * len(res), 4.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (pname, by) in zip(axes, res.items()):
        for i, (sname, rows) in enumerate(by.items()):
            ns = [int(n) for n in rows]
            c = colors[i % len(colors)]
            ax.loglog(ns, [rows[str(n)]["w2_disc"] for n in ns], "-o", ms=3, color=c, label=f"{sname}")
            ax.loglog(ns, [rows[str(n)]["w2_target"] for n in ns], ":", color=c, lw=1)
        ax.axhline(parts[pname]["floor"], color="k", ls="--", lw=0.8, label="floor (t_min + denoise)")
        if parts[pname]["init"] > 1e-14:
            ax.axhline(parts[pname]["init"], color="gray", ls="-.", lw=0.8, label="init error")
        n = np.array([16, 256.0])
        for p, ls in ((1, (0, (1, 3))), (2, (0, (5, 5)))):
            ax.loglog(n, 1e-2 * (n / 16) ** -p, color="0.6", ls=ls, lw=1)
            ax.text(256, 1e-2 * 16.0**-p, f"N^-{p}", fontsize=7, color="0.4")
        ax.set_title(pname)
        ax.set_xlabel("steps N")
        ax.set_ylim(1e-8, 1e2)
        ax.axhspan(1e-8, ROUNDOFF, color="0.9", lw=0)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("W2 (solid: to exact ODE law; dotted: to target)")
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Exact W2 vs steps, Gaussian target d={D} (Bures)")
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)


EXPLAIN = """\
Comparison with the paper (Gao & Zhu, arXiv:2401.17958):
  read: the abstract and a third-party summary only; theorem statements/numbers NOT readable here.
  The analysed discretization is an exponential integrator (first order); the summarised complexity for VP is
  O~(sqrt(d)/eps) steps for W2 <= eps, i.e. a bound W2 ~ 1/N (slope -1); VE is stated to be worse (slope >= -1).
  Measured: first-order schemes (euler in s = ddim, the exponential integrator; euler-t) follow slope ~ -1 on every
  path, consistent with the bound's rate. Higher-order solvers converge at their classical order (2, 3, 4): the bound
  is a worst case over strongly log-concave smooth targets, proven only for the first-order scheme, while a Gaussian
  target's denoiser is smooth in time. W2 to the target stops falling at the floor set by early stopping at t_min and
  the final denoising step (and, with the N(0, sigma_max^2 I) start, the initialization error): those are
  step-independent terms of the bound, which must be made small by the choice of t_min / t_max, not by N.
  VE/EDM are not slower in rate here (same order as VP, similar constants on the log-SNR grid); the paper's VE-vs-VP
  gap is a property of its worst-case bound, not seen on this target. Exceptions to "slope = classical order":
  midpoint (in s) measures ~ -3 instead of -2 (its leading error term cancels for this target on this grid:
  observed, not derived); euler-t on VE (Euler in path time with sigma exponential in t) is far less accurate and
  its slope (~ -0.9 over 16..256) is still pre-asymptotic. Points with W2 < 1e-6 (Bures round-off) are not fitted."""


def main():
    setup(1)
    t0 = time.perf_counter()
    tg = target()
    gen = torch.Generator().manual_seed(1)
    res: dict = {}
    parts: dict = {}
    failures = []
    for pname, path in PATHS.items():
        den = tg.denoiser(path)
        starts = start_laws(tg, path)
        exact, floor, init = exact_parts(tg, path, starts)
        parts[pname] = {"floor": floor, "init": init}
        for sname, (sid, opts) in SOLVERS.items():
            solver = pfode.solvers.get(sid, **opts)
            rows = {}
            for n in STEPS:
                try:
                    rows[str(n)] = run_one(tg, path, den, solver, n, starts, exact, gen)
                except Exception as e:  # record, keep going
                    failures.append({"path": pname, "solver": sname, "steps": n, "error": f"{type(e).__name__}: {e}"})
            if rows:
                res.setdefault(pname, {})[sname] = rows

    summary = []
    for pname, by in res.items():
        for sname, rows in by.items():
            ns = [int(n) for n in rows]
            solver = pfode.solvers.get(SOLVERS[sname][0], **SOLVERS[sname][1])
            sd = slope(ns, [rows[str(n)]["w2_disc"] for n in ns], *FIT)
            summary.append(
                {
                    "path": pname,
                    "solver": sname,
                    "order": solver.order,
                    "evals_per_step": solver.evals_per_step,
                    "slope_disc": sd,
                    "bound_slope": BOUND_SLOPE[pname],
                    **{f"w2_target_{n}": rows[str(n)]["w2_target"] for n in (4, 16, 64, 256) if str(n) in rows},
                    **{f"w2_disc_{n}": rows[str(n)]["w2_disc"] for n in (4, 16, 64, 256) if str(n) in rows},
                    "max_affine_residual": max(r["affine_residual"] for r in rows.values()),
                }
            )
    elapsed = time.perf_counter() - t0

    print(f"Gaussian target d={D}, eigenvalues 1e-2..4; steps {STEPS}; slope fit over {FIT[0]}..{FIT[1]} steps\n")
    print("Step-independent parts (exact ODE, same t_min and final denoising step):")
    print(table([[p, v["floor"], v["init"]] for p, v in parts.items()], ["path", "floor W2", "init W2"]))
    print("\nSlopes of the discretization W2 (sampled vs exact-ODE law, true start) and W2 values")
    hdr = [
        "path",
        "solver",
        "order",
        "slope",
        "bound",
        "disc@4",
        "disc@16",
        "disc@64",
        "disc@256",
        "tgt@4",
        "tgt@16",
        "tgt@256",
    ]
    rows = []
    for s in summary:
        rows.append(
            [
                s["path"],
                s["solver"],
                s["order"],
                "-" if s["slope_disc"] is None else round(s["slope_disc"], 2),
                s["bound_slope"],
            ]
            + [s.get(f"w2_disc_{n}", float("nan")) for n in (4, 16, 64, 256)]
            + [s.get(f"w2_target_{n}", float("nan")) for n in (4, 16, 256)]
        )
    print(table(rows, hdr))
    worst = max(s["max_affine_residual"] for s in summary)
    print(f"\nmax relative residual of the affine fit (x -> A x + b) on random inputs: {worst:.2e}")
    if failures:
        print(f"\nFAILURES ({len(failures)}):")
        for f in failures:
            print(f"  {f['path']} {f['solver']} steps={f['steps']}: {f['error']}")
    print("\n" + EXPLAIN)
    print(f"\ntime: {elapsed:.1f}s")

    p = write_json(
        "w2_convergence.json",
        {
            "setup": {
                "d": D,
                "target": "N(m, Q diag(logspace(1e-2, 4)) Q^T), seed 0",
                "steps": STEPS,
                "grid": "pfode.grid(path, steps) (logsnr) + final denoising step",
                "fit_range": FIT,
                "paths": {k: repr(v) for k, v in PATHS.items()},
                "solvers": {k: {"name": v[0], **v[1]} for k, v in SOLVERS.items()},
                "method": "exact affine map of each solver via basis vectors (float64); Bures W2",
            },
            "paper": PAPER,
            "parts": parts,
            "results": res,
            "summary": summary,
            "failures": failures,
            "explanation": EXPLAIN,
            "seconds": elapsed,
        },
    )
    plot(RESULTS / "w2_convergence.png", res, parts)
    print(f"wrote {p} and {RESULTS / 'w2_convergence.png'}")


if __name__ == "__main__":
    main()
