"""The ``pfode`` command line: sample, train, reflow, nll, invert, bench, info.

``pfode COMMAND --help`` describes each command. Models are given as ``--model``:

* ``builtin:digits`` (the default) or ``builtin:moons`` -- small models shipped inside the package;
* ``analytic:gmm[:DIM[:K]]`` -- an exact Gaussian mixture (default 2-D, 8 components) on ``--path``;
* a model or checkpoint path: ``NAME.json`` / ``NAME.safetensors`` pairs as ``pfode train --export`` writes
  them, a run folder or its ``checkpoints/`` folder (safetensors and JSON only; nothing is unpickled).

Exit status: 0 on success, 2 for a wrong command line (unknown option or solver, an out-of-range value),
1 for any other error (missing or malformed files, invalid configurations, an output that exists without
``--force``), 130 when interrupted. Errors are one line ``pfode: error: ...`` on stderr; ``--verbose``
adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path as FsPath

__all__ = ["main", "build_parser", "CLIError", "UsageError", "load_config", "check_config"]

PROG = "pfode"


# --- errors -------------------------------------------------------------------------------------
class CLIError(Exception):
    """A user error: printed as one line, exit status ``code``."""

    code = 1

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CLIError):
    """The command line itself is wrong (exit status 2)."""

    code = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _one_line(msg: str) -> str:
    parts = [p.strip() for p in str(msg).strip().splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def _describe(e: BaseException) -> tuple[str, bool]:
    """(message, expected) for an exception; ``expected`` is False for what looks like a bug."""
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return f"malformed YAML: {e}", True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, FileNotFoundError):
        return (f"no such file or folder: {e.filename}" if e.filename else str(e)), True
    if isinstance(e, FileExistsError):
        return str(e) if not e.filename else f"{e.filename} exists (pass --force to overwrite it)", True
    if isinstance(e, OSError):
        return (f"{e.strerror}: {e.filename}" if e.filename and e.strerror else str(e)), True
    if isinstance(e, (ValueError, TypeError, KeyError, FloatingPointError, ImportError)):
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return msg, True
    return f"{type(e).__name__}: {e}", False


# --- small helpers ------------------------------------------------------------------------------
def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _int_list(text: str) -> list[int]:
    try:
        vals = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or vals[0] < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1, got {text!r}")
    return vals


def _check_output(path, force: bool, suffixes: tuple[str, ...], what: str = "--out") -> FsPath:
    p = FsPath(os.fspath(path))
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(f"{what} {p}: the file name must end in {' or '.join(suffixes)}")
    if p.exists() and not force:
        raise CLIError(f"{p} exists; pass --force to overwrite it")
    if p.exists() and p.is_dir():
        raise CLIError(f"{p} is a folder, not a file")
    return p


def _save_npz(path: FsPath, arrays: dict):
    import numpy as np

    from .plots import file_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_text(path: FsPath, text: str):
    from .plots import file_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _say(args, text: str = ""):
    print(text, flush=True)


def _np(x):
    return x.detach().cpu().numpy()


# --- solvers ------------------------------------------------------------------------------------
def _check_solver(name: str, nfe: int | None = None, *, denoise: bool = True, deterministic: bool = False):
    """The solver object for ``name`` (exit 2 for unknown names or an NFE it cannot spend)."""
    from . import solvers

    if name not in solvers.available():
        raise UsageError(f"unknown solver {name!r}; available: {', '.join(solvers.available())}")
    s = solvers.get(name)
    if deterministic and s.stochastic:
        raise UsageError(f"solver {name!r} is stochastic; this command needs a deterministic solver")
    if nfe is not None and not getattr(s, "adaptive", False):
        try:
            s.for_nfe(nfe, denoise)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return s


def _check_spacing(spacing: str) -> str:
    from .grids import SPACINGS

    if spacing not in SPACINGS:
        raise UsageError(f"unknown spacing {spacing!r}; available: {', '.join(SPACINGS)}")
    return spacing


# --- models -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Resolved:
    name: str
    denoiser: object
    data_shape: tuple
    dtype: object
    spec: dict | None = None
    target: object = None  # analytic target
    net: object = None

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3


def _analytic(spec: str, path_name: str | None):
    import torch

    from . import analytic, paths

    parts = spec.split(":")
    if parts[1] != "gmm" or len(parts) > 4:
        raise UsageError(f"--model {spec}: analytic targets are analytic:gmm[:DIM[:COMPONENTS]]")
    try:
        d = int(parts[2]) if len(parts) > 2 else 2
        k = int(parts[3]) if len(parts) > 3 else 8
    except ValueError:
        raise UsageError(f"--model {spec}: DIM and COMPONENTS must be integers") from None
    if d < 1 or k < 1:
        raise UsageError(f"--model {spec}: DIM and COMPONENTS must be >= 1")
    name = path_name or "ddpm"
    if name not in paths.available():
        raise UsageError(f"unknown path {name!r}; available: {', '.join(paths.available())}")
    gen = torch.Generator().manual_seed(0)
    target = analytic.GaussianMixture.random(d, k, std_range=(0.05, 1.0), generator=gen)
    path = paths.get_path(name)
    return _Resolved(f"{spec} on {name}", target.denoiser(path), (d,), torch.float64, None, target)


def resolve_model(spec: str | None, path_name: str | None = None, dtype=None, device: str = "cpu") -> _Resolved:
    """A model from ``--model`` (see the module docs); float32 networks unless ``dtype`` is given."""
    import torch

    spec = spec or "builtin:digits"
    if spec.startswith("analytic:"):
        return _analytic(spec, path_name)
    if path_name is not None:
        raise UsageError("--path applies to analytic targets only (a trained model has its own path)")
    if spec.startswith("builtin:"):
        from .models import BUILTIN

        name = spec.split(":", 1)[1]
        if name not in BUILTIN:
            raise UsageError(f"unknown builtin model {name!r}; available: {', '.join(BUILTIN)}")
    from .models import load

    m = load(spec, device=device, dtype=dtype or torch.float32)
    return _Resolved(spec, m.denoiser, m.data_shape, dtype or torch.float32, m.spec, None, m.net)


def _reference(m: _Resolved, n: int, seed: int = 1):
    """Up to ``n`` data points of the model's training distribution (or ``None``)."""
    import torch

    if m.target is not None:
        return m.target.sample(n, generator=torch.Generator().manual_seed(seed))
    data = (m.spec or {}).get("data") or {}
    if data.get("name") not in ("toy2d", "digits"):
        return None
    from .data import load_dataset

    try:
        x = load_dataset(data)
    except Exception:  # a reference is a nicety
        return None
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


