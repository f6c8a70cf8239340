"""``pfode sample``: an image grid, a 2-D scatter plot or trajectories, or an ``.npz`` of raw samples."""

from __future__ import annotations

import time

from .common import (
    CLIError,
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
    p.add_argument("--solver", default=None, help="solver name (pfode info lists them; default dpm++2m)")
    p.add_argument("--nfe", type=positive_int, default=None, help="network evaluations (default 10)")
    p.add_argument("--spacing", default=None, help="time grid: logsnr, uniform, karras, quadratic (default logsnr)")
    p.add_argument("--recipe", default=None, help="a tuned recipe .json (pfode tune); it fixes solver, NFE and times")
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
    recipe = None
    if args.recipe is not None:
        given = [f"--{k}" for k in ("solver", "nfe", "spacing") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--recipe fixes the solver, NFE and times; do not also give {', '.join(given)}")
        recipe = pfode.Recipe.load(args.recipe)
    args.nfe = 10 if args.nfe is None else args.nfe
    args.solver = args.solver or "dpm++2m"
    spacing = check_spacing(args.spacing or "logsnr")
    solver = check_solver(args.solver, args.nfe)
    m = resolve_model(args.model, args.path, device=args.device)
    if recipe is not None:
        recipe.check(m.denoiser.path)
        if tuple(m.data_shape) != recipe.shape:
            raise CLIError(
                f"the recipe was tuned for samples of shape {list(recipe.shape)}, {m.name} makes {list(m.data_shape)}"
            )
    if args.trajectories and (m.is_image or out.suffix == ".npz"):
        raise UsageError("--trajectories draws 2-D trajectories: it needs a vector model and a .png output")
    n = args.n or (64 if m.is_image else 1000)
    gen = torch.Generator().manual_seed(args.seed)
    path = m.denoiser.path
    z = torch.randn((n, *m.data_shape), generator=gen, dtype=m.dtype)
    t_start = recipe.t_start if recipe is not None else path.t_max
    x_T = (float(path.sigma(t_start)) * z).to(args.device)
    t0 = time.perf_counter()
    kw = dict(return_info=True, return_trajectory=bool(args.trajectories))
    if solver.stochastic:
        kw["generator"] = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        if recipe is not None:
            res = pfode.sample(m.denoiser, x_T, recipe, **kw)
        elif solver.adaptive:
            res = pfode.sample(m.denoiser, x_T, pfode.grid(path, 1), solver, **kw)
        else:
            res = pfode.sample(m.denoiser, x_T, solver=solver, nfe=args.nfe, spacing=spacing, **kw)
    dt = time.perf_counter() - t0
    x = res.x.cpu()
    label = f"recipe {args.recipe}" if recipe is not None else args.solver
    title = f"{m.name}: {label}, {res.nfe} NFE, {'tuned' if recipe is not None else spacing} grid, seed {args.seed}"
    if out.suffix == ".npz":
        meta = dict(model=m.name, solver=label, nfe=res.nfe, spacing=spacing, seed=args.seed)
        save_npz(out, {"samples": x, "noise": z, **{k: np.asarray(v) for k, v in meta.items()}})
    elif m.is_image:
        plots.sample_grid(x, out, title)
    elif args.trajectories:
        plots.trajectories_2d(torch.stack([s.cpu() for s in res.trajectory]), res.times, out, title)
    else:
        plots.scatter_2d(x, out, title, reference=reference(m, min(2000, max(n, 500))))
    say(f"{n} samples from {m.name} with {label} ({res.nfe} NFE) in {dt:.2f} s -> {out}")
    return 0
