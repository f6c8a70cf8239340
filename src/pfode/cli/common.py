"""What the ``pfode`` commands share: errors, option types, solver and model resolution, output files."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path as FsPath

PROG = "pfode"
#: ``--dtype`` choices (names of torch dtypes)
DTYPES = ("float32", "float64", "float16", "bfloat16")


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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


def one_line(msg: str) -> str:
    parts = [p.strip() for p in str(msg).strip().splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def describe(e: BaseException) -> tuple[str, bool]:
    """(message, expected) for an exception; ``expected`` is False for what looks like a bug.

    :class:`pfode.io.ConfigError` (an unreadable configuration) is a ``ValueError``: its one line as it is.
    """
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


# --- option types and shared options --------------------------------------------------------------
def int_at_least(minimum: int):
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


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def float_or_none(text: str):
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def int_list(text: str) -> list[int]:
    try:
        vals = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or vals[0] < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1, got {text!r}")
    return vals


def common_options(p: argparse.ArgumentParser, suppress: bool):
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("-v", "--verbose", action="store_true", default=d(False), help="show tracebacks of errors")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars or lines on stderr")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=d(None),
        metavar="N",
        help="torch CPU threads (default: 1 for sampling and evaluation, torch's default for training)",
    )


def model_options(p, default="builtin:digits", name="--model"):
    p.add_argument(
        name,
        default=default,
        metavar="MODEL",
        help=f"builtin:digits, builtin:moons, analytic:gmm[:DIM[:K]] or a model/checkpoint path (default {default})",
    )
    p.add_argument("--path", default=None, metavar="NAME", help="path of an analytic target (default ddpm)")


def data_options(p, n: int):
    p.add_argument("--data", default=None, help="digits, toy2d:KIND or a .npy/.npz file (default: the model's data)")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--n", type=positive_int, default=n, help=f"data points (default {n})")


# --- output -------------------------------------------------------------------------------------
def check_output(path, force: bool, suffixes: tuple[str, ...], what: str = "--out") -> FsPath:
    p = FsPath(os.fspath(path))
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(f"{what} {p}: the file name must end in {' or '.join(suffixes)}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{what} {p}: {parent} is a file, not a folder")
            break
    if p.exists() and not force:
        raise CLIError(f"{p} exists; pass --force to overwrite it")
    if p.exists() and p.is_dir():
        raise CLIError(f"{p} is a folder, not a file")
    return p


def make_folder(path, what: str = "--out") -> bool:
    """Create the missing folders above the output ``path`` and say so on stderr; True if any were made.

    Called when the output is about to be written (:func:`check_output` creates nothing, so that a failed
    command leaves nothing behind)."""
    parent = FsPath(os.fspath(path)).parent
    if parent.exists():
        return False
    parent.mkdir(parents=True, exist_ok=True)
    print(f"{PROG}: created the folder {parent} for {what}", file=sys.stderr, flush=True)
    return True


def save_npz(path: FsPath, arrays: dict):
    """Write ``arrays`` (tensors or arrays) as an ``.npz`` atomically."""
    import numpy as np

    from ..io import atomic_write

    arrays = {k: to_numpy(v) if hasattr(v, "detach") else v for k, v in arrays.items()}
    make_folder(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def say(text: str = ""):
    print(text, flush=True)


def to_numpy(x):
    return x.detach().cpu().numpy()


# --- solvers ------------------------------------------------------------------------------------
def check_solver(name: str, nfe: int | None = None, *, denoise: bool = True, deterministic=False, fixed=False):
    """The solver object for ``name``; exit 2 for an unknown name, an NFE it cannot spend, a stochastic solver
    where ``deterministic`` or an adaptive one where ``fixed``."""
    from .. import solvers

    if name not in solvers.available():
        raise UsageError(f"unknown solver {name!r}; available: {', '.join(solvers.available())}")
    s = solvers.get(name)
    if deterministic and s.stochastic:
        raise UsageError(f"solver {name!r} is stochastic; this command needs a deterministic solver")
    if fixed and s.adaptive:
        raise UsageError(f"solver {name!r} is adaptive; this command needs a fixed-NFE solver")
    if nfe is not None and not s.adaptive:
        try:
            s.for_nfe(nfe, denoise)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return s


def check_spacing(spacing: str) -> str:
    from ..grids import SPACINGS

    if spacing not in SPACINGS:
        raise UsageError(f"unknown spacing {spacing!r}; available: {', '.join(SPACINGS)}")
    return spacing


# --- models -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Resolved:
    """A model of ``--model``: the fields of a loaded :class:`pfode.models.Model` (not subclassed, so that this
    module imports without torch) or an analytic target (``spec`` is None, ``target`` the target)."""

    name: str
    denoiser: object
    data_shape: tuple
    spec: dict | None
    meta: dict = dataclasses.field(default_factory=dict)
    net: object = None
    dtype: object = None
    target: object = None  # the analytic target

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3


def _analytic(spec: str, path_name: str | None) -> Resolved:
    import torch

    from .. import analytic, paths

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
    return Resolved(f"{spec} on {name}", target.denoiser(path), (d,), None, dtype=torch.float64, target=target)


def resolve_model(spec: str | None, path_name: str | None = None, dtype=None, device: str = "cpu") -> Resolved:
    """A model from ``--model`` (see :mod:`pfode.cli`); float32 networks unless ``dtype`` is given."""
    import torch

    from ..models import BUILTIN, load

    spec = spec or "builtin:digits"
    if spec.startswith("analytic:"):
        return _analytic(spec, path_name)
    if path_name is not None:
        raise UsageError("--path applies to analytic targets only (a trained model has its own path)")
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN:
            raise UsageError(f"unknown builtin model {name!r}; available: {', '.join(BUILTIN)}")
    m = load(spec, device=device, dtype=dtype or torch.float32)
    keep = {f.name: getattr(m, f.name) for f in dataclasses.fields(Resolved) if f.name not in ("dtype", "target")}
    return Resolved(**keep, dtype=dtype or torch.float32)


def _training_data(m: Resolved):
    """The model's training data where it can be loaded by name (toy2d, digits), else ``None``."""
    from ..data import load_dataset

    data = (m.spec or {}).get("data") or {}
    return load_dataset(data) if data.get("name") in ("toy2d", "digits") else None


def reference(m: Resolved, n: int, seed: int = 1):
    """Up to ``n`` data points of the model's training distribution (or ``None``)."""
    import torch

    if m.target is not None:
        return m.target.sample(n, generator=torch.Generator().manual_seed(seed))
    try:
        x = _training_data(m)
    except Exception:  # a reference is a nicety
        return None
    return None if x is None else x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def load_data(m: Resolved, args):
    """``args.n`` data points for ``nll``/``invert``: ``--data`` or the model's own distribution."""
    import torch

    from .. import data as D

    spec, n, seed = args.data, args.n, args.seed
    g = torch.Generator().manual_seed(seed)
    if spec is None:
        if m.target is not None:
            return m.target.sample(n, generator=g), f"{n} samples of the analytic target"
        x = _training_data(m)
        if x is None:
            raise UsageError("give --data (the model's training data cannot be loaded by name)")
        dspec = m.spec["data"]
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
        x, label = D.load_array(p, args.key), str(p)
    if tuple(x.shape[1:]) != tuple(m.data_shape):
        raise CLIError(
            f"the data ({label}) has samples of shape {tuple(x.shape[1:])}, the model expects {tuple(m.data_shape)}"
        )
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    x = x[idx].to(m.dtype)
    return x, f"{x.shape[0]} samples of {label}"