def _load_data(m: _Resolved, spec: str | None, n: int, seed: int, key: str | None = None):
    """``n`` data points for ``nll``/``invert``: ``--data`` or the model's own distribution."""
    import torch

    from . import data as D

    g = torch.Generator().manual_seed(seed)
    if spec is None:
        if m.target is not None:
            return m.target.sample(n, generator=g), f"{n} samples of the analytic target"
        dspec = (m.spec or {}).get("data") or {}
        if dspec.get("name") not in ("toy2d", "digits"):
            raise UsageError("give --data (the model's training data cannot be loaded by name)")
        x = D.load_dataset(dspec)
        label = dspec["name"] if dspec["name"] == "digits" else f"toy2d:{dspec.get('kind')}"
    elif spec == "digits":
        x, label = D.digits(), "digits"
    elif spec.startswith("toy2d:"):
        kind = spec.split(":", 1)[1]
        if kind not in D.TOYS:
            raise UsageError(f"--data {spec}: unknown toy {kind!r}; available: {', '.join(D.TOYS)}")
        x, label = D.toy2d(kind, max(n, 1), seed=seed), spec
    else:
        p = FsPath(spec)
        if p.suffix.lower() not in (".npy", ".npz"):
            raise UsageError(f"--data {spec}: give digits, toy2d:KIND or a .npy/.npz file")
        x, label = D.load_array(p, key), str(p)
    if tuple(x.shape[1:]) != tuple(m.data_shape):
        raise CLIError(
            f"the data ({label}) has samples of shape {tuple(x.shape[1:])}, the model expects {tuple(m.data_shape)}"
        )
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    x = x[idx].to(m.dtype)
    return x, f"{x.shape[0]} samples of {label}"


