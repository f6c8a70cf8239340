"""The pfode checkpoint format, without pickle: tensors in safetensors, everything else in JSON.

A checkpoint ``step-00001000`` in a folder is two files:

* ``step-00001000.safetensors`` -- every tensor: ``model/<name>`` (the state dict), ``ema/<name>``,
  ``optim/<param index>/<state key>`` (optimizer state tensors such as Adam's moments and step),
  ``rng/<name>`` (torch generator states as uint8 tensors);
* ``step-00001000.json`` -- the step, the training configuration, the optimizer's non-tensor structure,
  the network's configuration (``model_config``), the description of its :class:`pfode.Denoiser`
  (``denoiser``), a manifest (dtype and shape of every tensor) and the SHA-256 of the tensor file;

plus ``latest.json`` naming the newest complete checkpoint. An exported model (:func:`pfode.models.export`)
is the same pair holding only ``ema/<name>``. Every file is written atomically through :mod:`pfode.io`
(tensors first, then the JSON, then the pointer), so a crash at any moment leaves the previous checkpoint
intact. Reading never unpickles: a file that is not safetensors is refused; keys, shapes and dtypes are
checked strictly and every problem is listed.

This module sits below :mod:`pfode.models` and :mod:`pfode.train` (it imports neither).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path as FsPath

import torch

from .io import atomic_save_tensors, atomic_write_bytes, sha256_file

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "write_pair",
    "save_checkpoint",
    "read_checkpoint",
    "check_tensors",
    "latest_checkpoint",
    "load_weights",
    "flatten_optimizer",
    "unflatten_optimizer",
    "FORMAT",
    "VERSION",
]

FORMAT = "pfode-train-checkpoint"
VERSION = 1
POINTER = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: wrong format, wrong or missing keys, shapes or dtypes."""


# --- strict checks ------------------------------------------------------------------------------
def check_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, source: str = ""):
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
    else:
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) < 8:
            what = "it is too short to hold a header"
        elif n > size - 8:
            what = f"its header announces {n} bytes, more than the file's {size - 8}: the file is truncated"
        else:
            what = "its header is not the JSON object safetensors writes"
        raise CheckpointError(
            f"{path} is a damaged or incomplete safetensors file ({what}); copy it again or use an intact copy"
        )
    raise CheckpointError(
        f"{path} is not a safetensors file ({why}); pfode only loads safetensors because unpickling a "
        "checkpoint (torch.load) can run arbitrary code. Convert a trusted file once with "
        "safetensors.torch.save_file(state_dict, 'model.safetensors')"
    )


