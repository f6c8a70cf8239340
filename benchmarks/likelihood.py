"""Likelihood accuracy vs network evaluations: pfode, k-diffusion and flow_matching side by side.

Target: ``GaussianMixture.random(d, 8, std_range=(0.05, 1))`` (seed 0), d = 8 and d = 64, on the VP,
the Linear (rectified-flow) and the EDM paths. Points: samples of the marginal at ``t_min``; the reference is
the closed-form ``log p_{t_min}(x)``. Metric: mean over points of ``|log p error| / d`` (nats/dim)
against the network evaluations (batched forward calls) each method used.

* pfode: ``pfode.likelihood.log_likelihood``, exact divergence, dopri5 in ``theta = atan(sigma/alpha)``
  with one step size for the batch (``control="batch"``, as torchdiffeq) and with per-sample control
  (``"sample"``), over tolerances; also RK4 on log-SNR grids and the Hutchinson estimator (1 probe).
* flow_matching: ``ODESolver.compute_likelihood`` (torchdiffeq dopri5 in time, exact divergence) on the
  path's velocity field, time rescaled to its convention (noise at 0, data at 1).
* k-diffusion: ``sampling.log_likelihood`` (torchdiffeq dopri5 in ``sigma = s``, Hutchinson with one
  Rademacher probe) on the path's denoiser in k-diffusion's variables ``x / alpha`` and ``sigma / alpha``;
  its density of ``x / alpha`` is converted to that of ``x``. It uses the prior ``N(0, sigma_max^2)``
  (hard-coded); the mismatch at these points is printed (it is far below its Hutchinson noise).

pfode and flow_matching use the exact marginal at ``t_max`` as prior, so the figures measure the ODE
solve alone. pfode and flow_matching sweep the same tolerances (``rtol = atol``, 1e-2 down to 1e-6 in
quarter decades). The target (issue 4) reads: pfode reaches 1e-4 nats/dim within the evaluations
flow_matching needs for 1.3e-3. "Needs for a level" is given two ways: the fewest evaluations of a run
at or below the level (over the sweep), and the evaluations where a log-log line fitted to the whole
sweep (errors between 3e-6 and 3e-2) crosses the level, which does not hang on one lucky tolerance.

Run: ``python benchmarks/likelihood.py`` (``--quick`` for a smaller sweep). Writes
``benchmarks/results/likelihood.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import pfode  # noqa: E402
from pfode import paths as P  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.likelihood import gaussian_prior, log_likelihood  # noqa: E402
from pfode.predictions import Coeffs  # noqa: E402


def k_sampling():
    from pfode.integrations.k_diffusion import load_sampling

    return load_sampling()


class Problem:
    def __init__(self, d: int, path, n: int, seed: int = 0):
        self.d, self.path = d, path
        self.gm = GaussianMixture.random(d, 8, std_range=(0.05, 1.0), generator=torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed + 1)
        x0 = self.gm.sample(n, generator=gen)
        t0 = path.t_min
        self.x = float(path.alpha(t0)) * x0 + float(path.sigma(t0)) * torch.randn(
            x0.shape, generator=gen, dtype=torch.float64
        )
        self.exact = self.gm.log_prob(self.x, t0, path)
        self.den = self.gm.denoiser(path)

    def prior(self, z):
        return self.gm.log_prob(z, self.path.t_max, self.path)

    def err(self, logp) -> float:
        return float((logp.to(torch.float64) - self.exact).abs().mean()) / self.d


def run_pfode(pb: Problem, tols, control, divergence="exact"):
    rows = []
    for tol in tols:
        t = time.perf_counter()
        out = log_likelihood(
            pb.den,
            pb.x,
            rtol=tol,
            atol=tol,
            prior=pb.prior,
            control=control,
            divergence=divergence,
            generator=torch.Generator().manual_seed(0),
        )
        rows.append({"tol": tol, "nfe": out.nfe, "err": pb.err(out.logp), "seconds": time.perf_counter() - t})
    return rows


def run_pfode_rk4(pb: Problem, steps):
    rows = []
    for n in steps:
        t = time.perf_counter()
        out = log_likelihood(pb.den, pb.x, grid=pfode.grid(pb.path, n), solver="rk4", prior=pb.prior)
        rows.append({"steps": n, "nfe": out.nfe, "err": pb.err(out.logp), "seconds": time.perf_counter() - t})
    return rows


def run_flow_matching(pb: Problem, tols):
    from flow_matching.solver import ODESolver

    path, gm = pb.path, pb.gm
    t0, t1 = path.t_min, path.t_max

    class Velocity(torch.nn.Module):
        """dx/ds with s = (t_max - t) / (t_max - t_min): noise at s = 0, data at s = 1."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, t):
            self.calls += 1
            tt = (t1 - t.to(torch.float64) * (t1 - t0)).reshape(())
            x0, eps = gm.x0_eps(x, float(tt), path)
            c = Coeffs.at(path, tt)
            return (-(t1 - t0) * (float(c.d_alpha) * x0 + float(c.d_sigma) * eps)).to(x.dtype)

    rows = []
    for tol in tols:
        v = Velocity()
        t = time.perf_counter()
        _, logp = ODESolver(v).compute_likelihood(
            pb.x,
            pb.prior,
            step_size=None,
            method="dopri5",
            atol=tol,
            rtol=tol,
            time_grid=torch.tensor([1.0, 0.0], dtype=torch.float64),
            exact_divergence=True,
        )
        rows.append({"tol": tol, "nfe": v.calls, "err": pb.err(logp), "seconds": time.perf_counter() - t})
    return rows


