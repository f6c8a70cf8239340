"""Kinetic-optimal paths vs linear, cosine and EDM: kinetic energy and few-step sampling error (issue 16, item 4).

Paper: Shaul et al., "On Kinetic Optimal Probability Paths for Generative Models" (ICML 2023). The KO path of each
target is built from its data separation function (``pfode.kinetic.KineticOptimal.from_data``).

Targets (all exact, so the denoiser is closed form):

* ``gmm64``: ``GaussianMixture.random(64, 8, std_range=(0.05, 1))`` (seed 0), the target of
  ``benchmarks/solvers_gmm.py``;
* ``moons``, ``checkerboard``: a Gaussian-kernel fit of 400 points of ``pfode.data.toy2d`` (a mixture with one
  component per point, std 0.08), i.e. an analytic GMM fit of the 2-D toys.

Energy: ``pfode.kinetic.kinetic_energy`` with time mapped to [0, 1] over the path's valid range (Linear, cosine, KO:
all of data -> pure noise; EDM: ``[sigma_min, sigma_max] = [0.002, 80]``, a different noise end, N(0, 80^2 I)),
method ``"separation"`` (Rao-Blackwellised Monte Carlo, 2048 draws); the table prints E / d.

Sampling error: 1200 (2-D) / 1000 (64-D) start points ``x_T = sigma(t_max) z`` on each path, the exact denoiser,
``pfode.sample`` with the final denoising step, NFE 4..20: dpm++2m, unipc, euler (in ``s``) on the log-SNR grid
and Euler / Heun in the path's own time ``t`` on a uniform-``t`` grid. Error = exact W2 (POT) between the samples
and the same starts pushed through the *same path's* ODE by UniPC at NFE 200 (discretization error); the W2 of
that reference to fresh target samples is printed as the floor.

Caveat measured here: in ``s = sigma/alpha`` (and lam) the PF-ODE of every path is the same ODE, so for the
log-SNR-grid solvers paths differ only by where the grid starts and ends in lam (``lam(t_max)``: KO
data-dependent, Linear -6.9, cosine -4.8, EDM -4.4) and by the start noise -- not by their kinetic energy. The
time labelling a KO path optimises acts only through solvers stepping in ``t`` (the ``-t uniform`` rows). Run:
``python benchmarks/kinetic_paths.py [--quick]``; writes ``benchmarks/results/kinetic_paths.{json,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.kinetic import KineticOptimal, kinetic_energy  # noqa: E402
from pfode.metrics import w2_samples  # noqa: E402
from pfode.paths import EDM, Linear, VPCosine  # noqa: E402

# (label, solver, spacing): the first three integrate in lam or s = sigma/alpha, where every path has the same ODE
# (DESIGN.md 1) -- there paths differ only by the grid's lam range and the start; the "-t" ones step uniformly in
# the path's own time, where its time labelling (and so its kinetic energy) matters.
CONFIGS = (
    ("dpm++2m", "dpm++2m", "logsnr"),
    ("unipc", "unipc", "logsnr"),
    ("euler", "euler", "logsnr"),
    ("euler-t uniform", ("euler", {"variable": "t"}), "uniform"),
    ("heun-t uniform", ("heun", {"variable": "t"}), "uniform"),
)
SOLVERS = tuple(c[0] for c in CONFIGS)
NFES = (4, 6, 8, 10, 12, 16, 20)


def solver_of(spec):
    return pfode.solvers.get(spec[0], **spec[1]) if isinstance(spec, tuple) else spec


def targets(quick: bool) -> dict[str, GaussianMixture]:
    out = {"gmm64": GaussianMixture.random(64, 8, std_range=(0.05, 1.0), generator=torch.Generator().manual_seed(0))}
    n = 200 if quick else 400
    for name in ("moons", "checkerboard"):
        pts = toy2d(name, n, seed=1).to(torch.float64)
        out[name] = GaussianMixture(torch.full((n,), 1.0 / n, dtype=torch.float64), pts, torch.full((n,), 0.08**2))
    return out


def run(quick: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    res = {}
    for tname, target in targets(quick).items():
        t0 = time.perf_counter()
        ko = KineticOptimal.from_data(target, n_samples=1024 if quick else 2048, generator=gen)
        t_build = time.perf_counter() - t0
        path_set = {"KO": ko, "linear": Linear(), "cosine": VPCosine(), "edm": EDM()}
        energies = {}
        for pname, path in path_set.items():
            e = kinetic_energy(target, path, method="separation", n_samples=1024 if quick else 2048, generator=gen)
            energies[pname] = {"E_per_dim": e.value / target.d, "stderr_per_dim": e.stderr / target.d}
        n = (500 if quick else 1000) if target.d > 2 else (800 if quick else 1200)
        z = torch.randn(n, target.d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        truth = target.sample(n, torch.Generator().manual_seed(2))
        errs = {}
        for pname, path in path_set.items():
            den = target.denoiser(path)
            x_T = z * float(path.sigma(path.t_max))
            ref = pfode.sample(den, x_T, nfe=200, solver="unipc")
            errs[pname] = {"floor_w2_to_target": w2_samples(ref, truth)}
            for solver, spec, spacing in CONFIGS:
                row = {}
                for nfe in NFES:
                    used = nfe if solver_of(spec).evals(1, True) % 2 == 0 or nfe % 2 else nfe + 1  # Heun: odd NFE
                    x = pfode.sample(den, x_T, nfe=used, solver=solver_of(spec), spacing=spacing)
                    row[used] = w2_samples(x, ref) if bool(torch.isfinite(x).all()) else float("nan")
                errs[pname][solver] = row
        res[tname] = {"d": target.d, "ko_build_seconds": t_build, "energy": energies, "w2": errs}
        print(f"\n== {tname} (d={target.d}; KO built in {t_build:.1f}s) ==")
        print(
            table(
                [
                    [p, v["E_per_dim"], v["stderr_per_dim"], v["E_per_dim"] / energies["KO"]["E_per_dim"]]
                    for p, v in energies.items()
                ],
                ["path", "E/d", "stderr", "E/E_KO"],
            )
        )
        rows = []
        for solver in SOLVERS:
            for pname in path_set:
                r = errs[pname][solver]
                rows.append([solver, pname] + [r.get(nfe, r.get(nfe + 1, "-")) for nfe in NFES])
        print("W2(samples, same path's NFE-200 reference; Heun rows at NFE + 1, its odd budgets):")
        print(table(rows, ["solver", "path"] + [f"NFE {k}" for k in NFES]))
        print(
            "floor W2(reference, target samples): "
            + ", ".join(f"{p} {errs[p]['floor_w2_to_target']:.3g}" for p in path_set)
        )
    return res


def plot(res: dict, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res)
    fig, axes = plt.subplots(len(SOLVERS), len(names), figsize=(4.2 * len(names), 3.2 * len(SOLVERS)), squeeze=False)
    for j, tname in enumerate(names):
        for i, solver in enumerate(SOLVERS):
            ax = axes[i][j]
            for pname, by in res[tname]["w2"].items():
                row = by[solver]
                ks = sorted(row)
                e = res[tname]["energy"][pname]["E_per_dim"]
                ax.semilogy(ks, [row[k] for k in ks], "o-", label=f"{pname} (E/d={e:.3g})")
            ax.set_title(f"{tname}: {solver}")
            ax.set_xlabel("NFE")
            ax.set_ylabel("W2 to NFE-200 reference")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    setup(1)
    t0 = time.perf_counter()
    res = run(args.quick)
    tag = "_quick" if args.quick else ""
    payload = {
        "setup": {
            "paper": "Shaul et al., On Kinetic Optimal Probability Paths for Generative Models (ICML 2023)",
            "energy_time": "path t mapped affinely to [0, 1] over [t_lo, t_hi] (EDM: [t_min, t_max])",
            "solvers": SOLVERS,
            "nfes": NFES,
            "error": "exact W2 (POT) to the same starts pushed by unipc NFE 200 on the same path",
        },
        "results": res,
        "seconds": time.perf_counter() - t0,
    }
    out = write_json(f"kinetic_paths{tag}.json", payload)
    plot(res, RESULTS / f"kinetic_paths{tag}.png")
    print(f"\nwrote {out} and .png ({payload['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