# --- optimizer state ----------------------------------------------------------------------------
def _json_value(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    raise CheckpointError(f"optimizer state value of type {type(v).__name__} cannot be stored without pickle")


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``optim/<pid>/<key>`` and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict] = {}
    for pid, st in state_dict["state"].items():
        entry = state[str(pid)] = {}
        for k, v in st.items():
            if "/" in str(k):
                raise CheckpointError(f"optimizer state key {k!r} contains '/'")
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v.detach()
                entry[k] = {"tensor": f"optim/{pid}/{k}"}
            else:
                entry[k] = {"value": _json_value(v)}
    groups = [{k: _json_value(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "state": state}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state = {}
    for pid, entry in meta["state"].items():
        st = state[int(pid)] = {}
        for k, spec in entry.items():
            if "tensor" not in spec:
                st[k] = tuple(spec["value"]) if isinstance(spec["value"], list) else spec["value"]
            elif spec["tensor"] in tensors:
                st[k] = tensors[spec["tensor"]]
            else:
                raise CheckpointError(f"optimizer tensor {spec['tensor']!r} is missing from the tensor file")
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


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

    def load_into(self, model: torch.nn.Module, which: str = "ema"):
        """Load the ``"ema"`` or ``"model"`` weights into ``model`` after checking keys, shapes and dtypes."""
        if which not in ("ema", "model"):
            raise ValueError(f"which={which!r} is unknown; valid values: ema, model")
        sd = self.section(which)
        check_tensors(model.state_dict(), sd, f"the {which} weights", str(self.json_path))
        model.load_state_dict(sd, strict=True)


def _name(step: int) -> str:
    return f"step-{step:08d}"


def write_pair(folder, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> FsPath:
    """Write ``name.safetensors`` then ``name.json`` (``meta`` plus format, version, manifest and SHA-256).

    Tensors are stored as given (contiguous, on the CPU); ``meta`` must be JSON-serialisable. Returns the
    JSON file's path.
    """
    folder = FsPath(folder)
    st_path = folder / f"{name}.safetensors"
    # one metadata entry only: safetensors writes a map in arbitrary order, and equal checkpoints
    # should be equal files
    atomic_save_tensors(st_path, tensors, metadata={"format": FORMAT})
    full = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "tensor_file": st_path.name,
        "sha256": sha256_file(st_path),
        "manifest": {
            k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()
        },
    }
    js_path = folder / f"{name}.json"
    atomic_write_bytes(js_path, json.dumps(full, indent=1, sort_keys=True).encode())
    return js_path


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
    clean = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{k}: only tensors go into the tensor file, got {type(v).__name__}")
        clean[k] = v.detach().to("cpu").contiguous().clone()
    js_path = write_pair(folder, _name(step), clean, {**meta, "step": int(step)})
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
    exactly the manifest's (names, dtypes, shapes). The tensor file is the one the JSON names, or the JSON's
    own name with ``.safetensors`` (an exported pair may be renamed). From a folder whose latest checkpoint is
    damaged (truncated, torn), the newest intact earlier one is loaded with a warning; a damaged file named
    directly raises, naming an intact earlier checkpoint of its folder if there is one.
    """
    path = FsPath(path)
    if path.is_dir():
        js = latest_checkpoint(path)
        if js is None:
            raise CheckpointError(f"{path} holds no checkpoint ({POINTER} is missing)")
        try:
            return _read_pair(js)
        except CheckpointError as e:
            for other in _earlier(js):
                try:
                    ck = _read_pair(other)
                except CheckpointError:
                    continue
                warnings.warn(f"{e}; loaded the newest intact earlier checkpoint, {other.name}", stacklevel=2)
                return ck
            raise
    if path.suffix == ".json":
        js = path
    elif path.suffix == ".safetensors":
        js = path.with_suffix(".json")
        if not js.is_file():
            _check_safetensors_file(path)
            raise CheckpointError(f"{path} has no companion {js.name} (the step, config and optimizer structure)")
    else:
        if path.is_file():
            _check_safetensors_file(path)  # raises with the reason for pickles and the like
        raise CheckpointError(f"{path}: give a checkpoint folder, its .json or its .safetensors file")
    try:
        return _read_pair(js)
    except CheckpointError as e:
        for other in _earlier(js):
            try:
                _read_pair(other)
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{e}. An intact earlier checkpoint is {other}; load it, or give the folder to fall back to it"
            ) from None
        raise


def _earlier(js: FsPath) -> list[FsPath]:
    """The other training checkpoints of ``js``'s folder that are older than it, newest first."""
    if not js.name.startswith("step-"):
        return []
    return sorted((p for p in js.parent.glob("step-*.json") if p.name < js.name), reverse=True)


def _read_pair(js: FsPath) -> Checkpoint:
    from safetensors.torch import load_file

    if not js.is_file():
        raise CheckpointError(f"no such checkpoint: {js}")
    try:
        meta = json.loads(js.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{js} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{js} is not a pfode training checkpoint (format {fmt!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{js}: checkpoint version {meta.get('version')!r}, this pfode reads {VERSION}")
    st = js.parent / str(meta.get("tensor_file", ""))
    if not st.is_file() and js.with_suffix(".safetensors").is_file():  # the pair was renamed
        st = js.with_suffix(".safetensors")
    if not st.is_file():
        raise CheckpointError(
            f"{js} names the tensor file {meta.get('tensor_file')!r}, which is missing, and there is no "
            f"{js.with_suffix('.safetensors').name} beside it"
        )
    _check_safetensors_file(st)
    if sha256_file(st) != meta["sha256"]:
        raise CheckpointError(
            f"{st} does not match the SHA-256 recorded in {js.name} (a truncated, torn or replaced file)"
        )
    tensors = load_file(str(st))
    manifest = meta["manifest"]
    expected = {
        k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in manifest.items()
    }
    check_tensors(expected, tensors, "the tensor file", str(st))
    return Checkpoint(meta, tensors, js)


def load_weights(model: torch.nn.Module, path, which: str = "ema") -> dict:
    """Load the ``"ema"`` or ``"model"`` weights of a checkpoint into ``model`` (strict); return its JSON."""
    ck = read_checkpoint(path)
    ck.load_into(model, which)
    return ck.meta