# --- configuration ------------------------------------------------------------------------------
def load_config(path) -> dict:
    """Read a YAML (``yaml.safe_load``) or JSON configuration; one-line errors naming the file and line."""
    p = FsPath(os.fspath(path))
    if p.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(f"{p}: configuration files must end in .yaml, .yml or .json")
    if not p.is_file():
        raise CLIError(f"no such configuration file: {p}")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{p}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    else:
        import yaml

        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise CLIError(f"{p}: malformed YAML{where}: {what}") from None
    if not isinstance(cfg, dict):
        raise CLIError(f"{p}: the configuration must be a mapping with sections data, model, objective, train")
    return cfg


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
    from .train.losses import Consistency, DenoisingScoreMatching, FlowMatching

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
    from .data import DATASETS, TOYS
    from .nets import NETS
    from .nets import build as build_net
    from .train.config import SECTIONS
    from .train.losses import OBJECTIVES, get_objective
    from .train.trainer import TrainConfig

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
        raise CLIError(f"{w}model: {_one_line(str(e))}") from None
    # objective
    obj = dict(cfg["objective"] or {})
    oname = obj.get("name")
    if oname not in OBJECTIVES:
        raise CLIError(f"{w}objective.name={oname!r} is unknown; valid names: {', '.join(OBJECTIVES)}")
    _unknown("objective", obj, _objective_keys(oname), f"objective {oname!r}", w)
    if oname != "consistency-distillation":
        opts = {k: v for k, v in obj.items() if k != "name"}
        if opts.get("t_range") is not None:
            opts["t_range"] = tuple(opts["t_range"])
        try:
            if "path" in opts:
                from .models import _path

                opts["path"] = _path(opts["path"])
            get_objective(oname, **opts)
        except (ValueError, TypeError) as e:
            raise CLIError(f"{w}objective: {_one_line(str(e))}") from None
    elif not isinstance(obj.get("teacher"), dict) or "checkpoint" not in obj["teacher"]:
        raise CLIError(f"{w}objective.teacher must be a mapping with 'checkpoint' for consistency distillation")
    # train
    train = cfg.get("train") or {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(train) - names)
    if bad:
        raise CLIError(f"{w}unknown key train.{bad[0]}; valid keys: {', '.join(sorted(names))}")
    try:
        TrainConfig.from_dict(dict(train))
    except (ValueError, TypeError) as e:
        raise CLIError(f"{w}train: {_one_line(str(e))}") from None
    return cfg


def _train_fields():
    from .train.trainer import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name not in ("extra", "quiet")]


def _add_train_flags(p: argparse.ArgumentParser):
    """One flag per training option (``--steps``, ``--batch-size``, ``--lr``, ...) and ``--set KEY=VALUE``."""
    g = p.add_argument_group("training options (override the configuration's train section)")
    no = argparse.SUPPRESS  # only options given on the command line appear in args
    for f in _train_fields():
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.name == "betas":
            g.add_argument(flag, type=float, nargs=2, metavar=("B1", "B2"), default=no, help="train.betas")
        elif f.name == "grad_clip":
            g.add_argument(flag, type=_float_or_none, default=no, metavar="X|none", help="train.grad_clip")
        elif isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=no, help=f"train.{f.name}")
        elif isinstance(default, int):
            g.add_argument(flag, type=int, default=no, metavar="N", help=f"train.{f.name} (default {default})")
        elif isinstance(default, float):
            g.add_argument(flag, type=float, default=no, metavar="X", help=f"train.{f.name} (default {default:g})")
        else:
            g.add_argument(flag, type=str, default=no, metavar="S", help=f"train.{f.name} (default {default})")
    g.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any configuration entry (VALUE is read as YAML), e.g. --set model.width=64",
    )


def _float_or_none(text: str):
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _apply_overrides(cfg: dict, args) -> dict:
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


def _check_run_dir(out: FsPath, resume: bool, force: bool, need_checkpoint: bool = True) -> bool:
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


def _clear_run_dir(out: FsPath, extra=()):
    """Remove what pfode wrote into a run folder (``--force``), nothing else."""
    for d in ("checkpoints", "samples", "tensorboard", *extra):
        shutil.rmtree(out / d, ignore_errors=True)
    for f in ("metrics.csv", "training_curves.png"):
        (out / f).unlink(missing_ok=True)


def _export_target(args):
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


def _fit(cfg: dict, out: FsPath, resume: bool, args, label: str):
    """Build the trainer from ``cfg`` (pfode.train.config), train, plot the curves, export; print a summary."""
    from . import plots
    from .train.config import make_trainer

    export = _export_target(args)
    t0 = time.perf_counter()
    trainer = make_trainer(cfg, out, resume=resume)
    start = trainer.step
    trainer.fit()
    dt = time.perf_counter() - t0
    if (out / "metrics.csv").is_file():
        with contextlib.suppress(ValueError, OSError):
            plots.training_curves(out / "metrics.csv", out / "training_curves.png", title=f"{label}: training")
    loss = trainer.history[-1]["loss"] if trainer.history else None
    _say(
        args,
        f"trained steps {start}..{trainer.step} in {dt:.1f} s"
        + (f" (last loss {loss:.4g})" if loss is not None else "")
        + f"; checkpoint: {trainer.last_checkpoint}",
    )
    if export is not None:
        from .models import export as export_model

        st, js = export_model(out / "checkpoints", export)
        _say(args, f"model: {js} + {st.name} ({(st.stat().st_size + js.stat().st_size) / 1e6:.2f} MB)")
    return trainer


