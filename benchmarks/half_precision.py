"""float16 / bfloat16 sampling of the shipped models: non-finite values and error against the float32 result.

The anchor is diffusers issue #1484 ("fp16 does not work with euler_a scheduler": black images, i.e. NaN, from
Stable Diffusion in float16). Here every shipped model (``builtin:digits``, a UNet with eps-prediction on the cosine
VP path; ``builtin:moons``, an MLP with flow matching on the Linear path) is loaded with
``pfode.models.load(..., dtype=...)`` and sampled from the same starting noise in float64, float32, float16 and
bfloat16, with several solvers (Euler and Euler-ancestral as in the issue, DDIM, DPM-Solver++(2M), UniPC, Heun, and
DPM-Solver-3 in noise-prediction form) at several budgets. For each run:

* ``nonfinite_last``: NaN/inf entries of the result (the state after the last step, the denoising step to zero
  noise); ``nonfinite_any``: NaN/inf entries over every state of the trajectory;
* ``peak_abs``: the largest ``|x|`` over the trajectory (float16's largest finite value is 65504);
* ``err_vs_f32``: ``||x - x_f32|| / ||x_f32||``, the relative error against the float32 result;
* ``amp``: the relative error against the float64 result in units of the dtype's machine epsilon (the rounding
  amplification of network and solver together; float32 has one too, printed alongside).

Stochastic solvers get the same noise streams in every dtype (``generator`` seeds per-sample streams drawn in
float32 and rounded to the state's dtype). One thread, CPU: float16/bfloat16 convolutions take PyTorch's slow CPU
fallback, so the digits batch is small.

Run: ``python benchmarks/half_precision.py [--quick]``; writes ``benchmarks/results/half_precision[_quick].{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pfode  # noqa: E402
from pfode import models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SOLVERS = ("euler", "euler-ancestral", "ddim", "dpm++2m", "unipc", "heun", "dpm3")


def _nfe(solver: str, want: int) -> int:
    """The smallest budget of at least ``want`` evaluations ``solver`` spends exactly (with the zero-noise step)."""
    s = pfode.solvers.get(solver)
    for nfe in range(want, want + 4 * s.evals_per_step + 2):
        try:
            s.for_nfe(nfe, True)
            return nfe
        except ValueError:
            continue
    raise ValueError(f"no budget near {want} for {solver}")


def run_model(name: str, n: int, solvers, budgets) -> list[dict]:
    loaded = {k: models.load(f"builtin:{name}", dtype=dt) for k, dt in DTYPES.items()}
    path = loaded["float32"].denoiser.path
    z = torch.randn(n, *loaded["float32"].data_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x64 = float(path.sigma(path.t_max)) * z
    rows = []
    for solver in solvers:
        for want in budgets:
            nfe = _nfe(solver, want)
            out = {}
            for k, dt in DTYPES.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    res = pfode.sample(
                        loaded[k].denoiser,
                        x64.to(dt),
                        nfe=nfe,
                        solver=solver,
                        return_trajectory=True,
                        check_finite=False,
                        generator=torch.Generator().manual_seed(1),
                    )
                out[k] = (res, time.perf_counter() - t0)
            ref64, ref32 = out["float64"][0].x, out["float32"][0].x.double()
            for k in ("float32", "float16", "bfloat16"):
                res, secs = out[k]
                x = res.x.double()
                finite = torch.isfinite(x)
                err32 = float((x - ref32).norm() / ref32.norm()) if k != "float32" else 0.0
                err64 = float((x - ref64).norm() / ref64.norm())
                rows.append(
                    {
                        "model": name,
                        "solver": solver,
                        "nfe": nfe,
                        "dtype": k,
                        "state_dtype": str(res.x.dtype).removeprefix("torch."),
                        "nonfinite_last": int((~finite).sum()),
                        "nonfinite_any": int(sum(int((~torch.isfinite(s)).sum()) for s in res.trajectory)),
                        "peak_abs": float(max(s.double().abs().max() for s in res.trajectory)),
                        "err_vs_f32": err32,
                        "err_vs_f64": err64,
                        "amp": err64 / torch.finfo(DTYPES[k]).eps,
                        "seconds": secs,
                    }
                )
    return rows


def table(rows) -> str:
    head = (
        f"{'model':7s} {'solver':16s} {'nfe':>3s} | {'f32 amp':>7s} | {'f16 NaN':>7s} {'err vs f32':>10s} {'amp':>6s} "
        f"| {'bf16 NaN':>8s} {'err vs f32':>10s} {'amp':>6s} | {'peak |x|':>8s}"
    )
    lines = [head, "-" * len(head)]
    by = {(r["model"], r["solver"], r["nfe"], r["dtype"]): r for r in rows}
    for m, s, nfe in dict.fromkeys((r["model"], r["solver"], r["nfe"]) for r in rows):
        f32, f16, b16 = (by[m, s, nfe, k] for k in ("float32", "float16", "bfloat16"))

        def nan(r):
            return f"{r['nonfinite_last']}/{r['nonfinite_any']}"

        peak = max(f16["peak_abs"], b16["peak_abs"])
        lines.append(
            f"{m:7s} {s:16s} {nfe:3d} | {f32['amp']:7.1f} | {nan(f16):>7s} {f16['err_vs_f32']:10.2e} {f16['amp']:6.1f} "
            f"| {nan(b16):>8s} {b16['err_vs_f32']:10.2e} {b16['amp']:6.1f} | {peak:8.1f}"
        )
    return "\n".join(lines)


def plot(path_png, rows, title_suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes[0], names):
        sub = [r for r in rows if r["model"] == name]
        solvers = list(dict.fromkeys(r["solver"] for r in sub))
        for i, s in enumerate(solvers):
            for k, style in (("float16", "-o"), ("bfloat16", "--s")):
                pts = sorted(
                    (r["nfe"], max(r["err_vs_f32"], 1e-8)) for r in sub if r["solver"] == s and r["dtype"] == k
                )
                ax.plot(*zip(*pts), style, color=colors[i % len(colors)], label=f"{s} {k}", ms=4)
        for k, eps in (("float16", torch.finfo(torch.float16).eps), ("bfloat16", torch.finfo(torch.bfloat16).eps)):
            ax.axhline(eps, color="0.6", lw=0.8, ls=":" if k == "float16" else "-.")
            ax.text(ax.get_xlim()[0], eps, f" eps {k}", va="bottom", fontsize=7, color="0.4")
        bad = sum(r["nonfinite_any"] for r in sub if r["dtype"] in ("float16", "bfloat16"))
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_ylabel("relative error vs the float32 result")
        ax.set_title(f"builtin:{name}: non-finite values in half precision: {bad}{title_suffix}")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("pfode in float16 (solid) and bfloat16 (dashed): every state finite, error vs float32", fontsize=10)
    fig.tight_layout()
    fig.savefig(path_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer solvers and budgets (a smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.quick:
        solvers, budgets, n = ("euler", "dpm++2m"), (10,), {"digits": 2, "moons": 64}
    else:
        solvers, budgets, n = SOLVERS, (10, 20), {"digits": 4, "moons": 512}
    rows = []
    for name in ("digits", "moons"):
        rows += run_model(name, n[name], solvers, budgets)
    elapsed = time.perf_counter() - t0
    print(table(rows))
    half = [r for r in rows if r["dtype"] in ("float16", "bfloat16")]
    kept = all(r["state_dtype"] == r["dtype"] for r in rows)
    print(
        f"\nnon-finite entries in half precision: last step {sum(r['nonfinite_last'] for r in half)}, any step "
        f"{sum(r['nonfinite_any'] for r in half)} ({len(half)} runs); state kept in the model's dtype: {kept}; "
        f"{elapsed:.0f} s"
    )
    tag = "_quick" if args.quick else ""
    RESULTS.mkdir(exist_ok=True)
    data = {
        "benchmark": "half_precision",
        "setup": {
            "models": {k: f"builtin:{k}, {v} samples, x_T = sigma(t_max) * N(0, I) in float64" for k, v in n.items()},
            "solvers": list(solvers),
            "budgets": "smallest exact budget >= " + ", ".join(map(str, budgets)),
            "reference": "the float32 result (err_vs_f32) and the float64 result (err_vs_f64, amp = err_vs_f64 / eps)",
            "anchor": "diffusers issue #1484, 'fp16 does not work with euler_a scheduler' (NaN / black images)",
            "device": "cpu",
            "threads": 1,
            "load_average_at_end": list(os.getloadavg()),
            "versions": {"torch": torch.__version__, "pfode": pfode.__version__},
        },
        "results": rows,
        "summary": {
            "nonfinite_last": sum(r["nonfinite_last"] for r in half),
            "nonfinite_any": sum(r["nonfinite_any"] for r in half),
            "runs": len(half),
            "state_dtype_kept": kept,
            "max_err_vs_f32": {
                k: max((r["err_vs_f32"] for r in half if r["dtype"] == k), default=math.nan)
                for k in ("float16", "bfloat16")
            },
        },
        "seconds": elapsed,
    }
    (RESULTS / f"half_precision{tag}.json").write_text(json.dumps(data, indent=1))
    plot(RESULTS / f"half_precision{tag}.png", rows, " (quick)" if args.quick else "")
    print(f"wrote {RESULTS / f'half_precision{tag}.json'} and .png")


if __name__ == "__main__":
    main()
