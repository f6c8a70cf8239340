"""``pfode bench``: error against NFE of every fixed-NFE ODE solver, as a table, a PNG and optionally JSON."""

from __future__ import annotations

import math
import time

from .common import (
    check_output,
    check_solver,
    check_spacing,
    int_list,
    model_options,
    nonneg_int,
    positive_int,
    resolve_model,
    say,
)

HELP = "error vs NFE of every ODE solver on an analytic target or a model: table + PNG"


def add_arguments(p):
    model_options(p, default="analytic:gmm:16")
    p.add_argument("--nfe", type=int_list, default=[5, 7, 10, 13, 21], help="comma-separated NFEs (default 5,7,...,21)")
    p.add_argument("--solvers", default=None, help="comma-separated solvers (default: every fixed-NFE ODE solver)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--n", type=positive_int, default=128, help="samples (default 128)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default="bench.png", help="plot (default bench.png)")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--force", action="store_true")


def _rows(m, nfes, names, spacing, n, seed):
    import torch

    import pfode

    path = m.denoiser.path
    gen = torch.Generator().manual_seed(seed)
    x_T = float(path.sigma(path.t_max)) * torch.randn((n, *m.data_shape), generator=gen, dtype=torch.float64)
    tol = 1e-9 if m.target is not None else 1e-7
    with torch.no_grad():
        ref = pfode.sample(m.denoiser, x_T, pfode.grid(path, 1), pfode.solvers.get("dopri5", rtol=tol, atol=tol))
        results: dict[str, dict[int, float | None]] = {}
        for name in names:
            row: dict[int, float | None] = {}
            s = pfode.solvers.get(name)
            for k in nfes:
                try:
                    s.for_nfe(k, True)
                except ValueError:
                    row[k] = None
                    continue
                x = pfode.sample(m.denoiser, x_T, solver=s, nfe=k, spacing=spacing, check_finite=False)
                err = float((x - ref).reshape(n, -1).pow(2).mean(1).sqrt().mean())
                row[k] = err if math.isfinite(err) else float("inf")
            results[name] = row
    return results, tol


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
    m = resolve_model(args.model, args.path, dtype=torch.float64)
    t0 = time.perf_counter()
    results, tol = _rows(m, args.nfe, names, spacing, args.n, args.seed)
    dt = time.perf_counter() - t0
    say(f"{m.name}: mean per-sample RMSE to the exact PF-ODE endpoint (dopri5, tol {tol:g}), {args.n} samples,")
    say(f"{spacing} grid, final denoising step counted in the NFE\n")
    say(f"{'solver':<12}" + "".join(f"{'NFE ' + str(k):>11}" for k in args.nfe))
    for name, row in results.items():
        say(f"{name:<12}" + "".join(f"{'-' if row[k] is None else format(row[k], '.2e'):>11}" for k in args.nfe))
    skipped = [s for s in solvers.available() if s not in every]
    say(
        f"\n('-': the solver cannot spend exactly that NFE; not compared: {', '.join(skipped)} -- stochastic or "
        f"adaptive) [{dt:.1f} s]"
    )
    plots.error_vs_nfe(
        {k: {n: v for n, v in r.items() if v is not None} for k, r in results.items()},
        out,
        title=f"{m.name}: error vs NFE ({spacing} grid, {args.n} samples)",
        ylabel="mean RMSE to the exact ODE endpoint",
    )
    say(f"plot -> {out}")
    if js is not None:
        payload = {
            "model": m.name,
            "spacing": spacing,
            "n": args.n,
            "seed": args.seed,
            "reference": {"solver": "dopri5", "rtol": tol, "atol": tol},
            "nfe": args.nfe,
            "rmse": {k: {str(n): v for n, v in r.items()} for k, r in results.items()},
        }
        atomic_write_json(js, payload)
        say(f"table -> {js}")
    return 0
