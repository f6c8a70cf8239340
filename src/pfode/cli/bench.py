"""``pfode bench``: error against NFE of every fixed-NFE ODE solver, as a table, a PNG and optionally JSON.

The error is measured against the PF-ODE endpoint from ``dopri5`` at a tight tolerance. On an analytic target
that costs little (128 samples, tolerance 1e-9 by default); a network costs about a thousand times more per
evaluation, so its defaults are smaller (16 samples, float32, tolerance 1e-6) -- about a minute on one CPU core
for ``builtin:digits`` -- and ``--n``, ``--dtype`` and ``--reference-tol`` buy accuracy with time.
"""

from __future__ import annotations

import math
import time

from .common import (
    check_output,
    check_solver,
    check_spacing,
    int_list,
    make_folder,
    model_options,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_model,
    say,
)
from .progress import Progress, SampleProgress

HELP = "error vs NFE of every ODE solver on an analytic target or a model: table + PNG"
#: defaults (analytic target, network): samples, reference tolerance, dtype
DEFAULTS = {"n": (128, 16), "tol": (1e-9, 1e-6), "dtype": ("float64", "float32")}


def add_arguments(p):
    model_options(p, default="analytic:gmm:16")
    p.add_argument("--nfe", type=int_list, default=[5, 7, 10, 13, 21], help="comma-separated NFEs (default 5,7,...,21)")
    p.add_argument("--solvers", default=None, help="comma-separated solvers (default: every fixed-NFE ODE solver)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--n", type=positive_int, default=None, help="samples (default 128 analytic, 16 network)")
    p.add_argument(
        "--reference-tol",
        type=positive_float,
        default=None,
        metavar="TOL",
        help="rtol = atol of the dopri5 reference (default 1e-9 on analytic targets, 1e-6 on networks)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="dtype of the network and the states (default float64 on analytic targets, float32 on networks)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default="bench.png", help="plot (default bench.png; a missing folder is created)")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--force", action="store_true")


def _rows(m, nfes, names, spacing, n, seed, tol, quiet):
    import torch

    import pfode

    path = m.denoiser.path
    gen = torch.Generator().manual_seed(seed)
    x_T = float(path.sigma(path.t_max)) * torch.randn((n, *m.data_shape), generator=gen, dtype=torch.float64)
    x_T = x_T.to(m.dtype)
    grid = pfode.grid(path, 1)
    lam = [float(path.lam(float(grid[i]))) for i in (0, -1)]
    ref_solver = pfode.solvers.get("dopri5", rtol=tol, atol=tol)
    with torch.no_grad():
        with Progress("bench: reference (dopri5)", 1, quiet=quiet) as bar:
            ref = pfode.sample(
                m.denoiser, x_T, grid, ref_solver, return_info=True, callback=SampleProgress(bar, None, *lam, path)
            )
        runs = []  # (solver, NFE) pairs the solver can spend
        results: dict[str, dict[int, float | None]] = {}
        for name in names:
            s = pfode.solvers.get(name)
            results[name] = {}
            for k in nfes:
                try:
                    s.for_nfe(k, True)
                except ValueError:
                    results[name][k] = None
                    continue
                runs.append((name, s, k))
        with Progress("bench: solvers", sum(k for *_, k in runs), "NFE", quiet=quiet) as bar:
            for name, s, k in runs:
                x = pfode.sample(m.denoiser, x_T, solver=s, nfe=k, spacing=spacing, check_finite=False)
                err = float((x - ref.x).double().reshape(n, -1).pow(2).mean(1).sqrt().mean())
                results[name][k] = err if math.isfinite(err) else float("inf")
                bar.update(k)
    return results, ref.nfe


def run(args) -> int:
    import torch

    from .. import plots, solvers
    from ..io import atomic_write_json

    out = check_output(args.out, args.force, (".png",))
    js = check_output(args.json, args.force, (".json",), "--json") if args.json else None
    spacing = check_spacing(args.spacing)
    every = [d["name"] for d in solvers.describe() if not (d["stochastic"] or d["adaptive"])]
    names = [s.strip() for s in args.solvers.split(",") if s.strip()] if args.solvers else every
    for s in names:
        check_solver(s, deterministic=True, fixed=True)
    analytic = args.model.startswith("analytic:")
    pick = {k: v[0] if analytic else v[1] for k, v in DEFAULTS.items()}
    n = args.n or pick["n"]
    tol = args.reference_tol or pick["tol"]
    dtype = getattr(torch, args.dtype or pick["dtype"])
    m = resolve_model(args.model, args.path, dtype=dtype)
    m.dtype = dtype  # analytic targets too: the states' dtype
    t0 = time.perf_counter()
    results, ref_nfe = _rows(m, args.nfe, names, spacing, n, args.seed, tol, args.quiet)
    dt = time.perf_counter() - t0
    say(
        f"{m.name}: mean per-sample RMSE to the exact PF-ODE endpoint (dopri5, tol {tol:g}, {ref_nfe} NFE), "
        f"{n} samples in {str(dtype).replace('torch.', '')},"
    )
    say(f"{spacing} grid, final denoising step counted in the NFE\n")
    say(f"{'solver':<12}" + "".join(f"{'NFE ' + str(k):>11}" for k in args.nfe))
    for name, row in results.items():
        say(f"{name:<12}" + "".join(f"{'-' if row[k] is None else format(row[k], '.2e'):>11}" for k in args.nfe))
    skipped = [s for s in solvers.available() if s not in every]
    say(
        f"\n('-': the solver cannot spend exactly that NFE; not compared: {', '.join(skipped)} -- stochastic or "
        f"adaptive) [{dt:.1f} s]"
    )
    make_folder(out)
    plots.error_vs_nfe(
        {s: {k: v for k, v in r.items() if v is not None} for s, r in results.items()},
        out,
        title=f"{m.name}: error vs NFE ({spacing} grid, {n} samples)",
        ylabel="mean RMSE to the exact ODE endpoint",
    )
    say(f"plot -> {out}")
    if js is not None:
        payload = {
            "model": m.name,
            "spacing": spacing,
            "n": n,
            "seed": args.seed,
            "dtype": str(dtype).replace("torch.", ""),
            "reference": {"solver": "dopri5", "rtol": tol, "atol": tol, "nfe": ref_nfe},
            "nfe": args.nfe,
            "rmse": {s: {str(k): v for k, v in r.items()} for s, r in results.items()},
        }
        make_folder(js, "--json")
        atomic_write_json(js, payload)
        say(f"table -> {js}")
    return 0
