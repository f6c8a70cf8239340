"""SADA step skipping (NFE saved, error cost) and EVODiff vs DPM-Solver++(2M) / UniPC at low NFE.

Targets:

* GMM: ``GaussianMixture.random(64, 8, std_range=(0.05, 1))`` on ``VPDiscrete.ddpm()`` with the exact denoiser,
  as ``benchmarks/solvers_gmm.py`` (same seed, first 32 of its noises ``x_T ~ N(0, I)`` at ``t = 1``), float64;
* digits: the shipped ``builtin:digits`` model (8x8, eps-prediction, cosine VP), float32, 32 noises
  ``x_T = sigma(t_max) randn`` (seed 0).

Error of a run: mean over samples of the per-sample RMSE to a high-NFE reference from the same noises
(UniPC, logsnr, 400 NFE on the GMM -- it agrees with DPM-Solver++(3M) at 1000 NFE to ~1e-6 --, 150 NFE on
digits). Every run uses the default logsnr grid with the final denoising step; NFE counts the network calls
actually made (skipped evaluations are not calls).

Part 1 (SADA, default options: sign test ``threshold = 0``, window 20-94 % of the steps, at most 4 skips in a
row): for each solver and planned NFE, the plain run, the skipping run (NFE spent, steps skipped, error), and
the plain solver at the NFE the skipping run spent (is skipping better than simply taking fewer steps?).

Part 2: EVODiff (variance-optimal eta) vs dpm++2m and unipc on the GMM at NFE 5-20.

Run: ``.venv/bin/python benchmarks/sada.py`` (about 3-4 minutes on a loaded 2-core machine); writes
``benchmarks/results/sada.{json,png}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.paths import VPDiscrete  # noqa: E402
from pfode.plots import _figure, save_figure  # noqa: E402

SADA_SOLVERS = ("ddim", "dpm++2m", "unipc", "evodiff")
SADA_NFES = (20, 50)
EVO_SOLVERS = ("evodiff", "dpm++2m", "unipc")
EVO_NFES = (5, 6, 8, 10, 12, 15, 20)
N = 32


def gmm_problem():
    gen = torch.Generator().manual_seed(0)  # the draws of solvers_gmm.Problem(n, seed=0)
    target = GaussianMixture.random(64, 8, std_range=(0.05, 1.0), generator=gen)
    path = VPDiscrete.ddpm()
    x_T = torch.randn(256, 64, generator=gen, dtype=torch.float64)[:N]
    return target.denoiser(path), x_T, dict(solver="unipc", nfe=400)


def digits_problem():
    m = pfode.models.load("builtin:digits")
    path = m.denoiser.path
    z = torch.randn((N, *m.data_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = (float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64))) * z).to(m.dtype)
    return m.denoiser, x_T, dict(solver="unipc", nfe=150)


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).flatten(1).pow(2).mean(1).sqrt().mean())


def sada_rows(name: str, den, x_T, ref) -> list[dict]:
    rows = []
    for solver in SADA_SOLVERS:
        for nfe in SADA_NFES:
            plain = pfode.sample(den, x_T, nfe=nfe, solver=solver, return_info=True)
            out = pfode.sample(den, x_T, nfe=nfe, solver=solver, skip="sada", return_info=True)
            same = pfode.sample(den, x_T, nfe=out.nfe, solver=solver, return_info=True)
            rows.append(
                {
                    "target": name,
                    "solver": solver,
                    "planned_nfe": nfe,
                    "sada_nfe": out.nfe,
                    "saved": nfe - out.nfe,
                    "skipped_steps": out.info["skipped"],
                    "err_plain": error(plain.x, ref),
                    "err_sada": error(out.x, ref),
                    "err_plain_at_sada_nfe": error(same.x, ref),
                }
            )
    return rows


def evodiff_rows(den, x_T, ref) -> dict[str, dict[int, float]]:
    return {s: {nfe: error(pfode.sample(den, x_T, nfe=nfe, solver=s), ref) for nfe in EVO_NFES} for s in EVO_SOLVERS}


def plot(sada: list[dict], evo: dict, path: Path):
    fig = _figure(15, 4.2)
    for j, name in enumerate(("gmm", "digits")):
        ax = fig.add_subplot(1, 3, j + 1)
        for c, solver in enumerate(SADA_SOLVERS):
            rs = [r for r in sada if r["target"] == name and r["solver"] == solver]
            col = f"C{c}"
            ax.plot([r["planned_nfe"] for r in rs], [r["err_plain"] for r in rs], "o-", color=col, label=solver)
            ax.plot([r["sada_nfe"] for r in rs], [r["err_sada"] for r in rs], "x", color=col, ms=9)
            for r in rs:
                ax.annotate(
                    "",
                    (r["sada_nfe"], r["err_sada"]),
                    (r["planned_nfe"], r["err_plain"]),
                    arrowprops=dict(arrowstyle="->", color=col, alpha=0.5),
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (network calls made)")
        ax.set_ylabel("error to high-NFE reference")
        ax.set_title(f"SADA on {name}: o plain, x skipping (arrow)")
        ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    for s, row in evo.items():
        ax.plot(list(row), list(row.values()), "o-", label=s)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("error to reference")
    ax.set_title("GMM d=64: EVODiff vs DPM-Solver++(2M), UniPC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    setup(1)
    t0 = time.perf_counter()
    sada: list[dict] = []
    refs = {}
    evo = None
    for name, make in (("gmm", gmm_problem), ("digits", digits_problem)):
        den, x_T, ref_opts = make()
        with torch.no_grad():
            ref = pfode.sample(den, x_T, **ref_opts)
            refs[name] = ref_opts
            sada += sada_rows(name, den, x_T, ref)
            if name == "gmm":
                evo = evodiff_rows(den, x_T, ref)
    seconds = time.perf_counter() - t0

    header = ["target", "solver", "NFE", "SADA NFE", "saved", "err plain", "err SADA", "plain @ SADA NFE", "skipped"]
    print("SADA step skipping (default options); error = mean per-sample RMSE to the reference\n")
    print(
        table(
            [
                [
                    r["target"],
                    r["solver"],
                    r["planned_nfe"],
                    r["sada_nfe"],
                    r["saved"],
                    r["err_plain"],
                    r["err_sada"],
                    r["err_plain_at_sada_nfe"],
                    ",".join(map(str, r["skipped_steps"])),
                ]
                for r in sada
            ],
            header,
        )
    )
    print("\nEVODiff vs dpm++2m / unipc on the GMM (logsnr grid, final denoising step)\n")
    evo_rows = [[s] + [row[n] for n in EVO_NFES] for s, row in evo.items()]
    print(table(evo_rows, ["solver"] + [f"NFE {n}" for n in EVO_NFES]))
    print(f"\n{seconds:.0f} s")
    payload = {
        "settings": {"n_samples": N, "references": refs, "sada": "pfode.skipping.SADA() defaults", "spacing": "logsnr"},
        "sada": sada,
        "evodiff": {s: {str(k): v for k, v in row.items()} for s, row in evo.items()},
        "seconds": seconds,
    }
    print(write_json("sada.json", payload))
    plot(sada, evo, RESULTS / "sada.png")
    print(RESULTS / "sada.png")


if __name__ == "__main__":
    main()
