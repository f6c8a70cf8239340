"""``pfode invert``: data -> noise -> data along the PF-ODE, and the round-trip error."""

from __future__ import annotations

import time

from .common import (
    UsageError,
    check_output,
    check_solver,
    check_spacing,
    data_options,
    load_data,
    model_options,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_model,
    save_npz,
    say,
)
from .progress import NetCalls, Progress

HELP = "map data to noise and back along the PF-ODE; print the round-trip error"


def add_arguments(p):
    model_options(p)
    data_options(p, 16)
    p.add_argument("--solver", default="ddim", help="deterministic solver (default ddim)")
    p.add_argument("--nfe", type=positive_int, default=10, help="evaluations of the inversion grid (default 10)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--method", choices=("plain", "bdia"), default="plain", help="plain or exact (BDIA) inversion")
    p.add_argument("--gamma", type=positive_float, default=1.0, help="BDIA gamma in (0, 1]")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument(
        "--out", default=None, help="data, latents and reconstructions as .npz (a missing folder is created)"
    )
    p.add_argument("--force", action="store_true")


def run(args) -> int:
    import torch

    from ..invert import round_trip

    check_spacing(args.spacing)
    plain = args.method == "plain"
    solver = check_solver(args.solver, args.nfe if plain else None, denoise=False, deterministic=True, fixed=True)
    if not plain and solver.multistep:
        raise UsageError(f"--method bdia needs a single-step solver (ddim, dpm++2s, heun, ...), not {args.solver!r}")
    out = check_output(args.out, args.force, (".npz",)) if args.out else None
    m = resolve_model(args.model, args.path, dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    x, label = load_data(m, args)
    # progress in network evaluations: a plain round trip spends --nfe each way on the same grid
    bar = Progress("invert", 2 * args.nfe if plain else None, "NFE", quiet=args.quiet)
    net = getattr(m.denoiser, "net", None)
    tick = NetCalls(bar).attach(net) if hasattr(net, "register_forward_hook") and not bar.quiet else None
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), bar:
            rt = round_trip(
                m.denoiser, x, nfe=args.nfe, solver=args.solver, spacing=args.spacing, method=args.method,
                gamma=args.gamma,
            )  # fmt: skip
    finally:
        if tick is not None:
            tick.detach()
    dt = time.perf_counter() - t0
    say(f"model {m.name}; data: {label}; {args.method} inversion with {args.solver}, {args.spacing} grid")
    say(
        f"round trip (data -> noise -> data, {rt.nfe} NFE in all): max |error| = {rt.max_abs_err:.3e}, "
        f"relative error = {rt.rel_err:.3e}; latent std {float(rt.x_T.std()):.3f}; {dt:.2f} s"
    )
    if out is not None:
        save_npz(out, {"x0": x, "x_T": rt.x_T, "x_rec": rt.x_rec})
        say(f"data, latents and reconstructions -> {out}")
    return 0
