"""Build a training run from a YAML/JSON configuration (what ``python -m pfode.train`` reads).

.. code-block:: yaml

    data: {name: toy2d, kind: moons, n: 20000, seed: 0}      # see pfode.data.load_dataset
    model: {name: mlp, width: 128, depth: 3}                  # pfode.nets.build; data_shape is filled in
    objective:                                                # pfode.train.losses.get_objective
      name: flow-matching
      time_sampler: u-shaped
      coupling: independent                                   # or {name: reflow, store: pairs/}
      # teacher: {checkpoint: runs/teacher}                   # consistency distillation: a pfode checkpoint
    train: {steps: 2000, batch_size: 256, lr: 1e-3}           # TrainConfig fields

The whole configuration is stored in every checkpoint (``spec``), so a checkpoint can rebuild its model
(:func:`model_from_checkpoint`) -- which is how a distillation teacher is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path as FsPath

import torch

from ..data import load_dataset
from ..nets import build as build_net
from ..predictions import Denoiser
from .checkpoint import load_weights, read_checkpoint
from .losses import get_objective
from .trainer import TrainConfig, Trainer

__all__ = ["load_config", "build", "make_trainer", "model_from_checkpoint", "SECTIONS"]

SECTIONS = ("data", "model", "objective", "train")


def load_config(path) -> dict:
    """Read a ``.yaml``/``.yml`` or ``.json`` configuration file."""
    path = FsPath(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text)
    elif path.suffix == ".json":
        cfg = json.loads(text)
    else:
        raise ValueError(f"{path}: configuration files must be .yaml, .yml or .json")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the configuration must be a mapping with sections {', '.join(SECTIONS)}")
    return cfg


def _check_sections(cfg: dict):
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown configuration sections {unknown}; valid sections: {', '.join(SECTIONS)}")
    for s in ("data", "model", "objective"):
        if not isinstance(cfg.get(s), dict):
            raise ValueError(f"the configuration needs a '{s}' mapping")


def model_from_checkpoint(path, which: str = "ema"):
    """Rebuild a reference network from a pfode checkpoint's stored configuration and load its weights.

    Returns ``(net, spec)`` where ``spec`` is the configuration the checkpoint was trained with.
    """
    ck = read_checkpoint(path)
    spec = ck.meta.get("spec") or {}
    mc = ck.meta.get("model_config") or spec.get("model")
    if not mc:
        raise ValueError(
            f"{ck.json_path} stores no model configuration; build the network yourself and use load_weights"
        )
    mc = dict(mc)
    name = mc.pop("name")
    net = build_net(name, **mc)
    obj = spec.get("objective", {})
    model = net
    if obj.get("name", "").startswith("consistency"):
        # only the parameterisation matters here: rebuild it without the (distillation) teacher
        opts = _objective_options(obj)
        if "path" in opts:
            opts["path"] = _path(opts["path"])
        model = get_objective("consistency-training", **opts).wrap(net)
    load_weights(model, ck.json_path, which)
    return model, spec


def _objective_options(obj: dict) -> dict:
    opts = {k: v for k, v in obj.items() if k not in ("name", "teacher")}
    if "t_range" in opts and opts["t_range"] is not None:
        opts["t_range"] = tuple(opts["t_range"])
    return opts


def _teacher(spec: dict) -> Denoiser:
    if not isinstance(spec, dict) or "checkpoint" not in spec:
        raise ValueError(
            "objective.teacher must be a mapping with 'checkpoint' (a pfode checkpoint folder or .json)"
        )
    net, tspec = model_from_checkpoint(spec["checkpoint"], spec.get("which", "ema"))
    tobj = tspec.get("objective", {})
    defaults = {"flow-matching": ("linear", "velocity")}.get(tobj.get("name"), ("vp", "eps"))
    path = spec.get("path", tobj.get("path", defaults[0]))
    pred = spec.get("prediction", tobj.get("prediction", defaults[1]))
    ti = spec.get("time_input", tobj.get("time_input", "t"))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Denoiser(net, _path(path), pred, ti)


def _path(p):
    from ..paths import get_path

    if isinstance(p, dict):
        p = dict(p)
        return get_path(p.pop("name"), **p)
    return get_path(p)


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
        opts["path"] = _path(opts["path"])
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