# --- commands -----------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    import torch

    import pfode

    from . import plots

    out = _check_output(args.out, args.force, (".png", ".npz"))
    spacing = _check_spacing(args.spacing)
    solver = _check_solver(args.solver, args.nfe)
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
        if getattr(solver, "adaptive", False):
            res = pfode.sample(m.denoiser, x_T, pfode.grid(path, 1), solver, **kw)
        else:
            res = pfode.sample(m.denoiser, x_T, solver=solver, nfe=args.nfe, spacing=spacing, **kw)
    dt = time.perf_counter() - t0
    x = res.x.cpu()
    title = f"{m.name}: {args.solver}, {res.nfe} NFE, {spacing} grid, seed {args.seed}"
    if out.suffix == ".npz":
        import numpy as np

        _save_npz(
            out,
            {
                "samples": _np(x),
                "noise": _np(z),
                "model": np.str_(m.name),
                "solver": np.str_(args.solver),
                "nfe": np.int64(res.nfe),
                "spacing": np.str_(spacing),
                "seed": np.int64(args.seed),
            },
        )
    elif m.is_image:
        plots.sample_grid(x, out, title)
    elif args.trajectories:
        traj = torch.stack([s.cpu() for s in res.trajectory])
        plots.trajectories_2d(traj, res.times, out, title)
    else:
        plots.scatter_2d(x, out, title, reference=_reference(m, min(2000, max(n, 500))))
    _say(args, f"{n} samples from {m.name} with {args.solver} ({res.nfe} NFE) in {dt:.2f} s -> {out}")
    return 0


def _read_spec_from_run(run: FsPath) -> dict:
    from .train.checkpoint import read_checkpoint

    ck = read_checkpoint(run / "checkpoints")
    spec = ck.meta.get("spec")
    if not isinstance(spec, dict):
        raise CLIError(f"{ck.json_path} stores no configuration; give the CONFIG file")
    return spec


def cmd_train(args) -> int:
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
    clear = _check_run_dir(out, resume, args.force)
    if args.config is not None:
        cfg = load_config(args.config)
        where = str(args.config)
    else:
        cfg = _read_spec_from_run(out)
        where = f"{out} (stored configuration)"
    cfg = check_config(_apply_overrides(cfg, args), where)
    _export_target(args)
    if clear:  # only once everything checked out
        _clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    _fit(cfg, out, resume, args, FsPath(args.config).stem if args.config else out.name)
    return 0


def cmd_reflow(args) -> int:
    import torch

    from .train.couplings import generate_reflow_pairs

    out = FsPath(args.out)
    resume = bool(args.resume)
    solver = _check_solver(args.solver, args.nfe, deterministic=True)
    if getattr(solver, "adaptive", False):
        raise UsageError("reflow pairs need a fixed-NFE solver (not dopri5)")
    spacing = _check_spacing(args.spacing)
    teacher = resolve_model(args.teacher, args.path)
    if args.config is not None:
        cfg = load_config(args.config)
        where = str(args.config)
    elif teacher.spec is not None:
        cfg = json.loads(json.dumps(teacher.spec))
        where = f"{args.teacher} (the teacher's configuration)"
    else:
        raise UsageError("an analytic teacher has no network configuration: give the student's CONFIG")
    pairs_dir = out / "pairs"
    # an interrupted reflow may have stopped while generating pairs (no checkpoint yet): both resume
    clear = _check_run_dir(out, resume, args.force, need_checkpoint=False)
    if resume and not pairs_dir.exists() and not (out / "checkpoints").exists():
        raise CLIError(f"{out} holds no reflow run to resume")
    cfg = dict(cfg)
    cfg["data"] = {"name": "reflow-pairs", "path": str(pairs_dir)}
    obj = dict(cfg.get("objective") or {})
    obj.pop("teacher", None)
    obj["coupling"] = "reflow"
    cfg["objective"] = obj
    model = dict(cfg.get("model") or {})
    model.pop("data_shape", None)
    cfg["model"] = model
    cfg = _apply_overrides(cfg, args)
    # validate everything but the (not yet generated) pairs before spending time on them
    check_config(cfg, where)
    _export_target(args)
    if clear or (args.force and not resume):
        _clear_run_dir(out, extra=("pairs",))
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
    _say(
        args,
        f"{len(store)} teacher pairs ({args.solver}, {args.nfe} NFE) in {time.perf_counter() - t0:.1f} s "
        f"-> {pairs_dir}",
    )
    _fit(cfg, out, resume, args, f"reflow of {args.teacher}")
    return 0


