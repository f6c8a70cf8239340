"""Agreement with k-diffusion: every k-diffusion sampler pfode's adapter offers, against k-diffusion's own.

Both run in this process on the same model and the same noise: the exact denoiser of a Gaussian mixture
(d = 8, 4 components; ``D(x, sigma)`` in closed form, computed in float64 and returned in the state's dtype), a
batch of 64 starting points, Karras sigmas from 80 to 0.002 ending with 0, and

* stochastic samplers: the same ``k_diffusion.sampling.BrownianTreeNoiseSampler`` (same seed, float64, its
  draws cast to the run's dtype) as ``noise_sampler``;
* churn (``s_churn``): k-diffusion draws ``torch.randn_like(x)`` once per step (here answered from a list of
  seeded float64 draws); pfode gets the same draws through a ``noise_sampler`` keyed by sigma;
* ``sample_dpm_adaptive``: tolerances in place of step counts, sigma ends as tensors of the run's dtype
  (k-diffusion steps in their dtype, pfode in float64).

Reported: the max abs difference of the final samples (their max abs value is about 3), in float64 and in
float32 (float32 state, float32 sigmas, k-diffusion's usual inputs). For float32 the table also gives the floor
``|k-diffusion float32 - k-diffusion float64|`` (same sigmas, start and noise): what float32 round-off alone moves
the samples. ``dpmpp_sde`` asks its noise sampler at a mid noise level that each library rounds to float32 on its
own; a Brownian path is rough (``W`` moves ~``sqrt(ds)`` for a change ``ds``), so one float32 ulp of that level
shows in its float32 row.

``sample_dpm_fast`` is compared in ``tests/test_integrations_k_diffusion.py`` (its grid needs float64 as the
default dtype in k-diffusion).

Run: ``python benchmarks/agree_k_diffusion.py``; writes ``benchmarks/results/agree_k_diffusion.{json,png}``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.integrations import k_diffusion as kd  # noqa: E402
from pfode.paths import EDM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (5, 10, 25, 50)
RTOLS = (0.05, 1e-3, 1e-5)
BATCH, D = 64, 8

#: (label, sampler, options, noise): noise is None, "tree" (Brownian tree) or "churn" (replayed randn_like)
CASES = [
    ("euler", "sample_euler", {}, None),
    ("euler churn", "sample_euler", {"s_churn": 2.0}, "churn"),
    ("euler_ancestral", "sample_euler_ancestral", {}, "tree"),
    ("heun", "sample_heun", {}, None),
    ("heun churn", "sample_heun", {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 50.0}, "churn"),
    ("dpm_2", "sample_dpm_2", {}, None),
    ("dpm_2 churn", "sample_dpm_2", {"s_churn": 2.0}, "churn"),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}, "tree"),
    ("lms", "sample_lms", {}, None),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}, "tree"),
    ("dpmpp_sde", "sample_dpmpp_sde", {}, "tree"),
    ("dpmpp_2m", "sample_dpmpp_2m", {}, None),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}, "tree"),
    ("dpmpp_2m_sde heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}, "tree"),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}, "tree"),
]


def make_model():
    mix = GaussianMixture.random(D, 4, std_range=(0.1, 1.0), generator=torch.Generator().manual_seed(0))
    path = EDM()

    def model(x, sigma):
        return mix.x0_eps(x.double(), sigma.double(), path)[0].to(x.dtype)

    return model


def tree(K, sigmas, dtype):
    """A float64 Brownian tree (the same noise in every dtype: its draws are cast to ``dtype``)."""
    t = K.BrownianTreeNoiseSampler(torch.zeros(BATCH, D, dtype=torch.float64), sigmas[-2].double(),
                                   sigmas[0].double(), seed=7)
    return lambda a, b: t(a.double(), b.double()).to(dtype)


def run_case(K, model, fname, opts, noise, sigmas, x):
    """``(pfode result, k-diffusion result)`` with the same noise."""
    kw_k, kw_p = dict(opts), dict(opts)
    if noise == "tree":
        kw_k["noise_sampler"] = tree(K, sigmas, x.dtype)
        kw_p["noise_sampler"] = tree(K, sigmas, x.dtype)
    if noise == "churn":  # float64 draws in every dtype
        gen = torch.Generator().manual_seed(7)
        draws = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype) for _ in sigmas[:-1]]
        keyed = {float(s): z for s, z in zip(sigmas[:-1], draws)}
        it = iter(draws)
        randn_like = torch.randn_like
        try:  # k-diffusion's churn calls torch.randn_like(x) once per step, in step order
            torch.randn_like = lambda like, **kw: next(it)
            ref = getattr(K, fname)(model, x.clone(), sigmas, disable=True, **kw_k)
        finally:
            torch.randn_like = randn_like
        out = getattr(kd, fname)(model, x.clone(), sigmas, noise_sampler=lambda s, s_hat: keyed[float(s)], **kw_p)
        return out, ref
    ref = getattr(K, fname)(model, x.clone(), sigmas, disable=True, **kw_k)
    return getattr(kd, fname)(model, x.clone(), sigmas, **kw_p), ref


def run_adaptive(K, model, rtol, dtype, x):
    lo, hi = torch.tensor(0.002, dtype=dtype), torch.tensor(80.0, dtype=dtype)
    kw = {"rtol": rtol, "atol": rtol / 10, "return_info": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k-diffusion copy-constructs its sigma tensors
        ref, ref_info = K.sample_dpm_adaptive(model, x.clone(), lo, hi, disable=True, **kw)
    out, info = kd.sample_dpm_adaptive(model, x.clone(), lo, hi, **kw)
    return out, ref, info, ref_info


def maxabs(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def main(argv=None) -> int:
    torch.set_num_threads(1)
    t0 = time.time()
    K = _peers.k_sampling()
    model = make_model()
    x64 = torch.randn(BATCH, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    table: dict = {"float64": {}, "float32": {}, "float32 floor": {}}
    for label, fname, opts, noise in CASES:
        for key in table:
            table[key][label] = {}
        for n in STEPS:
            s64 = torch.cat([pfode.grid(EDM(), n, "karras"), torch.zeros(1, dtype=torch.float64)])
            out, ref = run_case(K, model, fname, opts, noise, s64, x64)
            table["float64"][label][n] = maxabs(out, ref)
            s32 = K.get_sigmas_karras(n, 0.002, 80.0)
            out, ref32 = run_case(K, model, fname, opts, noise, s32, x64.float())
            table["float32"][label][n] = maxabs(out, ref32)
            # the same k-diffusion run in float64 (float32-rounded sigmas and start): float32 round-off alone
            _, ref64 = run_case(K, model, fname, opts, noise, s32.double(), x64.float().double())
            table["float32 floor"][label][n] = maxabs(ref32, ref64)
    adaptive: dict = {}
    for key in table:
        table[key]["dpm_adaptive"] = {}
    for rtol in RTOLS:
        out, ref, info, ref_info = run_adaptive(K, model, rtol, torch.float64, x64)
        table["float64"]["dpm_adaptive"][rtol] = maxabs(out, ref)
        adaptive[f"float64 rtol={rtol}"] = {"pfode": info, "k-diffusion": ref_info}
        out, ref32, info, ref_info = run_adaptive(K, model, rtol, torch.float32, x64.float())
        table["float32"]["dpm_adaptive"][rtol] = maxabs(out, ref32)
        adaptive[f"float32 rtol={rtol}"] = {"pfode": info, "k-diffusion": ref_info}
        _, ref64, _, _ = run_adaptive(K, model, rtol, torch.float64, x64.float().double())
        table["float32 floor"]["dpm_adaptive"][rtol] = maxabs(ref32, ref64)
    elapsed = time.time() - t0

    print(f"max |pfode - k-diffusion| of the final samples (batch {BATCH}, d {D}, |x| <= ~3); columns: steps")
    print("(dpm_adaptive: rtol; atol = rtol/10)\n")
    head = "".join(f"{n:>10}" for n in STEPS)
    print(f"{'sampler':22s}  {'float64':>{10 * len(STEPS)}}  {'float32':>{10 * len(STEPS)}}  "
          f"{'float32 floor (k32 - k64)':>{10 * len(STEPS)}}")
    print(f"{'':22s}  {head}  {head}  {head}")
    for label in table["float64"]:
        cells = []
        for key in ("float64", "float32", "float32 floor"):
            vals = list(table[key][label].values())
            cells.append("".join(f"{v:10.1e}" for v in vals) + " " * 10 * (len(STEPS) - len(vals)))
        print(f"{label:22s}  " + "  ".join(cells))
    print("\ndpm_adaptive steps (attempts), nfe, accepted, rejected: pfode | k-diffusion")
    for k, v in adaptive.items():
        p, r = v["pfode"], v["k-diffusion"]
        print(f"  {k:22s} {p['steps']:4d} {p['nfe']:5d} {p['n_accept']:4d} {p['n_reject']:3d} | "
              f"{r['steps']:4d} {r['nfe']:5d} {r['n_accept']:4d} {r['n_reject']:3d}")
    print(f"\n[{elapsed:.0f} s]")

    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "description": "max abs difference of final samples, pfode's k-diffusion adapter vs k-diffusion, same model "
        "(exact GMM denoiser, d=8, 4 components) and noise (Brownian tree / replayed churn draws)",
        "k_diffusion_version": _k_version(),
        "batch": BATCH,
        "dim": D,
        "steps": list(STEPS),
        "dpm_adaptive_rtols": list(RTOLS),
        "max_abs_diff": {k: {s: {str(n): v for n, v in row.items()} for s, row in t.items()} for k, t in table.items()},
        "dpm_adaptive_info": adaptive,
        "seconds": elapsed,
    }
    (RESULTS / "agree_k_diffusion.json").write_text(json.dumps(data, indent=1))
    plot(table, RESULTS / "agree_k_diffusion.png")
    print(f"wrote {RESULTS / 'agree_k_diffusion.json'} and .png")
    return 0


def _k_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k-diffusion")
    except PackageNotFoundError:
        return "unknown"


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(table["float64"])
    cols = [f"{n}" for n in STEPS]
    fig, axes = plt.subplots(1, 3, figsize=(15, 6.5), sharey=True)
    for ax, key in zip(axes, ("float64", "float32", "float32 floor")):
        rows = [list(table[key][lab].values()) for lab in labels]
        m = np.array([r + [np.nan] * (len(cols) - len(r)) for r in rows], dtype=float)
        img = ax.imshow(np.log10(np.maximum(m, 1e-17)), vmin=-16, vmax=-2, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_xlabel("steps (dpm_adaptive: rtol " + ", ".join(f"{r:g}" for r in RTOLS) + ")")
        ax.set_title({"float32 floor": "float32 floor: |k32 - k64|"}.get(key, f"|pfode - k-diffusion|, {key}"))
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.0e}", ha="center", va="center", fontsize=7, color="w")
    axes[0].set_yticks(range(len(labels)), labels)
    fig.colorbar(img, ax=axes, label="log10 max abs difference", shrink=0.8)
    fig.suptitle("pfode's k-diffusion samplers vs k-diffusion: same model, same noise (final samples, |x| ~ 3)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
