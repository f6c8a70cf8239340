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
    export_target(args)
    if clear or (args.force and not resume):
        clear_run_dir(out, extra=("pairs",))
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
    return 0
