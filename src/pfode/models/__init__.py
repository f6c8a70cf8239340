"""Small pretrained models shipped with pfode, and the loader for any pfode model file.

A *model* is the pair ``NAME.safetensors`` + ``NAME.json`` in the checkpoint format of
:mod:`pfode.train.checkpoint` (SHA-256, manifest, the training configuration ``spec``), holding only the EMA
weights (``ema/<name>``) -- what :func:`export` writes from a training checkpoint. A full training checkpoint
(a run folder, its ``checkpoints/`` folder, a ``step-*.json``) loads the same way. Nothing is unpickled.

Shipped (``pfode train configs/builtin_<name>.yaml`` reproduces each; see the README):

* ``digits``: scikit-learn's 8x8 digits, a small UNet, eps-prediction DSM on the cosine VP path;
* ``moons``: the 2-D two-moons toy, a residual MLP, flow matching (rectified flow) on the Linear path.

``load("builtin:digits")`` or ``load("path/to/model.json")`` returns a :class:`Model` whose ``denoiser``
plugs into :func:`pfode.sample`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import torch

__all__ = ["BUILTIN", "Model", "available", "builtin_file", "load", "denoiser_from_spec", "export"]

HERE = FsPath(__file__).resolve().parent
BUILTIN = ("digits", "moons")


def available() -> list[str]:
    """Names of the shipped models whose files are present."""
    return [n for n in BUILTIN if (HERE / f"{n}.json").is_file()]


def builtin_file(name: str) -> FsPath:
    """The JSON file of shipped model ``name``."""
    if name not in BUILTIN:
        raise ValueError(f"builtin model {name!r} is unknown; shipped models: {', '.join(BUILTIN)}")
    p = HERE / f"{name}.json"
    if not p.is_file():
        raise FileNotFoundError(f"the builtin model file {p} is missing from this installation")
    return p


@dataclass
class Model:
    """A loaded model: the :class:`pfode.Denoiser`, the sample shape and the training configuration."""

    name: str
    denoiser: object
    data_shape: tuple
    spec: dict
    meta: dict = field(default_factory=dict)
    net: torch.nn.Module | None = None

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3


def _path(p):
    from ..paths import get_path

    if isinstance(p, dict):
        p = dict(p)
        return get_path(p.pop("name"), **p)
    return get_path(p)


def denoiser_from_spec(net, spec: dict):
    """The :class:`pfode.Denoiser` of ``net`` trained with configuration ``spec`` (its ``objective``).

    Flow matching: velocity on its path (default ``linear``); consistency models: ``x0`` on their path
    (default ``edm``, the network already wrapped); DSM: ``prediction`` (default ``eps``) on ``path``
    (default ``vp``), with the configured ``time_input``.
    """
    from ..predictions import Denoiser

    obj = dict(spec.get("objective") or {})
    name = obj.get("name", "dsm")
    if name.startswith("consistency"):
        return Denoiser(net, _path(obj.get("path", "edm")), "x0", "t")
    if name == "flow-matching":
        return Denoiser(net, _path(obj.get("path", "linear")), "velocity", obj.get("time_input", "t"))
    return Denoiser(net, _path(obj.get("path", "vp")), obj.get("prediction", "eps"), obj.get("time_input", "t"))


def _which(meta: dict) -> str:
    keys = meta.get("manifest", {})
    return "ema" if any(k.startswith("ema/") for k in keys) else "model"


def load(spec_or_path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Model:
    """Load ``builtin:NAME`` or a model/checkpoint path (``.json``, ``.safetensors`` or a run folder).

    The EMA weights are used when present. Raises :class:`pfode.train.CheckpointError` (a ``ValueError``)
    or ``FileNotFoundError`` with a clear message for anything that is not a pfode model.
    """
    from ..train.checkpoint import CheckpointError, read_checkpoint
    from ..train.config import model_from_checkpoint

    s = os.fspath(spec_or_path)
    if s.startswith("builtin:"):
        p = builtin_file(s.split(":", 1)[1])
        name = s
    else:
        p = FsPath(s)
        name = s
        if not p.exists():
            raise FileNotFoundError(f"no such model file or folder: {p}")
        if p.is_dir() and not (p / "latest.json").is_file():
            if (p / "checkpoints" / "latest.json").is_file():
                p = p / "checkpoints"  # a training run's folder
            else:  # a folder holding one exported model pair
                pairs = sorted(j for j in p.glob("*.json") if j.with_suffix(".safetensors").is_file())
                if len(pairs) == 1:
                    p = pairs[0]
                elif len(pairs) > 1:
                    raise CheckpointError(f"{p} holds several models ({', '.join(j.name for j in pairs)}); name one")
    ck = read_checkpoint(p)
    which = _which(ck.meta)
    net, spec = model_from_checkpoint(ck.json_path, which)
    net = net.to(device=device, dtype=dtype).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    shape = getattr(net, "data_shape", None) or tuple(ck.meta.get("data", {}).get("shape") or ())
    if not shape:
        raise CheckpointError(f"{ck.json_path} does not state the shape of a sample (data.shape)")
    den = denoiser_from_spec(net, spec)
    return Model(name, den, tuple(int(d) for d in shape), spec, ck.meta, net)


def export(checkpoint, dest) -> tuple[FsPath, FsPath]:
    """Write the EMA weights of a training checkpoint as the model pair ``dest.safetensors`` + ``dest.json``.

    ``checkpoint``: a run's ``checkpoints/`` folder, a ``step-*.json`` or a model file. ``dest``: the path
    without suffix (``src/pfode/models/digits``). The JSON keeps the configuration and the step; the
    optimizer state and RNG states are dropped. Both files are written atomically (tensors first).
    """
    from ..train.checkpoint import FORMAT, VERSION, atomic_save_tensors, atomic_write_bytes, read_checkpoint
    from ..train.checkpoint import sha256_file as _sha

    ck = read_checkpoint(checkpoint)
    which = _which(ck.meta)
    tensors = {f"ema/{k}": v.contiguous() for k, v in ck.section(which).items()}
    dest = FsPath(os.fspath(dest))
    if dest.suffix in (".json", ".safetensors"):
        dest = dest.with_suffix("")
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = dest.parent / f"{dest.name}.safetensors"
    js = dest.parent / f"{dest.name}.json"
    atomic_save_tensors(st, tensors, metadata={"format": FORMAT})
    keep = ("config", "spec", "objective", "model_config", "data", "loss")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": ck.step,
        "tensor_file": st.name,
        "sha256": _sha(st),
        "manifest": {
            k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()
        },
        "exported_from": ck.json_path.name,
        **{k: ck.meta[k] for k in keep if k in ck.meta},
    }
    atomic_write_bytes(js, json.dumps(meta, indent=1, sort_keys=True).encode())
    from ..plots import file_mode

    for f in (st, js):  # the atomic writers leave mkstemp's 0o600
        os.chmod(f, file_mode())
    return st, js
