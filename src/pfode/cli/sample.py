"""``pfode sample``: an image grid, a 2-D scatter plot or trajectories, or an ``.npz`` of raw samples."""

from __future__ import annotations

import time

from .common import (
    DTYPES,
    CLIError,
    UsageError,
    check_output,
    check_solver,
    check_spacing,
    make_folder,
    model_options,
    nonneg_int,
    positive_int,
    reference,
    resolve_model,
    save_npz,
    say,
)
from .progress import Progress, SampleProgress

HELP = "draw samples: an image grid, a 2-D scatter plot or an .npz of raw samples"


def add_arguments(p):
    model_options(p)
    p.add_argument("--solver", default=None, help="solver name (pfode info lists them; default dpm++2m)")
    p.add_argument("--nfe", type=positive_int, default=None, help="network evaluations (default 10)")
    p.add_argument("--spacing", default=None, help="time grid: logsnr, uniform, karras, quadratic (default logsnr)")
    p.add_argument("--recipe", default=None, help="a tuned recipe .json (pfode tune); it fixes solver, NFE and times")
    p.add_argument(
        "--skip",
        choices=("sada",),
        default=None,
        help="skip network evaluations where SADA's stability criterion holds (skipped calls are not counted)",
    )
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="DATA",
        help="transport DATA (toy2d:KIND, digits or a .npy/.npz) with a data-to-data interpolant model (--model: its "
        "run folder or checkpoint); --solver euler, heun (default) or rk4",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=0.0,
        help="with --from: the interpolant SDE's diffusion eps >= 0 (0, the default, is the ODE; needs a score head)",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="a consistency trajectory model (CTM): gamma-sampling in [0, 1] (default 0: long deterministic jumps)",
    )
    p.add_argument("--n", type=positive_int, default=None, help="samples (default 64 images or 1000 points)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="samples per network batch (default 256); under torchrun each rank takes whole batches",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="sample i's noise depends on the seed and i only")
    p.add_argument(
        "--out", default="samples.png", help="output .png or .npz (default samples.png; a missing folder is created)"
    )
    p.add_argument("--trajectories", action="store_true", help="2-D models: draw trajectories coloured by time")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the network and the samples (default float32; analytic targets always use float64)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")


def run(args) -> int:
    from .. import distributed

    # under torchrun: one process group for the command (gloo on the CPU, nccl on CUDA); otherwise nothing
    with distributed.process_group(args.device) as ctx:
        args.device = str(ctx.device)  # "cuda" -> "cuda:LOCAL_RANK"
        return _run(args)


def _run(args) -> int:
    import numpy as np
    import torch

    import pfode

    from .. import distributed, plots

    out = check_output(args.out, args.force, (".png", ".npz"))
    if args.source is not None:
        return _transport(args, out)
    if args.eps != 0.0:
        raise UsageError("--eps applies to --from DATA (an interpolant model's SDE)")
    recipe = None
    if args.recipe is not None:
        given = [f"--{k}" for k in ("solver", "nfe", "spacing") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--recipe fixes the solver, NFE and times; do not also give {', '.join(given)}")
        recipe = pfode.Recipe.load(args.recipe)
    user = {k: getattr(args, k) for k in ("solver", "nfe", "spacing")}  # before the defaults (a CTM has others)
    args.nfe = 10 if args.nfe is None else args.nfe
    args.solver = args.solver or "dpm++2m"
    spacing = check_spacing(args.spacing or "logsnr")
    m = resolve_model(args.model, args.path, dtype=getattr(torch, args.dtype), device=args.device)
    from ..nets.ctm import CTMModel

    ctm = getattr(m.denoiser, "net", None)
    if isinstance(ctm, CTMModel):
        return _ctm(args, out, m, ctm, user)
    if args.gamma is not None:
        raise UsageError("--gamma applies to a consistency trajectory model (CTM)")
    solver = check_solver(args.solver, args.nfe)
    if recipe is not None:
        recipe.check(m.denoiser.path)
        if tuple(m.data_shape) != recipe.shape:
            raise CLIError(
                f"the recipe was tuned for samples of shape {list(recipe.shape)}, {m.name} makes {list(m.data_shape)}"
            )
    if args.trajectories and (m.is_image or out.suffix == ".npz"):
        raise UsageError("--trajectories draws 2-D trajectories: it needs a vector model and a .png output")
    n = args.n or (64 if m.is_image else 1000)
    path = m.denoiser.path
    if recipe is not None:
        grid, how = recipe, {}
    elif solver.adaptive:
        grid, how = pfode.grid(path, 1), {"solver": solver}
    else:
        grid, how = None, {"solver": solver, "nfe": args.nfe, "spacing": spacing}
    if args.skip is not None:
        if recipe is not None or solver.adaptive:
            raise UsageError(f"--skip {args.skip} needs a fixed-step solver without --recipe")
        how["skip"] = args.skip
    sampler = pfode.Sampler(m.denoiser, grid, **how)  # what one batch costs: its steps (the library's cached plan)
    n_batches = len(distributed.batches(n, args.batch_size))  # this rank's batches
    if sampler.adaptive:
        lam = [float(path.lam(float(sampler.grid[i]))) for i in (0, -1)]
        bar = Progress("sample", n_batches, quiet=args.quiet)  # in batches, each by its log-SNR span covered
        tick = SampleProgress(bar, None, lam[0], lam[1], path)
    else:
        bar = Progress("sample", n_batches * len(sampler.plan), "steps", quiet=args.quiet)
        tick = SampleProgress(bar, len(sampler.plan))
    t0 = time.perf_counter()
    with torch.no_grad(), bar:  # per-sample seeded noise in whole batches, one shard per torchrun rank, all on rank 0
        res = distributed.sample(
            m.denoiser,
            n,
            m.data_shape,
            grid,
            seed=args.seed,
            batch_size=args.batch_size,
            dtype=m.dtype,
            device=args.device,
            return_info=True,
            return_trajectory=bool(args.trajectories),
            dst=0,
            callback=tick,
            **how,
        )
    dt = time.perf_counter() - t0
    if res is None:  # another rank than 0: rank 0 writes the output
        return 0
    x = res.x.cpu()
    if x.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16; plots want float32 either way
        x = x.float()
    make_folder(out)
    label = f"recipe {args.recipe}" if recipe is not None else args.solver
    title = f"{m.name}: {label}, {res.nfe} NFE, {'tuned' if recipe is not None else spacing} grid, seed {args.seed}"
    if out.suffix == ".npz":
        meta = dict(model=m.name, solver=label, nfe=res.nfe, spacing=spacing, seed=args.seed)
        z = distributed.noise(n, m.data_shape, args.seed, dtype=m.dtype).to(x.dtype)  # x_T = sigma * z
        save_npz(out, {"samples": x, "noise": z, **{k: np.asarray(v) for k, v in meta.items()}})
    elif m.is_image:
        plots.sample_grid(x, out, title)
    elif args.trajectories:
        plots.trajectories_2d(torch.stack([s.cpu() for s in res.trajectory]), res.times, out, title)
    else:
        plots.scatter_2d(x, out, title, reference=reference(m, min(2000, max(n, 500))))
    say(f"{n} samples from {m.name} with {label} ({res.nfe} NFE) in {dt:.2f} s -> {out}")
    return 0


def _source(spec: str, n: int, seed: int):
    """``n`` source points from ``--from``: ``toy2d:KIND``, ``digits`` or a ``.npy``/``.npz`` file."""
    from pathlib import Path as FsPath

    import torch

    from .. import data as D

    g = torch.Generator().manual_seed(seed)
    if spec.startswith("toy2d:"):
        kind = spec.split(":", 1)[1]
        if kind not in D.TOYS:
            raise UsageError(f"--from {spec}: unknown toy {kind!r}; available: {', '.join(D.TOYS)}")
        return D.toy2d(kind, n, generator=g)
    if spec == "digits":
        x = D.digits()
    else:
        p = FsPath(spec)
        if p.suffix.lower() not in (".npy", ".npz"):
            raise UsageError(f"--from {spec}: give toy2d:KIND, digits or a .npy/.npz file")
        if not p.exists():
            raise CLIError(f"--from {spec}: no such file")
        x = D.load_array(p)
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    return x[idx].float()


def _transport(args, out) -> int:
    """``pfode sample --from DATA``: carry DATA to the model's data distribution along a stochastic interpolant."""
    import torch

    from .. import interpolants, plots
    from ..checkpoint import CheckpointError

    if args.recipe is not None or args.skip is not None or args.trajectories:
        raise UsageError("--from DATA takes --solver, --nfe, --eps, --n, --seed (not --recipe, --skip, --trajectories)")
    if args.model.startswith(("builtin:", "analytic:")):
        raise UsageError("--from DATA needs a data-to-data interpolant model: its run folder or checkpoint as --model")
    if args.eps < 0 or args.eps != args.eps:
        raise UsageError(f"--eps {args.eps}: must be >= 0")
    solver = args.solver or "heun"
    if solver not in interpolants.SOLVERS:
        raise UsageError(f"--solver {solver}: an interpolant transports with {', '.join(interpolants.SOLVERS)}")
    try:
        model = interpolants.load_model(args.model, device=args.device)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    nfe = args.nfe or 8 * {"euler": 1, "heun": 2, "rk4": 4}[solver]
    src = _source(args.source, args.n or 1000, args.seed).to(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = interpolants.transport(
            model, src, nfe=nfe, solver=solver, eps=args.eps, generator=torch.Generator().manual_seed(args.seed)
        )
    dt = time.perf_counter() - t0
    x, src = x.cpu(), src.cpu()
    make_folder(out)
    how = f"{solver}, {nfe} NFE" + (f", eps {args.eps:g}" if args.eps else "")
    if out.suffix == ".npz":
        save_npz(out, {"samples": x, "source": src})
    elif x.dim() == 4:
        plots.sample_grid(x, out, f"{args.source} transported ({how})")
    else:
        plots.scatter_2d(x, out, f"{args.source} transported ({how})", reference=src, labels=("transported", "source"))
    say(f"{x.shape[0]} points of {args.source} transported with {how} in {dt:.2f} s -> {out}")
    return 0


def _ctm(args, out, m, ctm, user: dict) -> int:
    """``pfode sample`` with a consistency trajectory model: ``--nfe`` jumps (default 1), gamma-sampling."""
    import torch

    from .. import distributed, plots
    from ..nets.ctm import ctm_sample

    given = [f"--{k}" for k in ("recipe", "skip") if getattr(args, k) is not None]
    given += [f"--{k}" for k in ("solver", "spacing") if user[k] is not None]
    if given or args.trajectories:
        raise UsageError(
            f"a CTM model samples by jumps (--nfe, --gamma); {', '.join(given) or '--trajectories'} does not apply"
        )
    gamma = 0.0 if args.gamma is None else args.gamma
    if not 0.0 <= gamma <= 1.0:
        raise UsageError(f"--gamma {gamma}: must be in [0, 1]")
    jumps = user["nfe"] or 1
    n = args.n or (64 if m.is_image else 1000)
    path = m.denoiser.path
    z = distributed.noise(n, m.data_shape, args.seed, dtype=m.dtype).to(args.device)
    x_T = float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64))) * z
    t0 = time.perf_counter()
    with torch.no_grad():
        x = (
            ctm_sample(
                ctm, x_T, nfe=jumps, gamma=gamma, generator=torch.Generator(device=args.device).manual_seed(args.seed)
            )
            .cpu()
            .float()
        )
    dt = time.perf_counter() - t0
    make_folder(out)
    title = f"{m.name}: CTM, {jumps} jump{'s' if jumps > 1 else ''}, gamma {gamma:g}, seed {args.seed}"
    if out.suffix == ".npz":
        save_npz(out, {"samples": x, "noise": z.cpu()})
    elif m.is_image:
        plots.sample_grid(x, out, title)
    else:
        plots.scatter_2d(x, out, title, reference=reference(m, min(2000, max(n, 500))))
    say(f"{n} samples from {m.name} with CTM ({jumps} NFE, gamma {gamma:g}) in {dt:.2f} s -> {out}")
    return 0