def cmd_nll(args) -> int:
    import torch

    from .likelihood import bits_per_dim, log_likelihood

    solver = args.solver
    if solver not in ("dopri5", "euler", "heun", "midpoint", "rk4"):
        raise UsageError(f"--solver {solver}: nll integrates with dopri5 (adaptive) or euler, heun, midpoint, rk4")
    if solver != "dopri5" and args.steps is None:
        raise UsageError(f"--solver {solver} needs --steps N (a fixed grid)")
    m = resolve_model(args.model, args.path, dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    x, label = _load_data(m, args.data, args.n, args.seed, args.key)
    out = _check_output(args.out, args.force, (".npz",)) if args.out else None
    d = int(math.prod(m.data_shape))
    divergence = args.divergence if args.divergence != "auto" else ("exact" if d <= 16 else "hutchinson")
    opts = dict(divergence=divergence, probes=args.probes)
    if solver == "dopri5":
        opts.update(solver="dopri5", rtol=args.rtol, atol=args.atol)
    else:
        import pfode

        opts.update(solver=solver, grid=pfode.grid(m.denoiser.path, args.steps))
    gen = torch.Generator().manual_seed(args.seed + 7)
    t0 = time.perf_counter()
    logps, nfe = [], 0
    for i in range(0, x.shape[0], args.batch_size):
        xb = x[i : i + args.batch_size]
        if args.bpd:
            q = _to_uint8(xb)
            o = bits_per_dim(m.denoiser, q, generator=gen, dtype=m.dtype, **opts)
            logps.append(o.bound)
        else:
            o = log_likelihood(m.denoiser, xb, generator=gen, **opts)
            logps.append(o.logp)
        nfe += o.nfe
    dt = time.perf_counter() - t0
    lp = torch.cat(logps).double().cpu()
    mean = float(lp.mean())
    se = float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan")
    how = f"{solver}" + (
        f" (rtol {args.rtol:g}, atol {args.atol:g})" if solver == "dopri5" else f" ({args.steps} steps)"
    )
    div = divergence if divergence == "exact" else f"hutchinson ({args.probes} probes)"
    _say(args, f"model {m.name}; data: {label} (d = {d}); {how}, {div} divergence")
    if args.bpd:
        _say(
            args,
            f"bits/dim (8-bit data, truncated-normal dequantization, an upper bound): {-mean / (d * math.log(2)):.4f} "
            f"(standard error {se / (d * math.log(2)):.2g} over {len(lp)} samples); NFE {nfe}, {dt:.1f} s",
        )
    else:
        _say(
            args,
            f"log-likelihood: {mean:.4f} nats per sample (standard error {se:.2g} over {len(lp)} samples; "
            f"{mean / d:.4f} nats/dim, {-mean / (d * math.log(2)):.4f} bits/dim, continuous); NFE {nfe}, {dt:.1f} s",
        )
    if m.target is not None and not args.bpd:
        exact = m.target.log_prob(x.to(torch.float64), m.denoiser.path.t_min, m.denoiser.path).cpu()
        _say(
            args,
            f"exact log p(t_min) of the analytic target: {float(exact.mean()):.4f} "
            f"(mean |difference| {float((exact - lp).abs().mean()):.2e})",
        )
    if out is not None:
        _save_npz(out, {"logp": lp.numpy(), "x": _np(x)})
        _say(args, f"per-sample values -> {out}")
    return 0


def _to_uint8(x):
    """Model values in [-1, 1] -> integers 0..255 (values already in 0..255 pass through)."""
    import torch

    if float(x.max()) > 1.5:
        q = x.round()
    else:
        q = ((x.double() + 1.0) * 127.5).round()
    if float(q.min()) < 0 or float(q.max()) > 255:
        raise CLIError("--bpd needs data in [-1, 1] (pfode's image scale) or integers in 0..255")
    return q.to(torch.int64)


def cmd_invert(args) -> int:
    import torch

    from .invert import round_trip

    _check_spacing(args.spacing)
    solver = _check_solver(args.solver, None, deterministic=True)
    if getattr(solver, "adaptive", False):
        raise UsageError("invert spends a fixed --nfe: use a fixed-step solver (not dopri5)")
    if args.method == "bdia" and solver.multistep:
        raise UsageError(f"--method bdia needs a single-step solver (ddim, dpm++2s, heun, ...), not {args.solver!r}")
    if args.method == "plain":
        try:
            solver.for_nfe(args.nfe, False)
        except ValueError as e:
            raise UsageError(str(e)) from None
    out = _check_output(args.out, args.force, (".npz",)) if args.out else None
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    m = resolve_model(args.model, args.path, dtype=dtype)
    x, label = _load_data(m, args.data, args.n, args.seed, args.key)
    t0 = time.perf_counter()
    with torch.no_grad():
        rt = round_trip(
            m.denoiser, x, nfe=args.nfe, solver=args.solver, spacing=args.spacing, method=args.method, gamma=args.gamma
        )
    dt = time.perf_counter() - t0
    _say(args, f"model {m.name}; data: {label}; {args.method} inversion with {args.solver}, {args.spacing} grid")
    _say(
        args,
        f"round trip (data -> noise -> data, {rt.nfe} NFE in all): max |error| = {rt.max_abs_err:.3e}, "
        f"relative error = {rt.rel_err:.3e}; latent std {float(rt.x_T.std()):.3f}; {dt:.2f} s",
    )
    if out is not None:
        _save_npz(out, {"x0": _np(x), "x_T": _np(rt.x_T), "x_rec": _np(rt.x_rec)})
        _say(args, f"data, latents and reconstructions -> {out}")
    return 0


def _bench_rows(m: _Resolved, nfes, names, spacing, n, seed, args):
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
                err = (x - ref).reshape(n, -1).pow(2).mean(1).sqrt().mean()
                row[k] = float(err) if math.isfinite(float(err)) else float("inf")
            results[name] = row
    return results, tol


def cmd_bench(args) -> int:
    import torch

    import pfode

    from . import plots

    out = _check_output(args.out, args.force, (".png",))
    js = _check_output(args.json, args.force, (".json",), "--json") if args.json else None
    spacing = _check_spacing(args.spacing)
    every = [
        n
        for n in pfode.solvers.available()
        if not pfode.solvers.get(n).stochastic and not getattr(pfode.solvers.get(n), "adaptive", False)
    ]
    if args.solvers:
        names = [s.strip() for s in args.solvers.split(",") if s.strip()]
        for s in names:
            _check_solver(s)
            if s not in every:
                raise UsageError(f"solver {s!r} is stochastic or adaptive; bench compares fixed-NFE ODE solvers")
    else:
        names = every
    m = resolve_model(args.model, args.path, dtype=torch.float64)
    t0 = time.perf_counter()
    results, tol = _bench_rows(m, args.nfe, names, spacing, args.n, args.seed, args)
    dt = time.perf_counter() - t0
    _say(args, f"{m.name}: mean per-sample RMSE to the exact PF-ODE endpoint (dopri5, tol {tol:g}), {args.n} samples,")
    _say(args, f"{spacing} grid, final denoising step counted in the NFE\n")
    head = f"{'solver':<12}" + "".join(f"{'NFE ' + str(k):>11}" for k in args.nfe)
    _say(args, head)
    for name, row in results.items():
        cells = "".join(f"{'-' if row[k] is None else format(row[k], '.2e'):>11}" for k in args.nfe)
        _say(args, f"{name:<12}" + cells)
    skipped = [s for s in pfode.solvers.available() if s not in every]
    _say(
        args,
        f"\n('-': the solver cannot spend exactly that NFE; not compared: {', '.join(skipped)} -- stochastic or "
        f"adaptive) [{dt:.1f} s]",
    )
    plots.error_vs_nfe(
        {k: {n: v for n, v in r.items() if v is not None} for k, r in results.items()},
        out,
        title=f"{m.name}: error vs NFE ({spacing} grid, {args.n} samples)",
        ylabel="mean RMSE to the exact ODE endpoint",
    )
    _say(args, f"plot -> {out}")
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
        _save_text(js, json.dumps(payload, indent=1))
        _say(args, f"table -> {js}")
    return 0


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cmd_info(args) -> int:
    import torch

    import pfode

    from . import models, paths, solvers
    from .grids import SPACINGS
    from .predictions import PREDICTIONS, TIME_INPUTS

    _say(
        args,
        f"pfode {pfode.__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cuda {'available' if torch.cuda.is_available() else 'not available'})",
    )
    _say(args, "\npaths: " + ", ".join(paths.available()))
    _say(args, "prediction types: " + ", ".join(PREDICTIONS))
    _say(args, "time inputs: " + ", ".join(TIME_INPUTS))
    _say(args, "grid spacings: " + ", ".join(SPACINGS))
    _say(args, f"\n{'solver':<16}{'order':>6}{'evals/step':>12}  kind")
    for d in solvers.describe():
        s = solvers.get(d["name"])
        kind = "stochastic" if d["stochastic"] else ("adaptive" if getattr(s, "adaptive", False) else "ODE")
        _say(args, f"{d['name']:<16}{d['order']:>6}{d['evals_per_step']:>12}  {kind}")
    _say(args, "\nbuiltin models:")
    for name in models.BUILTIN:
        try:
            p = models.builtin_file(name)
            meta = json.loads(p.read_text())
            size = p.stat().st_size + (p.parent / meta["tensor_file"]).stat().st_size
            obj = (meta.get("spec") or {}).get("objective", {})
            _say(
                args,
                f"  builtin:{name:<8} {meta.get('data', {}).get('shape')} {obj.get('name')} on "
                f"{obj.get('path')}, step {meta.get('step')}, {size / 1e6:.2f} MB",
            )
        except (OSError, ValueError, KeyError) as e:
            _say(args, f"  builtin:{name:<8} unavailable ({_one_line(str(e))})")
    _say(args, "\nextras:")
    for dist, what in (
        ("diffusers", "pfode.integrations.diffusers"),
        ("k-diffusion", "pfode.integrations.k_diffusion"),
        ("POT", "minibatch OT coupling (method='pot')"),
        ("torchdiffeq", "benchmarks"),
        ("torchsde", "benchmarks"),
        ("pillow", "image-folder datasets"),
        ("tensorboard", "training logs"),
    ):
        v = _version(dist)
        _say(args, f"  {dist:<12} {v or 'not installed':<16} {what}")
    return 0


# --- parser -------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, suppress: bool):
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("-v", "--verbose", action="store_true", default=d(False), help="show tracebacks of errors")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=d(None),
        metavar="N",
        help="torch CPU threads (default: 1 for sampling and evaluation, torch's default for training)",
    )


