"""Files: atomic writes, file modes, SHA-256 and configuration loading (the one IO layer of pfode).

Every file pfode writes goes through :func:`atomic_write`: a temporary file in the target folder is
written, flushed, given the mode a plain ``open()`` would give (``0o666`` less the umask, where
``tempfile.mkstemp`` would leave ``0o600``) and moved into place with ``os.replace``, so a crash at
any moment leaves either the old file or the new one, never half of one. ``models``, ``train``,
``plots`` and the command line all sit on top of this module; it imports nothing of pfode.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import IO, Any

import torch

__all__ = [
    "ConfigError",
    "file_mode",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_tensors",
    "sha256_file",
    "load_config",
    "encode_array",
    "decode_array",
    "yaml_load",
]


class ConfigError(ValueError):
    """A configuration file that cannot be read: wrong suffix, missing, malformed or not a mapping."""


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file under the current umask (``0o666`` less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _sync_dir(folder: FsPath):
    try:  # make the rename durable where the platform allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - e.g. Windows
        pass


def atomic_write(path, write: Callable[[IO[bytes]], Any] | None = None, *, to_name: Callable[[str], Any] | None = None):
    """Write ``path`` atomically and return it as a :class:`pathlib.Path`.

    Give exactly one of ``write(f)`` (writes to an open binary file) or ``to_name(tmp)`` (writes a file
    by name, for libraries such as safetensors that open the file themselves). Missing parent folders
    are created.
    """
    if (write is None) == (to_name is None):
        raise TypeError("atomic_write needs exactly one of write= or to_name=")
    path = FsPath(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if write is not None:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            to_name(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)
    return path


def atomic_write_bytes(path, data: bytes) -> FsPath:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> FsPath:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent: int | None = 1) -> FsPath:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save_tensors(path, tensors: dict, metadata: dict[str, str] | None = None) -> FsPath:
    """Save a dict of tensors as safetensors at ``path`` atomically."""
    from safetensors.torch import save_file

    return atomic_write(path, to_name=lambda tmp: save_file(tensors, tmp, metadata=metadata))


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_config(path) -> dict:
    """Read a YAML (``yaml.safe_load``) or JSON mapping; a :class:`ConfigError` names the file and line."""
    p = FsPath(os.fspath(path))
    if p.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{p}: configuration files must end in .yaml, .yml or .json")
    if not p.is_file():
        raise ConfigError(f"no such configuration file: {p}")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    else:
        import yaml

        try:
            cfg = yaml_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{p}: malformed YAML{where}: {what}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: the configuration must be a mapping, got {type(cfg).__name__}")
    return cfg


def yaml_load(text: str):
    """``yaml.safe_load`` that refuses aliases (``*name``): a few lines of nested aliases expand without bound
    (the "billion laughs"), and a configuration never needs them. Raises ``yaml.YAMLError`` with the line."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                ev = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"aliases (*{ev.anchor}) are not allowed in configurations; write the value out",
                    ev.start_mark,
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass


def encode_array(a) -> dict:
    """A float64 array as JSON: ``{"shape": [...], "f64": base64 of its little-endian bytes}`` (bit-exact)."""
    import base64

    import numpy as np

    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    arr = np.ascontiguousarray(np.asarray(a, dtype="<f8"))
    return {"shape": list(arr.shape), "f64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(d, name: str) -> torch.Tensor:
    """The float64 tensor of :func:`encode_array`; a malformed value raises ``ValueError`` naming ``name``."""
    import base64
    import binascii

    import numpy as np

    if not isinstance(d, dict) or set(d) != {"shape", "f64"}:
        raise ValueError(f"{name} must be an encoded array {{'shape': [...], 'f64': base64}}, got {_brief(d)}")
    shape = d["shape"]
    if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape):
        raise ValueError(f"{name}.shape must be a list of non-negative integers, got {shape!r}")
    if not isinstance(d["f64"], str):
        raise ValueError(f"{name}.f64 must be a base64 string")
    try:
        raw = base64.b64decode(d["f64"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{name}.f64 is not valid base64") from None
    n = int(np.prod(shape)) if shape else 1
    if len(raw) != 8 * n:
        raise ValueError(f"{name}.f64 holds {len(raw) // 8} values, its shape {shape} needs {n}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(shape))


def _brief(v) -> str:
    r = repr(v)
    return r if len(r) < 60 else r[:57] + "..."
