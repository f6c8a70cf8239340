"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint ``step-00001000`` in a folder is two files:

* ``step-00001000.safetensors`` -- every tensor: ``model/<name>`` (the state dict), ``ema/<name>``,
  ``optim/<param index>/<state key>`` (optimizer state tensors such as Adam's moments and step),
  ``rng/<name>`` (torch generator states as uint8 tensors);
* ``step-00001000.json`` -- the step, the configuration, the optimizer's non-tensor structure
  (``param_groups`` and scalar state), a manifest (dtype and shape of every tensor) and the SHA-256 of the
  tensor file;

plus ``latest.json`` naming the newest complete checkpoint. Every file is written to a temporary name,
flushed and moved into place with ``os.replace`` (tensors first, then the JSON, then the pointer), so a
crash at any moment leaves the previous checkpoint intact. Reading never unpickles: a file that is not
safetensors is refused; keys, shapes and dtypes are checked strictly and every problem is listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path as FsPath

import torch

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "read_checkpoint",
    "check_tensors",
    "flatten_optimizer",
    "unflatten_optimizer",
    "latest_checkpoint",
    "load_weights",
    "FORMAT",
]

FORMAT = "pfode-train-checkpoint"
VERSION = 1
POINTER = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: wrong format, wrong or missing keys, shapes or dtypes."""


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (``mkstemp`` uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_replace(tmp: str, dst: FsPath):
    os.chmod(tmp, _file_mode())
    os.replace(tmp, dst)
    try:  # make the rename durable where the platform allows it
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - e.g. Windows
        pass


def atomic_write_bytes(path: FsPath, data: bytes):
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = FsPath(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_tensors(
    path: FsPath, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
):
    from safetensors.torch import save_file

    path = FsPath(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _fsync_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- optimizer state ----------------------------------------------------------------------------
def _json_scalar(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_scalar(x) for x in v]
    raise CheckpointError(f"optimizer state value of type {type(v).__name__} cannot be stored without pickle")


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``optim/<pid>/<key>`` and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, st in state_dict["state"].items():
        entry = {}
        for k, v in st.items():
            if "/" in str(k):
                raise CheckpointError(f"optimizer state key {k!r} contains '/'")
            if isinstance(v, torch.Tensor):
                key = f"optim/{pid}/{k}"
                tensors[key] = v.detach()
                entry[k] = {"tensor": key}
            else:
                entry[k] = {"value": _json_scalar(v)}
        state_meta[str(pid)] = entry
    groups = []
    for g in state_dict["param_groups"]:
        groups.append({k: _json_scalar(v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "state": state_meta}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state = {}
    for pid, entry in meta["state"].items():
        st = {}
        for k, spec in entry.items():
            if "tensor" in spec:
                if spec["tensor"] not in tensors:
                    raise CheckpointError(
                        f"optimizer tensor {spec['tensor']!r} is missing from the tensor file"
                    )
                st[k] = tensors[spec["tensor"]]
            else:
                st[k] = tuple(spec["value"]) if isinstance(spec["value"], list) else spec["value"]
        state[int(pid)] = st
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        for k, v in g.items():
            if isinstance(v, list) and k != "params":
                g[k] = tuple(v)
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- strict checks ------------------------------------------------------------------------------
def check_tensors(
    expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, source: str = ""
):
    """Raise :class:`CheckpointError` listing missing and unexpected keys and shape/dtype mismatches."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad = []
    for k in sorted(set(expected) & set(got)):
        e, g = expected[k], got[k]
        if tuple(e.shape) != tuple(g.shape):
            bad.append(f"{k}: shape {tuple(g.shape)} in the checkpoint, {tuple(e.shape)} expected")
        elif e.dtype != g.dtype:
            bad.append(f"{k}: dtype {g.dtype} in the checkpoint, {e.dtype} expected")
    if missing or unexpected or bad:
        lines = [f"{what} in {source or 'the checkpoint'} does not match:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for b in bad:
            lines.append(f"  {b}")
        raise CheckpointError("\n".join(lines))


def _check_safetensors_file(path: FsPath):
    """Refuse anything that is not a safetensors file before any parser sees it.

    A safetensors file is an 8-byte little-endian header length ``n``, then ``n`` bytes of a JSON object.
    Only when that structure is absent do the first bytes name the likely culprit.
    """
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint tensor file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        ok = False
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            if 2 <= n <= size - 8 and n <= 100_000_000:
                raw = f.read(n)
                try:
                    ok = raw[:1] == b"{" and isinstance(json.loads(raw), dict)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    ok = False
    if ok:
        return
    if head[:2] == b"PK":
        why = "it is a zip archive, the format of torch.save"
    elif head[:1] == b"\x80":
        why = "it is a Python pickle"
    elif len(head) < 8:
        why = "it is too short"
    else:
        why = "it has no valid safetensors header"
    raise CheckpointError(
        f"{path} is not a safetensors file ({why}); pfode only loads safetensors because unpickling a "
        "checkpoint (torch.load) can run arbitrary code. Convert a trusted file once with "
        "safetensors.torch.save_file(state_dict, 'model.safetensors')"
    )


# --- save / read --------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` (the JSON) and ``tensors`` (name -> tensor)."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    json_path: FsPath

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix.rstrip("/") + "/"
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def _name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    folder,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    keep: int | None = None,
) -> FsPath:
    """Write tensors and JSON for ``step`` atomically into ``folder`` and point ``latest.json`` at them.

    ``tensors`` are stored as given (names must be unique strings); ``meta`` must be JSON-serialisable.
    With ``keep`` only the newest ``keep`` checkpoints stay. Returns the JSON file's path.
    """
    folder = FsPath(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = _name(step)
    clean = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{k}: only tensors go into the tensor file, got {type(v).__name__}")
        clean[k] = v.detach().to("cpu").contiguous().clone()
    st_path = folder / f"{name}.safetensors"
    # one metadata entry only: safetensors writes a map in arbitrary order, and equal checkpoints
    # should be equal files
    atomic_save_tensors(st_path, clean, metadata={"format": FORMAT})
    full = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "tensor_file": st_path.name,
        "sha256": sha256_file(st_path),
        "manifest": {
            k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in clean.items()
        },
        **meta,
    }
    js_path = folder / f"{name}.json"
    atomic_write_bytes(js_path, json.dumps(full, indent=1, sort_keys=True).encode())
    atomic_write_bytes(folder / POINTER, json.dumps({"format": FORMAT, "latest": js_path.name}).encode())
    if keep is not None and keep > 0:
        olds = sorted(p for p in folder.glob("step-*.json") if p.name != js_path.name)
        for p in olds[: max(0, len(olds) - (keep - 1))]:
            p.unlink(missing_ok=True)
            p.with_suffix(".safetensors").unlink(missing_ok=True)
    return js_path


