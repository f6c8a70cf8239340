"""``pfode train``: train a model from a YAML/JSON configuration (:mod:`pfode.train.config`).

Also what ``python -m pfode.train`` runs (under ``torchrun`` too: rank 0 prints, plots and exports). Every
field of :class:`pfode.train.TrainConfig` is a flag (``--iterations``, ``--batch-size``, ``--lr``, ...); any
other entry is ``--set SECTION.KEY=VALUE``. The configuration is checked strictly before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import shutil
import time
from pathlib import Path as FsPath

from .common import CLIError, UsageError, float_or_none, one_line, say

HELP = "train a model from a YAML/JSON configuration (pfode.train.config)"


def add_arguments(p):
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG", help="configuration (.yaml/.yml/.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<config name>)")
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
    cfg = check_config(apply_overrides(cfg, args), where)
    export_target(args)
    if clear:  # only once everything checked out
        clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    fit(cfg, out, resume, args, FsPath(args.config).stem if args.config else out.name)
    return 0


# --- configuration ------------------------------------------------------------------------------
def _data_keys() -> dict[str, set]:
    return {
        "toy2d": {"kind", "n", "seed"},
        "digits": set(),
        "array": {"path", "key"},
        "image-folder": {"path", "size", "mode", "recursive"},
        "reflow-pairs": {"path", "verify"},
    }


def _params(fn, drop=()) -> set:
    return {
        n
        for n, p in inspect.signature(fn).parameters.items()
        if n != "self" and n not in drop and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _objective_keys(name: str) -> set:
    from ..train.losses import Consistency, DenoisingScoreMatching, FlowMatching

    if name == "dsm":
        return _params(DenoisingScoreMatching.__init__)
    if name == "flow-matching":
        return _params(FlowMatching.__init__) | {"gamma", "sigma_data", "sigmoid_bias"}
    keys = _params(Consistency.__init__, drop=("mode", "teacher"))
    return keys | ({"teacher"} if name == "consistency-distillation" else set())


def _unknown(section: str, got, valid: set, what: str, where: str):
    bad = sorted(set(got) - valid - {"name"})
    if bad:
        raise CLIError(
            f"{where}unknown key {section}.{bad[0]}"
            + (f" (and {', '.join(section + '.' + b for b in bad[1:])})" if len(bad) > 1 else "")
            + f" for {what}; valid keys: {', '.join(sorted(valid | {'name'}))}"
        )


def check_config(cfg: dict, where: str = "") -> dict:
    """Check a training configuration strictly: unknown sections and keys and out-of-range values are
    errors naming the key. Returns ``cfg`` unchanged."""
    from ..data import DATASETS, TOYS
    from ..nets import NETS
    from ..nets import build as build_net
    from ..train.config import SECTIONS, _objective_options, _path
    from ..train.losses import OBJECTIVES, get_objective

    w = f"{where}: " if where else ""
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise CLIError(f"{w}unknown section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    for s in ("data", "model", "objective"):
        if s not in cfg:
            raise CLIError(f"{w}missing section {s!r} (sections: {', '.join(SECTIONS)})")
    for s in SECTIONS:
        if s in cfg and cfg[s] is not None and not isinstance(cfg[s], dict):
            raise CLIError(f"{w}section {s!r} must be a mapping, got {type(cfg[s]).__name__}")
    # data
    data = cfg["data"] or {}
    dname = data.get("name")
    if dname not in DATASETS:
        raise CLIError(f"{w}data.name={dname!r} is unknown; valid names: {', '.join(DATASETS)}")
    _unknown("data", data, _data_keys()[dname], f"dataset {dname!r}", w)
    if dname == "toy2d":
        if data.get("kind") not in TOYS:
            raise CLIError(f"{w}data.kind={data.get('kind')!r} is unknown; valid kinds: {', '.join(TOYS)}")
        for k in ("n", "seed"):
            v = data.get(k, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "n" else 0):
                raise CLIError(f"{w}data.{k}={v!r} must be an integer >= {1 if k == 'n' else 0}")
    elif dname in ("array", "image-folder", "reflow-pairs") and not isinstance(data.get("path"), str):
        raise CLIError(f"{w}data.path is required for dataset {dname!r}")
    # model
    model = dict(cfg["model"] or {})
    mname = model.pop("name", None)
    if mname not in NETS:
        raise CLIError(f"{w}model.name={mname!r} is unknown; valid names: {', '.join(sorted(NETS))}")
    _unknown("model", model, _params(NETS[mname].__init__), f"network {mname!r}", w)
    try:
        build_net(mname, **model)
    except (ValueError, TypeError) as e:
        raise CLIError(f"{w}model: {one_line(str(e))}") from None
    # objective
    obj = dict(cfg["objective"] or {})
    oname = obj.get("name")
    if oname not in OBJECTIVES:
        raise CLIError(f"{w}objective.name={oname!r} is unknown; valid names: {', '.join(OBJECTIVES)}")
    _unknown("objective", obj, _objective_keys(oname), f"objective {oname!r}", w)
    if oname != "consistency-distillation":
        opts = _objective_options(obj)
        try:
            if "path" in opts:
                opts["path"] = _path(opts["path"])
            get_objective(oname, **opts)
        except (ValueError, TypeError) as e:
            raise CLIError(f"{w}objective: {one_line(str(e))}") from None
    elif not isinstance(obj.get("teacher"), dict) or "checkpoint" not in obj["teacher"]:
        raise CLIError(f"{w}objective.teacher must be a mapping with 'checkpoint' for consistency distillation")
    # train: TrainConfig checks its own keys and ranges
    from ..train.trainer import TrainConfig

    try:
        TrainConfig.from_dict(dict(cfg.get("train") or {}))
    except (ValueError, TypeError) as e:
        raise CLIError(f"{w}train: {one_line(str(e))}") from None
    return cfg


def _stored_config(run: FsPath) -> dict:
    from ..train.checkpoint import read_checkpoint

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

    cfg = json.loads(json.dumps(cfg))
    train = cfg.setdefault("train", {}) or {}
    cfg["train"] = train
    for f in _train_fields():
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            train[f.name] = list(v) if f.name == "betas" else v
    if getattr(args, "quiet", False):
        train["quiet"] = True
    for s in args.sets:
        if "=" not in s:
            raise UsageError(f"--set {s!r}: expected SECTION.KEY=VALUE")
        key, val = s.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if len(parts) < 2:
            raise UsageError(f"--set {s!r}: the key must name a section and an entry, e.g. model.width")
        try:
            value = yaml.safe_load(val)
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
    if not getattr(args, "export", None):
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
