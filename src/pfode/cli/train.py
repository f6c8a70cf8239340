"""``pfode train``: train a model from a YAML/JSON configuration (:mod:`pfode.train.config`).

Also what ``python -m pfode.train`` runs (under ``torchrun`` too: rank 0 prints, plots and exports). Every
field of :class:`pfode.train.TrainConfig` is a flag (``--iterations``, ``--batch-size``, ``--lr``, ...); any
other entry is ``--set SECTION.KEY=VALUE``. The configuration is checked strictly before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path as FsPath

from .common import CLIError, UsageError, float_or_none, say

HELP = "train a model from a YAML/JSON configuration (pfode.train.config)"


def add_arguments(p):
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG", help="configuration (.yaml/.yml/.json)")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default runs/<config name>; created if missing)"
    )
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    add_run_flags(p, "start over in a folder that holds a run; overwrite exports")


def run(args) -> int:
    from ..io import load_config

    if args.resume is not None:
        out = FsPath(args.resume)
        if args.out is not None and FsPath(args.out).resolve() != out.resolve():
            raise UsageError("--resume DIR continues the run in DIR; leave out --out or give the same folder")
    elif args.out is not None:
        out = FsPath(args.out)
    elif args.config is not None:
        out = FsPath("runs") / FsPath(args.config).stem
    else:
        raise UsageError("give a CONFIG file (or --resume DIR)")
    resume = args.resume is not None
    clear = check_run_dir(out, resume, args.force)
    if args.config is not None:
        cfg, where = load_config(args.config), str(args.config)
    else:
        cfg, where = _stored_config(out), f"{out} (stored configuration)"
    cfg = configure(cfg, args, where)
    export_target(args)
    if clear:  # only once everything checked out
        clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    fit(cfg, out, resume, args, FsPath(args.config).stem if args.config else out.name)
    return 0


# --- configuration ------------------------------------------------------------------------------
def configure(cfg: dict, args, where: str) -> dict:
    """``cfg`` with the command line's training flags and ``--set`` entries, checked strictly
    (:func:`pfode.train.config.check_config`; its error, naming ``where``, becomes the one error line)."""
    from ..train.config import check_config

    try:
        return check_config(apply_overrides(cfg, args))
    except (ValueError, TypeError) as e:
        raise CLIError(f"{where}: {e}") from None


def _stored_config(run: FsPath) -> dict:
    from ..checkpoint import read_checkpoint

    ck = read_checkpoint(run / "checkpoints")
    spec = ck.meta.get("spec")
    if not isinstance(spec, dict):
        raise CLIError(f"{ck.json_path} stores no configuration; give the CONFIG file")
    return spec


# --- training flags -----------------------------------------------------------------------------
def _train_fields():
    from ..train.trainer import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name not in ("extra", "quiet")]


class _NotSteps(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError("--steps is the number of grid intervals; the training length is --iterations")


def add_run_flags(p: argparse.ArgumentParser, force_help: str):
    """``--export``, ``--force``, one flag per training option (``--iterations``, ``--batch-size``, ``--lr``,
    ...) and ``--set KEY=VALUE``."""
    p.add_argument("--export", default=None, metavar="PREFIX", help="also write PREFIX.safetensors + PREFIX.json")
    p.add_argument("--force", action="store_true", help=force_help)
    g = p.add_argument_group("training options (override the configuration's train section)")
    no = argparse.SUPPRESS  # only options given on the command line appear in args
    for f in _train_fields():
        flag, default, h = "--" + f.name.replace("_", "-"), f.default, f"train.{f.name}"
        if f.name == "betas":
            g.add_argument(flag, type=float, nargs=2, metavar=("B1", "B2"), default=no, help=h)
        elif f.name == "grad_clip":
            g.add_argument(flag, type=float_or_none, default=no, metavar="X|none", help=h)
        elif isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=no, help=h)
        elif isinstance(default, int):
            g.add_argument(flag, type=int, default=no, metavar="N", help=f"{h} (default {default})")
        elif isinstance(default, float):
            g.add_argument(flag, type=float, default=no, metavar="X", help=f"{h} (default {default:g})")
        else:
            g.add_argument(flag, type=str, default=no, metavar="S", help=f"{h} (default {default})")
    g.add_argument("--steps", nargs="?", action=_NotSteps, default=no, help=argparse.SUPPRESS)
    g.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any configuration entry (VALUE is read as YAML), e.g. --set model.width=64",
    )


def apply_overrides(cfg: dict, args) -> dict:
    import yaml

    from ..io import yaml_load

    cfg = json.loads(json.dumps(cfg))
    train = cfg["train"] = dict(cfg.get("train") or {})
    for f in _train_fields():
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            train[f.name] = list(v) if f.name == "betas" else v
    if args.quiet:
        train["quiet"] = True
    for s in args.sets:
        if "=" not in s:
            raise UsageError(f"--set {s!r}: expected SECTION.KEY=VALUE")
        key, val = s.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if len(parts) < 2:
            raise UsageError(f"--set {s!r}: the key must name a section and an entry, e.g. model.width")
        try:
            value = yaml_load(val)
        except yaml.YAMLError:
            value = val
        node = cfg
        for k in parts[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[parts[-1]] = value
    return cfg


# --- run folders --------------------------------------------------------------------------------
def check_run_dir(out: FsPath, resume: bool, force: bool, need_checkpoint: bool = True) -> bool:
    """Refuse to train over an existing run unless resuming or ``--force``; True when the run must be cleared."""
    has_run = any(m.exists() for m in (out / "checkpoints", out / "metrics.csv", out / "samples"))
    if resume:
        if need_checkpoint and not (out / "checkpoints" / "latest.json").is_file():
            raise CLIError(f"{out} holds no checkpoint to resume (no checkpoints/latest.json)")
        return False
    if has_run and not force:
        raise CLIError(
            f"{out} already holds a training run; pass --resume {out} to continue it or --force to start over"
        )
    return has_run


def clear_run_dir(out: FsPath, extra=()):
    """Remove what pfode wrote into a run folder (``--force``), nothing else."""
    for d in ("checkpoints", "samples", "tensorboard", *extra):
        shutil.rmtree(out / d, ignore_errors=True)
    for f in ("metrics.csv", "training_curves.png"):
        (out / f).unlink(missing_ok=True)


def export_target(args):
    if not args.export:
        return None
    dest = FsPath(args.export)
    if dest.suffix in (".json", ".safetensors"):
        dest = dest.with_suffix("")
    for suf in (".json", ".safetensors"):
        p = dest.parent / f"{dest.name}{suf}"
        if p.exists() and not args.force:
            raise CLIError(f"{p} exists; pass --force to overwrite it")
    return dest


def fit(cfg: dict, out: FsPath, resume: bool, args, label: str):
    """Build the trainer from ``cfg`` (pfode.train.config), train, plot the curves, export; print a summary.

    Under ``torchrun`` every process trains; rank 0 alone plots, exports and prints.
    """
    import torch.distributed as dist

    from .. import plots
    from ..train.config import make_trainer

    export = export_target(args)
    t0 = time.perf_counter()
    try:
        trainer = make_trainer(cfg, out, resume=resume)
        start = trainer.step
        trainer.fit()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank != 0:
        return trainer
    dt = time.perf_counter() - t0
    if (out / "metrics.csv").is_file():
        with contextlib.suppress(ValueError, OSError):
            plots.training_curves(out / "metrics.csv", out / "training_curves.png", title=f"{label}: training")
    loss = trainer.history[-1]["loss"] if trainer.history else None
    on = f" on {trainer.world} processes" if trainer.world > 1 else ""
    say(
        f"trained iterations {start}..{trainer.step}{on} in {dt:.1f} s"
        + (f" (last loss {loss:.4g})" if loss is not None else "")
        + f"; checkpoint: {trainer.last_checkpoint}"
    )
    if export is not None:
        from ..models import export as export_model

        st, js = export_model(out / "checkpoints", export)
        say(f"model: {js} + {st.name} ({(st.stat().st_size + js.stat().st_size) / 1e6:.2f} MB)")
    return trainer
