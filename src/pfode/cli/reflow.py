"""``pfode reflow``: (noise, sample) pairs from a teacher with any deterministic solver, then the student."""

from __future__ import annotations

import time
from pathlib import Path as FsPath

from .common import (
    CLIError,
    UsageError,
    check_solver,
    check_spacing,
    model_options,
    nonneg_int,
    positive_int,
    resolve_model,
    say,
)
from .train import add_run_flags, check_run_dir, clear_run_dir, configure, export_target, fit

HELP = "generate (noise, sample) pairs with a teacher and any solver, then train the student"


def add_arguments(p):
    p.add_argument(
        "config", nargs="?", default=None, metavar="CONFIG", help="student configuration (default: the teacher's)"
    )
    model_options(p, default="builtin:moons", name="--teacher")
    p.add_argument(
        "--out", default="runs/reflow", metavar="DIR", help="run folder, created if missing (pairs in DIR/pairs)"
    )
    p.add_argument("--pairs", type=positive_int, default=10000, help="number of teacher pairs (default 10000)")
    p.add_argument("--pair-batch", type=positive_int, default=1000, help="pairs per generated shard")
    p.add_argument("--solver", default="dpm++2m", help="teacher solver (default dpm++2m)")
    p.add_argument("--nfe", type=positive_int, default=20, help="teacher NFE per pair (default 20)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--pair-seed", type=nonneg_int, default=0, help="seed of the teacher noise")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--distill",
        action="store_true",
        help="then distill the reflow student into a one-step student (InstaFlow): pairs from the reflow student "
        "in DIR/distill_pairs (same solver and NFE), the student, initialised from it, in DIR/distill",
    )
    p.add_argument(
        "--distance", default=None, choices=("l2", "pseudo-huber", "features"), help="distillation distance (l2)"
    )
    p.add_argument("--distill-iterations", type=positive_int, default=None, help="(default: --iterations)")
    add_run_flags(p, "start over in a folder that holds a run")


def run(args) -> int:
    import torch

    from ..io import load_config
    from ..train.couplings import generate_reflow_pairs

    out = FsPath(args.out)
    resume = bool(args.resume)
    check_solver(args.solver, args.nfe, deterministic=True, fixed=True)
    spacing = check_spacing(args.spacing)
    teacher = resolve_model(args.teacher, args.path)
    if args.config is not None:
        cfg, where = load_config(args.config), str(args.config)
    elif teacher.spec is not None:
        cfg, where = teacher.spec, f"{args.teacher} (the teacher's configuration)"
    else:
        raise UsageError("an analytic teacher has no network configuration: give the student's CONFIG")
    pairs_dir = out / "pairs"
    # an interrupted reflow may have stopped while generating pairs (no checkpoint yet): both resume
    clear = check_run_dir(out, resume, args.force, need_checkpoint=False)
    if resume and not pairs_dir.exists() and not (out / "checkpoints").exists():
        raise CLIError(f"{out} holds no reflow run to resume")
    obj = {k: v for k, v in (cfg.get("objective") or {}).items() if k != "teacher"}
    model = {k: v for k, v in (cfg.get("model") or {}).items() if k != "data_shape"}
    data = {"name": "reflow-pairs", "path": str(pairs_dir)}
    cfg = {**cfg, "data": data, "objective": {**obj, "coupling": "reflow"}, "model": model}
    cfg = configure(cfg, args, where)  # everything but the (not yet generated) pairs, before spending time on them
    dcfg = _distill_config(cfg, out, args, where)
    export_target(args)
    if clear or (args.force and not resume):
        clear_run_dir(out, extra=("pairs", "distill", "distill_pairs"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        store = generate_reflow_pairs(
            teacher.denoiser,
            args.pairs,
            pairs_dir,
            teacher.data_shape,
            batch_size=min(args.pair_batch, args.pairs),
            solver=args.solver,
            nfe=args.nfe,
            seed=args.pair_seed,
            progress=not args.quiet,
            spacing=spacing,
        )
    dt = time.perf_counter() - t0
    say(f"{len(store)} teacher pairs ({args.solver}, {args.nfe} NFE) in {dt:.1f} s -> {pairs_dir}")
    fit(cfg, out, resume, args, f"reflow of {args.teacher}")
    if dcfg is not None:
        _distill(dcfg, out, resume, args, spacing)
    return 0


def _distill_config(cfg: dict, out: FsPath, args, where: str) -> dict | None:
    """The checked configuration of the ``--distill`` stage (None without ``--distill``)."""
    if not args.distill:
        if args.distance is not None or args.distill_iterations is not None:
            raise UsageError("--distance and --distill-iterations need --distill")
        return None
    from ..train.distill import distill_config

    try:
        dcfg = distill_config(cfg, out / "distill_pairs", args.distance or "l2")
    except ValueError as e:
        raise CLIError(f"{where}: --distill: {e}") from None
    dcfg = configure(dcfg, args, f"{where} (distillation stage)")
    if args.distill_iterations is not None:
        dcfg["train"]["iterations"] = args.distill_iterations
    return dcfg


def _distill(dcfg: dict, out: FsPath, resume: bool, args, spacing):
    """InstaFlow's second stage: pairs from the reflow student, then the one-step student initialised from it."""
    import torch

    from ..models import load
    from ..train.config import make_trainer
    from ..train.couplings import generate_reflow_pairs
    from ..train.distill import init_student

    rf = load(out / "checkpoints", which="ema")
    t0 = time.perf_counter()
    with torch.no_grad():
        store = generate_reflow_pairs(
            rf.denoiser,
            args.pairs,
            out / "distill_pairs",
            rf.data_shape,
            batch_size=min(args.pair_batch, args.pairs),
            solver=args.solver,
            nfe=args.nfe,
            seed=args.pair_seed + 1,
            progress=not args.quiet,
            spacing=spacing,
        )
    say(f"{len(store)} reflow-student pairs in {time.perf_counter() - t0:.1f} s -> {out / 'distill_pairs'}")
    dout = out / "distill"
    trainer = make_trainer(dcfg, dout, resume=resume and (dout / "checkpoints" / "latest.json").is_file())
    start = trainer.step
    init_student(trainer, rf.net)
    trainer.fit()
    loss = trainer.history[-1]["loss"] if trainer.history else float("nan")
    say(
        f"distilled ({dcfg['objective']['distance']}) iterations {start}..{trainer.step} "
        f"(last loss {loss:.4g}); checkpoint: {trainer.last_checkpoint}"
    )
