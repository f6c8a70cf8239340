"""Build a training run from a YAML/JSON configuration (what ``python -m pfode.train`` reads).

.. code-block:: yaml

    data: {name: toy2d, kind: moons, n: 20000, seed: 0}      # see pfode.data.load_dataset
    model: {name: mlp, width: 128, depth: 3}                  # pfode.nets.build; data_shape is filled in
    objective:                                                # pfode.train.losses.get_objective
      name: flow-matching
      time_sampler: u-shaped
      coupling: independent                                   # or {name: reflow, store: pairs/}
      # teacher: {checkpoint: runs/teacher}                   # consistency distillation: a pfode checkpoint
    train: {iterations: 2000, batch_size: 256, lr: 1e-3}      # TrainConfig fields

The whole configuration is stored in every checkpoint (``spec``), next to the network's configuration and the
description of its denoiser, so :func:`pfode.models.load` rebuilds a trained model from a checkpoint alone --
which is how a distillation teacher is loaded.
"""

from __future__ import annotations

import json
import os

import torch

from ..data import load_dataset
from ..models import load
from ..nets import build as build_net
from ..paths import get_path
from ..predictions import Denoiser
from .losses import get_objective
from .trainer import TrainConfig, Trainer

__all__ = ["build", "make_trainer", "SECTIONS"]

SECTIONS = ("data", "model", "objective", "train")
_path = get_path  # a path name or description (the command line checks configurations with it)


def _check_sections(cfg: dict):
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown configuration sections {unknown}; valid sections: {', '.join(SECTIONS)}")
    for s in ("data", "model", "objective"):
        if not isinstance(cfg.get(s), dict):
            raise ValueError(f"the configuration needs a '{s}' mapping")


def _objective_options(obj: dict) -> dict:
    opts = {k: v for k, v in obj.items() if k not in ("name", "teacher")}
    if "t_range" in opts and opts["t_range"] is not None:
        opts["t_range"] = tuple(opts["t_range"])
    return opts


def _teacher(spec: dict) -> Denoiser:
    """The distillation teacher ``{"checkpoint": ..., "which": "ema"}``: a trained pfode model, frozen."""
    if not isinstance(spec, dict) or "checkpoint" not in spec:
        raise ValueError(
            "objective.teacher must be a mapping with 'checkpoint' (a pfode checkpoint folder or .json)"
        )
    unknown = sorted(set(spec) - {"checkpoint", "which"})
    if unknown:
        raise ValueError(
            f"objective.teacher key {unknown[0]!r} is unknown; valid keys: checkpoint, which (the path, "
            "prediction and time input come from the checkpoint's denoiser description)"
        )
    return load(spec["checkpoint"], which=spec.get("which", "ema")).denoiser


def build(cfg: dict) -> dict:
    """``{"model", "objective", "data", "train", "spec"}`` from a configuration dict."""
    _check_sections(cfg)
    train = TrainConfig.from_dict(dict(cfg.get("train") or {}))
    data = load_dataset(cfg["data"])
    x = data[0] if isinstance(data, tuple) else data
    obj_cfg = dict(cfg["objective"])
    if "name" not in obj_cfg:
        raise ValueError("objective needs a 'name'")
    name = obj_cfg["name"]
    opts = _objective_options(obj_cfg)
    if "path" in opts:
        opts["path"] = get_path(opts["path"])
    if "teacher" in obj_cfg:
        opts["teacher"] = _teacher(obj_cfg["teacher"])
    objective = get_objective(name, **opts)
    mc = dict(cfg["model"])
    if "name" not in mc:
        raise ValueError("model needs a 'name' (mlp or unet)")
    mname = mc.pop("name")
    mc.setdefault("data_shape", list(x.shape[1:]))
    torch.manual_seed(train.seed)  # the initial weights follow the seed
    net = build_net(mname, **mc)
    return {"model": net, "objective": objective, "data": data, "train": train, "spec": cfg}


def make_trainer(cfg: dict, out_dir, resume: bool = False, **overrides) -> Trainer:
    """Build everything from ``cfg`` (``overrides`` replace training options); return the :class:`Trainer`."""
    cfg = json.loads(json.dumps(cfg))  # a private, JSON-clean copy
    cfg.setdefault("train", {}).update(overrides)
    b = build(cfg)
    os.makedirs(out_dir, exist_ok=True)
    return Trainer(b["model"], b["objective"], b["data"], b["train"], out_dir, spec=cfg, resume=resume)