def run_k_diffusion(pb: Problem, tols):
    ks = k_sampling()
    path, gm = pb.path, pb.gm
    t0, t1 = path.t_min, path.t_max
    s_min, s_max = float(path.s(t0)), float(path.s(t1))
    a0 = float(path.alpha(t0))

    def model(x_ve, sigma):
        t = path.t_of_s(sigma.to(torch.float64))
        a = path.alpha(t)[:, None]
        x0, _ = gm.x0_eps(x_ve * a, t, path)
        return x0.to(x_ve.dtype)

    rows = []
    for tol in tols:
        torch.manual_seed(0)  # k-diffusion draws its Rademacher probe from the global generator
        t = time.perf_counter()
        ll, info = ks.log_likelihood(model, pb.x / a0, s_min, s_max, atol=tol, rtol=tol)
        logp = ll.to(torch.float64) - pb.d * math.log(a0)  # density of x = alpha * x_ve
        rows.append({"tol": tol, "nfe": int(info["fevals"]), "err": pb.err(logp), "seconds": time.perf_counter() - t})
    return rows


def first_reaching(rows, level):
    ok = [r["nfe"] for r in rows if r["err"] <= level]
    return min(ok) if ok else None


def fitted_reaching(rows, level):
    """Evaluations where the least-squares line of log(err) on log(nfe) crosses ``level``."""
    pts = np.log([(r["nfe"], r["err"]) for r in rows if 3e-6 < r["err"] < 3e-2])
    if len(pts) < 3 or np.ptp(pts[:, 0]) == 0.0:
        return None
    slope, icpt = np.polyfit(pts[:, 0], pts[:, 1], 1)
    return round(math.exp((math.log(level) - icpt) / slope), 1) if slope < 0.0 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tolerances and points")
    ap.add_argument("--out", default=str(ROOT / "results" / "likelihood"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sweep = [10.0 ** (-2.0 - k / 4.0) for k in range(17)]  # 1e-2 ... 1e-6, quarter decades
    tols = sweep[2::2][:6] if args.quick else sweep
    peer_tols = tols
    kd_tols = [1e-3, 1e-4] if args.quick else [1e-3, 1e-4, 1e-5]
    rk_steps = [10, 20] if args.quick else [10, 20, 40, 80]
    results = []
    for d, n in ((8, 16 if args.quick else 32), (64, 4 if args.quick else 16)):
        for name, path in (("vp", P.VP()), ("linear", P.Linear()), ("edm", P.EDM())):
            pb = Problem(d, path, n)
            sigma_max = float(path.s(path.t_max))
            res = {"d": d, "path": name, "points": n, "methods": {}}
            res["methods"]["pfode dopri5 (batch)"] = run_pfode(pb, tols, "batch")
            res["methods"]["pfode dopri5 (sample)"] = run_pfode(pb, tols, "sample")
            res["methods"]["pfode rk4 grid"] = run_pfode_rk4(pb, rk_steps)
            res["methods"]["pfode hutchinson-1"] = run_pfode(pb, kd_tols, "sample", divergence="hutchinson")
            res["methods"]["flow_matching dopri5"] = run_flow_matching(pb, peer_tols)
            res["methods"]["k-diffusion dopri5 (hutchinson-1)"] = run_k_diffusion(pb, kd_tols)
            # k-diffusion's prior N(0, s_max^2) on x / alpha vs the exact marginal, at the latents pfode finds
            out = log_likelihood(pb.den, pb.x, rtol=1e-6, atol=1e-6, prior=pb.prior)
            a_T = float(path.alpha(path.t_max))
            kd_prior = gaussian_prior(sigma_max)(out.x_T / a_T) - d * math.log(a_T)
            kd_mismatch = float((kd_prior - out.prior_logp).abs().mean()) / d
            res["k_diffusion_prior_mismatch_nats_per_dim"] = kd_mismatch
            fm = res["methods"]["flow_matching dopri5"]
            pfb = res["methods"]["pfode dopri5 (batch)"]
            pfs = res["methods"]["pfode dopri5 (sample)"]
            tgt = {
                "flow_matching_nfe_to_1.3e-3": first_reaching(fm, 1.3e-3),
                "flow_matching_nfe_to_1e-4": first_reaching(fm, 1e-4),
                "pfode_batch_nfe_to_1e-4": first_reaching(pfb, 1e-4),
                "pfode_sample_nfe_to_1e-4": first_reaching(pfs, 1e-4),
                "fitted_flow_matching_nfe_to_1.3e-3": fitted_reaching(fm, 1.3e-3),
                "fitted_pfode_batch_nfe_to_1e-4": fitted_reaching(pfb, 1e-4),
                "fitted_pfode_sample_nfe_to_1e-4": fitted_reaching(pfs, 1e-4),
            }
            for kind in ("", "fitted_"):
                fm_n, pf_n = tgt[f"{kind}flow_matching_nfe_to_1.3e-3"], tgt[f"{kind}pfode_batch_nfe_to_1e-4"]
                tgt[f"{kind}met"] = fm_n is not None and pf_n is not None and pf_n <= fm_n
            res["target"] = tgt
            results.append(res)
            print(f"\n== d={d}, path={name}, {n} points (mean |log p error| per dim vs evaluations) ==")
            print(f"{'method':38s} {'setting':>9s} {'nfe':>6s} {'err/dim':>10s} {'sec':>7s}")
            for m, rows in res["methods"].items():
                for r in rows:
                    setting = f"{r['tol']:.1e}" if "tol" in r else f"{r['steps']} st"
                    print(f"{m:38s} {setting:>9s} {r['nfe']:6d} {r['err']:10.2e} {r['seconds']:7.2f}")
            print(f"k-diffusion prior mismatch: {kd_mismatch:.1e} nats/dim")
            print(f"target: {res['target']}")
    print("\n== target: pfode (batch control) to 1e-4 nats/dim vs flow_matching to 1.3e-3, evaluations ==")
    print(
        f"{'case':12s} {'fm 1.3e-3':>10s} {'pfode 1e-4':>11s} {'(sample)':>9s} {'met':>5s}"
        f" {'fit fm':>8s} {'fit pfode':>10s} {'(sample)':>9s} {'met':>5s}"
    )
    for res in results:
        t = res["target"]
        case = f"d={res['d']} {res['path']}"
        print(
            f"{case:12s} {t['flow_matching_nfe_to_1.3e-3']!s:>10s}"
            f" {t['pfode_batch_nfe_to_1e-4']!s:>11s} {t['pfode_sample_nfe_to_1e-4']!s:>9s} {t['met']!s:>5s}"
            f" {t['fitted_flow_matching_nfe_to_1.3e-3']!s:>8s} {t['fitted_pfode_batch_nfe_to_1e-4']!s:>10s}"
            f" {t['fitted_pfode_sample_nfe_to_1e-4']!s:>9s} {t['fitted_met']!s:>5s}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "target": "GaussianMixture.random(d, 8, std_range=(0.05, 1.0), seed=0)",
        "metric": "mean |log p_{t_min}(x) error| / d, nats/dim; nfe = batched network evaluations",
        "torch": torch.__version__,
        "threads": 1,
    }
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
        for ax, res in zip(axes[0], results):
            for m, rows in res["methods"].items():
                ax.loglog([r["nfe"] for r in rows], [max(r["err"], 1e-9) for r in rows], "o-", label=m, ms=3)
            ax.axhline(1e-4, color="k", lw=0.6, ls=":")
            ax.axhline(1.3e-3, color="gray", lw=0.6, ls=":")
            ax.set_title(f"d={res['d']}, {res['path']}")
            ax.set_xlabel("network evaluations")
            ax.set_ylabel("mean |log p error| / d")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not available: no PNG")
    print(f"\nwrote {out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