def _model_opts(p, default="builtin:digits", name="--model"):
    p.add_argument(
        name,
        default=default,
        metavar="MODEL",
        help=f"builtin:digits, builtin:moons, analytic:gmm[:DIM[:K]] or a model/checkpoint path (default {default})",
    )
    p.add_argument("--path", default=None, metavar="NAME", help="path of an analytic target (default ddpm)")


def build_parser() -> argparse.ArgumentParser:
    import pfode

    ap = _Parser(
        prog=PROG,
        description="The probability-flow ODE of diffusion and flow-matching models: sample, train, evaluate.",
        epilog="Exit status: 0 success, 2 wrong command line, 1 other errors. 'pfode COMMAND --help' for details.",
    )
    ap.add_argument("--version", action="version", version=f"pfode {pfode.__version__}")
    _common(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_, fn):
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p, suppress=True)
        p.set_defaults(func=fn)
        return p

    # sample
    p = add("sample", "draw samples: an image grid, a 2-D scatter plot or an .npz of raw samples", cmd_sample)
    _model_opts(p)
    p.add_argument("--solver", default="dpm++2m", help="solver name (pfode info lists them; default dpm++2m)")
    p.add_argument("--nfe", type=_positive_int, default=10, help="network evaluations (default 10)")
    p.add_argument("--spacing", default="logsnr", help="time grid: logsnr, uniform, karras, quadratic")
    p.add_argument("--n", type=_positive_int, default=None, help="samples (default 64 images or 1000 points)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--out", default="samples.png", help="output .png or .npz (default samples.png)")
    p.add_argument("--trajectories", action="store_true", help="2-D models: draw trajectories coloured by time")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")

    # train
    p = add("train", "train a model from a YAML/JSON configuration (pfode.train.config)", cmd_train)
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG", help="configuration (.yaml/.yml/.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    p.add_argument("--export", default=None, metavar="PREFIX", help="also write PREFIX.safetensors + PREFIX.json")
    p.add_argument("--force", action="store_true", help="start over in a folder that holds a run; overwrite exports")
    _add_train_flags(p)

    # reflow
    p = add(
        "reflow", "generate (noise, sample) pairs with a teacher and any solver, then train the student", cmd_reflow
    )
    p.add_argument(
        "config", nargs="?", default=None, metavar="CONFIG", help="student configuration (default: the teacher's)"
    )
    _model_opts(p, default="builtin:moons", name="--teacher")
    p.add_argument("--out", default="runs/reflow", metavar="DIR", help="run folder (pairs in DIR/pairs)")
    p.add_argument("--pairs", type=_positive_int, default=10000, help="number of teacher pairs (default 10000)")
    p.add_argument("--pair-batch", type=_positive_int, default=1000, help="pairs per generated shard")
    p.add_argument("--solver", default="dpm++2m", help="teacher solver (default dpm++2m)")
    p.add_argument("--nfe", type=_positive_int, default=20, help="teacher NFE per pair (default 20)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--pair-seed", type=_nonneg_int, default=0, help="seed of the teacher noise")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--export", default=None, metavar="PREFIX", help="also write PREFIX.safetensors + PREFIX.json")
    p.add_argument("--force", action="store_true", help="start over in a folder that holds a run")
    _add_train_flags(p)

    # nll
    p = add("nll", "log-likelihood (nats, bits per dimension) of data under a model's PF-ODE", cmd_nll)
    _model_opts(p)
    p.add_argument("--data", default=None, help="digits, toy2d:KIND or a .npy/.npz file (default: the model's data)")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--n", type=_positive_int, default=64, help="data points (default 64)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--solver", default="dopri5", help="dopri5 (adaptive) or euler/heun/midpoint/rk4 with --steps")
    p.add_argument("--steps", type=_positive_int, default=None, help="grid steps for a fixed-step solver")
    p.add_argument("--rtol", type=_positive_float, default=1e-5)
    p.add_argument("--atol", type=_positive_float, default=1e-5)
    p.add_argument(
        "--divergence",
        choices=("auto", "exact", "hutchinson"),
        default="auto",
        help="exact (one backward pass per dimension) or hutchinson; auto: exact up to 16 dimensions",
    )
    p.add_argument("--probes", type=_positive_int, default=4, help="Hutchinson probes (default 4)")
    p.add_argument("--bpd", action="store_true", help="8-bit data: dequantized bits/dim bound (bits_per_dim)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--out", default=None, help="per-sample log-likelihoods as .npz")
    p.add_argument("--force", action="store_true")

    # invert
    p = add("invert", "map data to noise and back along the PF-ODE; print the round-trip error", cmd_invert)
    _model_opts(p)
    p.add_argument("--data", default=None, help="digits, toy2d:KIND or a .npy/.npz file (default: the model's data)")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--n", type=_positive_int, default=16, help="data points (default 16)")
    p.add_argument("--solver", default="ddim", help="deterministic solver (default ddim)")
    p.add_argument("--nfe", type=_positive_int, default=10, help="evaluations of the inversion grid (default 10)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--method", choices=("plain", "bdia"), default="plain", help="plain or exact (BDIA) inversion")
    p.add_argument("--gamma", type=_positive_float, default=1.0, help="BDIA gamma in (0, 1]")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--out", default=None, help="data, latents and reconstructions as .npz")
    p.add_argument("--force", action="store_true")

    # bench
    p = add("bench", "error vs NFE of every ODE solver on an analytic target or a model: table + PNG", cmd_bench)
    _model_opts(p, default="analytic:gmm:16")
    p.add_argument(
        "--nfe", type=_int_list, default=[5, 7, 10, 13, 21], help="comma-separated NFEs (default 5,7,10,13,21)"
    )
    p.add_argument("--solvers", default=None, help="comma-separated solvers (default: every fixed-NFE ODE solver)")
    p.add_argument("--spacing", default="logsnr")
    p.add_argument("--n", type=_positive_int, default=128, help="samples (default 128)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--out", default="bench.png", help="plot (default bench.png)")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--force", action="store_true")

    # info
    add("info", "paths, prediction types, solvers (order, evaluations per step), models, installed extras", cmd_info)
    return ap


def main(argv=None) -> int:
    """Entry point of the ``pfode`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = bool(getattr(args, "verbose", False))
        if getattr(args, "command", None) is None:
            parser.print_help(sys.stderr)
            return 2
        import torch

        threads = getattr(args, "threads", None)
        if threads is None and args.command not in ("train", "reflow"):
            threads = 1
        if threads is not None:
            torch.set_num_threads(threads)
        args.quiet = bool(getattr(args, "quiet", False))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (pfode info | head): stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit-time flush quiet
        except OSError:
            pass
        return 141
    except CLIError as e:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return e.code
    except Exception as e:  # noqa: BLE001 - every error becomes one line
        msg, expected = _describe(e)
        if verbose:
            traceback.print_exc()
        hint = "" if expected or verbose else " (run with --verbose for the traceback)"
        print(f"{PROG}: error: {_one_line(msg)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
