"""``pfode tune``: fit a few-step sampler (a recipe) to a model and write it as JSON."""

from __future__ import annotations

from .common import (
    CLIError,
    UsageError,
    check_output,
    make_folder,
    model_options,
    nonneg_int,
    positive_float,
    positive_int,
    reference,
    resolve_model,
    say,
)

HELP = "fit a few-step sampler (times, per-step rules, analytic skip) to a model; write recipe JSON"
PARTS = ("times", "solvers", "skip")


def add_arguments(p):
    model_options(p)
    p.add_argument(
        "--nfe", type=positive_int, default=5, help="network evaluations of the recipe, final step included (default 5)"
    )
    p.add_argument(
        "--out", default="recipe.json", help="output recipe .json (default recipe.json; a missing folder is created)"
    )
    p.add_argument("--n", type=positive_int, default=128, help="tuning-set noises (default 128)")
    p.add_argument("--held-out", type=positive_int, default=64, help="held-out noises (default 64)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--parts", default="times,solvers,skip", help="search parts, comma-separated: times, solvers, skip")
    p.add_argument(
        "--family", default="usf", help="step family: usf (per-step rules), dpm-v3, or auto (both, the better kept)"
    )
    p.add_argument(
        "--skip-data",
        default="model",
        choices=("model", "data"),
        help="moments of the analytic segment: the teacher's samples (model) or the model's training data",
    )
    p.add_argument("--teacher", default="dopri5", help="teacher solver (default dopri5)")
    p.add_argument("--teacher-nfe", type=positive_int, default=None, help="evaluations of a fixed-step teacher (200)")
    p.add_argument("--teacher-tol", type=positive_float, default=1e-5, help="dopri5 teacher tolerance (default 1e-5)")
    p.add_argument("--budget", type=positive_int, default=1500, help="most sampler runs the search spends")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")


def run(args) -> int:
    import pfode

    out = check_output(args.out, args.force, (".json",))
    parts = [v.strip() for v in args.parts.split(",") if v.strip()]
    bad = [v for v in parts if v not in PARTS]
    if bad or not parts:
        raise UsageError(f"--parts {args.parts!r}: choose from {', '.join(PARTS)}")
    if args.family not in ("usf", "dpm-v3", "auto"):
        raise UsageError(f"--family {args.family!r}: choose usf, dpm-v3 or auto")
    if args.nfe < 2:
        raise UsageError(f"--nfe {args.nfe}: a recipe needs at least 2 evaluations (one step and the final denoising)")
    m = resolve_model(args.model, args.path, device=args.device)
    skip_data = None
    if "skip" in parts and args.skip_data == "data":
        skip_data = reference(m, 5000)
        if skip_data is None:
            raise CLIError(f"--skip-data data: no training data is known for {m.name}; use --skip-data model")
        skip_data = skip_data.reshape(-1, *m.data_shape)
    recipe = pfode.tune(
        m.denoiser,
        args.nfe,
        shape=m.data_shape,
        n=args.n,
        held_out=args.held_out,
        seed=args.seed,
        teacher=args.teacher,
        teacher_nfe=args.teacher_nfe,
        teacher_tol=args.teacher_tol,
        times="times" in parts,
        solvers="solvers" in parts,
        skip="skip" in parts,
        skip_data=skip_data,
        family=args.family,
        dtype=m.dtype,
        device=args.device,
        budget=args.budget,
        progress=not args.quiet,
    )
    meta = recipe.meta
    base = meta["untuned_best"]
    say(f"{m.name}: recipe of {recipe.nfe} NFE tuned in {meta['seconds']:.1f} s ({meta['sampler_runs']} sampler runs)")
    say(f"{'':28s} {'train error':>12s} {'held-out error':>15s}")
    if base:
        label = f"untuned best ({base['solver']}, {base['spacing']})"
        say(f"{label:28s} {base['train_error']:12.4e} {base['held_out_error']:15.4e}")
    say(f"{'recipe':28s} {meta['train_error']:12.4e} {meta['held_out_error']:15.4e}")
    if base and base["held_out_error"] > 0:
        say(f"held-out ratio recipe / untuned best: {meta['held_out_error'] / base['held_out_error']:.3f}")
    say(recipe.summary())
    make_folder(out)
    recipe.save(out)
    say(f"-> {out}")
    return 0
