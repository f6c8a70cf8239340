"""Small pretrained models shipped with pfode, and the loader for any pfode model file.

A *model* is the pair ``NAME.safetensors`` + ``NAME.json`` in the checkpoint format of :mod:`pfode.checkpoint`
(SHA-256, manifest, the network's configuration ``model_config``, the description of its denoiser
``denoiser`` -- path, prediction type, time input -- and the training configuration ``spec``), holding only
the EMA weights (``ema/<name>``) -- what :func:`export` writes from a training checkpoint. A full training
checkpoint (a run folder, its ``checkpoints/`` folder, a ``step-*.json``) loads the same way. Nothing is
unpickled, and nothing is guessed: a file without its ``denoiser`` description is refused.

Shipped (``pfode train configs/builtin_<name>.yaml`` reproduces each; see the README):

* ``digits``: scikit-learn's 8x8 digits, a small UNet, eps-prediction DSM on the cosine VP path;
* ``moons``: the 2-D two-moons toy, a residual MLP, flow matching (rectified flow) on the Linear path.

``load("builtin:digits")`` or ``load("path/to/model.json")`` returns a :class:`Model` whose ``denoiser``
plugs into :func:`pfode.sample`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import torch

from ..checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_pair
from ..predictions import Denoiser

__all__ = ["BUILTIN", "DTYPES", "Model", "available", "builtin_file", "build_net", "load", "export"]

HERE = FsPath(__file__).resolve().parent
BUILTIN = ("digits", "moons")
#: the dtypes :func:`load` accepts
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dtypes() -> str:
    return ", ".join(f"torch.{str(d).removeprefix('torch.')}" for d in DTYPES)


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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's weights (``load``'s ``dtype``): give :func:`pfode.sample` states in it,
        e.g. ``torch.randn(n, *model.data_shape, dtype=model.dtype)``."""
        for p in self.net.parameters() if self.net is not None else ():
            if p.is_floating_point():
                return p.dtype
        return torch.float32


def build_net(config: dict) -> torch.nn.Module:
    """Rebuild a network from the ``model_config`` a checkpoint stores (its ``config()``): a reference network
    of :mod:`pfode.nets` or a consistency model wrapping one."""
    from .. import nets
    from ..paths import get_path

    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"a network configuration must be a mapping with a 'name', got {config!r}")
    opts = dict(config)
    name = opts.pop("name")
    if name == "consistency":
        from ..nets.consistency import ConsistencyModel

        inner, path = build_net(opts.pop("net")), get_path(opts.pop("path"))
        return ConsistencyModel(inner, path, **opts)
    if name == "ctm":
        from ..nets.ctm import CTMModel

        inner, path = build_net(opts.pop("net")), get_path(opts.pop("path"))
        return CTMModel(inner, path, **opts)
    return nets.build(name, **opts)


def _which(meta: dict) -> str:
    return "ema" if any(k.startswith("ema/") for k in meta.get("manifest", {})) else "model"


def _denoiser_spec(ck: Checkpoint) -> dict:
    spec = ck.meta.get("denoiser")
    if spec is None and (ck.meta.get("model_config") or {}).get("name") == "interpolant":
        raise CheckpointError(
            f"{ck.json_path} holds a data-to-data interpolant model, not a denoiser: load it with "
            "pfode.interpolants.load_model, or transport data with pfode sample --from DATA"
        )
    if spec is None:
        raise CheckpointError(
            f"{ck.json_path} has no 'denoiser' description (the path, prediction type and time input of the "
            "network; pfode writes it into every checkpoint since that format was introduced, older files lack "
            "it); re-export it with pfode.models.export(checkpoint, dest, denoiser=pfode.Denoiser(net, path, "
            "prediction, time_input).spec())"
        )
    return spec


def load(
    spec_or_path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, which: str | None = None
) -> Model:
    """Load ``builtin:NAME`` or a model/checkpoint path (``.json``, ``.safetensors`` or a run folder).

    ``which``: ``"ema"`` or ``"model"`` weights; by default the EMA weights where present. The
    :class:`pfode.Denoiser` is built from the file's ``denoiser`` description.

    ``dtype``: the dtype of the weights, and of the states the model samples: ``torch.float32`` (default),
    ``torch.float64``, ``torch.float16`` or ``torch.bfloat16``. Every fixed-step solver keeps the state in that
    dtype (``x_T`` in float16 gives float16 samples; the adaptive ``dopri5`` and ``dpm-adaptive`` do not run in
    float16/bfloat16); grids and solver coefficients stay float64 on the host, the
    time embedding is computed in float32 and cast to the weights' dtype. Give ``x_T`` in the model's dtype
    (:attr:`Model.dtype`): a state of another dtype is refused with a ``TypeError`` rather than cast silently.
    Half precision is meant for GPUs: on a CPU without native float16/bfloat16 support PyTorch's convolutions
    take a slow fallback (the digits UNet runs 8-16 times slower than in float32). Raises
    :class:`pfode.checkpoint.CheckpointError` (a ``ValueError``) or ``FileNotFoundError`` with a clear message
    for anything that is not a pfode model, or a file without that description.
    """
    if dtype not in DTYPES:
        raise TypeError(f"dtype={dtype!r} is not a floating-point dtype a model can run in; valid: {_dtypes()}")
    s = os.fspath(spec_or_path)
    if s.startswith("builtin:"):
        p = builtin_file(s.split(":", 1)[1])
    else:
        p = FsPath(s)
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
    dspec = _denoiser_spec(ck)
    if not ck.meta.get("model_config"):
        raise CheckpointError(f"{ck.json_path} stores no model_config (the network's configuration)")
    net = build_net(ck.meta["model_config"])
    ck.load_into(net, which or _which(ck.meta))
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    shape = getattr(net, "data_shape", None) or tuple(ck.meta.get("data", {}).get("shape") or ())
    if not shape:
        raise CheckpointError(f"{ck.json_path} does not state the shape of a sample (data.shape)")
    den = Denoiser.from_spec(net, dspec)
    return Model(s, den, tuple(int(d) for d in shape), ck.meta.get("spec") or {}, ck.meta, net)


def export(checkpoint, dest, denoiser: dict | None = None) -> tuple[FsPath, FsPath]:
    """Write the EMA weights of a training checkpoint as the model pair ``dest.safetensors`` + ``dest.json``.

    ``checkpoint``: a run's ``checkpoints/`` folder, a ``step-*.json`` or a model file. ``dest``: the path
    without suffix (``src/pfode/models/digits``). ``denoiser``: a :meth:`pfode.Denoiser.spec` description, for
    a checkpoint written without one (it replaces the stored one otherwise). The JSON keeps the network and
    training configurations, the denoiser description and the step; the optimizer state and RNG states are
    dropped. Both files are written atomically (tensors first).
    """
    ck = read_checkpoint(checkpoint)
    if denoiser is not None:
        Denoiser.from_spec(lambda x, t: x, denoiser)  # check it now, not at load time
    else:
        denoiser = _denoiser_spec(ck)
    tensors = {f"ema/{k}": v.contiguous() for k, v in ck.section(_which(ck.meta)).items()}
    dest = FsPath(os.fspath(dest))
    if dest.suffix in (".json", ".safetensors"):
        dest = dest.with_suffix("")
    keep = ("config", "spec", "objective", "model_config", "data", "loss")
    meta = {"step": ck.step, "exported_from": ck.json_path.name, "denoiser": denoiser}
    meta.update({k: ck.meta[k] for k in keep if k in ck.meta})
    js = write_pair(dest.parent, dest.name, tensors, meta)
    return js.with_suffix(".safetensors"), js
