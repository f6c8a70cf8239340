"""``pfode sample``: an image grid, a 2-D scatter plot or trajectories, or an ``.npz`` of raw samples."""

from __future__ import annotations

import time

from .common import (
    UsageError,
    check_output,
    check_solver,
    check_spacing,
    model_options,
    nonneg_int,
    positive_int,
    reference,
    resolve_model,
    save_npz,
    say,
)

HELP = "draw samples: an image grid, a 2-D scatter plot or an .npz of raw samples"


def add_arguments(p):
    model_options(p)
    p.add_argument("--solver", default="dpm++2m", help="solver name (pfode info lists them; default dpm++2m)")
    p.add_argument("--nfe", type=positive_int, default=10, help="network evaluations (default 10)")
    p.add_argument("--spacing", default="logsnr", help="time grid: logsnr, uniform, karras, quadratic")
    p.add_argument("--n", type=positive_int, default=None, help="samples (default 64 images or 1000 points)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default="samples.png", help="output .png or .npz (default samples.png)")
    p.add_argument("--trajectories", action="store_true", help="2-D models: draw trajectories coloured by time")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")


def run(args) -> int:
    import numpy as np
    import torch

    import pfode

    from .. import plots

    out = check_output(args.out, args.force, (".png", ".npz"))
    spacing = check_spacing(args.spacing)
    solver = check_solver(args.solver, args.nfe)
    m = resolve_model(args.model, args.path, device=args.device)
    if args.trajectories and (m.is_image or out.suffix == ".npz"):
        raise UsageError("--trajectories draws 2-D trajectories: it needs a vector model and a .png output")
    n = args.n or (64 if m.is_image else 1000)
    gen = torch.Generator().manual_seed(args.seed)
    path = m.denoiser.path
    z = torch.randn((n, *m.data_shape), generator=gen, dtype=m.dtype)
    x_T = (float(path.sigma(path.t_max)) * z).to(args.device)
    t0 = time.perf_counter()
    kw = dict(return_info=True, return_trajectory=bool(args.trajectories))
    if solver.stochastic:
        kw["generator"] = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        if solver.adaptive:
            res = pfode.sample(m.denoiser, x_T, pfode.grid(path, 1), solver, **kw)
        else:
            res = pfode.sample(m.denoiser, x_T, solver=solver, nfe=args.nfe, spacing=spacing, **kw)
    dt = time.perf_counter() - t0
    x = res.x.cpu()
    title = f"{m.name}: {args.solver}, {res.nfe} NFE, {spacing} grid, seed {args.seed}"
    if out.suffix == ".npz":
        meta = dict(model=m.name, solver=args.solver, nfe=res.nfe, spacing=spacing, seed=args.seed)
        save_npz(out, {"samples": x, "noise": z, **{k: np.asarray(v) for k, v in meta.items()}})
    elif m.is_image:
        plots.sample_grid(x, out, title)
    elif args.trajectories:
        plots.trajectories_2d(torch.stack([s.cpu() for s in res.trajectory]), res.times, out, title)
    else:
        plots.scatter_2d(x, out, title, reference=reference(m, min(2000, max(n, 500))))
    say(f"{n} samples from {m.name} with {args.solver} ({res.nfe} NFE) in {dt:.2f} s -> {out}")
    return 0