def latest_checkpoint(folder) -> FsPath | None:
    """The JSON path ``latest.json`` in ``folder`` points to, or ``None`` when there is none."""
    ptr = FsPath(folder) / POINTER
    if not ptr.is_file():
        return None
    p = json.loads(ptr.read_text())
    return FsPath(folder) / p["latest"]


def read_checkpoint(path) -> Checkpoint:
    """Load a checkpoint from its JSON, its tensor file, or a folder (its ``latest.json``), never unpickling.

    Checks that the tensor file is safetensors, that its SHA-256 matches the JSON and that its tensors are
    exactly the manifest's (names, dtypes, shapes).
    """
    from safetensors.torch import load_file

    path = FsPath(path)
    if path.is_dir():
        js = latest_checkpoint(path)
        if js is None:
            raise CheckpointError(f"{path} holds no checkpoint ({POINTER} is missing)")
    elif path.suffix == ".json":
        js = path
    elif path.suffix == ".safetensors":
        js = path.with_suffix(".json")
        if not js.is_file():
            _check_safetensors_file(path)
            raise CheckpointError(
                f"{path} has no companion {js.name} (the step, config and optimizer structure)"
            )
    else:
        if path.is_file():
            _check_safetensors_file(path)  # raises with the reason for pickles and the like
        raise CheckpointError(f"{path}: give a checkpoint folder, its .json or its .safetensors file")
    if not js.is_file():
        raise CheckpointError(f"no such checkpoint: {js}")
    try:
        meta = json.loads(js.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{js} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{js} is not a pfode training checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{js}: checkpoint version {meta.get('version')!r}, this pfode reads {VERSION}")
    st = js.parent / meta["tensor_file"]
    _check_safetensors_file(st)
    if sha256_file(st) != meta["sha256"]:
        raise CheckpointError(
            f"{st} does not match the SHA-256 recorded in {js.name} (a torn or replaced file)"
        )
    tensors = load_file(str(st))
    manifest = meta["manifest"]
    expected = {
        k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta")
        for k, v in manifest.items()
    }
    check_tensors(expected, tensors, "the tensor file", str(st))
    return Checkpoint(meta, tensors, js)


def load_weights(model: torch.nn.Module, path, which: str = "ema") -> dict:
    """Load the ``"ema"`` or ``"model"`` weights of a checkpoint into ``model`` (strict); return its JSON."""
    if which not in ("ema", "model"):
        raise ValueError(f"which={which!r} is unknown; valid values: ema, model")
    ck = read_checkpoint(path)
    sd = ck.section(which)
    check_tensors(model.state_dict(), sd, f"the {which} weights", str(ck.json_path))
    model.load_state_dict(sd, strict=True)
    return ck.meta
