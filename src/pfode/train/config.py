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

:func:`check_config` checks a configuration strictly before anything is built or written. The whole
configuration is stored in every checkpoint (``spec``), next to the network's configuration and the
description of its denoiser, so :func:`pfode.models.load` rebuilds a trained model from a checkpoint alone --
which is how a distillation teacher is loaded.
"""

from __future__ import annotations

import inspect
import json
import os

import torch

from ..data import DATASETS, TOYS, load_dataset
from ..models import load
from ..nets import NETS
from ..nets import build as build_net
from .losses import OBJECTIVES, Consistency, DenoisingScoreMatching, FlowMatching, get_objective
from .trainer import TrainConfig, Trainer

__all__ = ["build", "check_config", "make_trainer", "SECTIONS"]

SECTIONS = ("data", "model", "objective", "train")
DATA_KEYS = {
    "toy2d": {"kind", "n", "seed"},
    "digits": set(),
    "array": {"path", "key"},
    "image-folder": {"path", "size", "mode", "recursive"},
    "reflow-pairs": {"path", "verify"},
}


def _params(cls, drop=()) -> set:
    """Names of the keyword arguments of ``cls.__init__``."""
    sig = inspect.signature(cls.__init__).parameters.items()
    return {n for n, p in sig if n != "self" and n not in drop and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _objective_keys(name: str) -> set:
    if name == "dsm":
        return _params(DenoisingScoreMatching)
    if name == "flow-matching":
        return _params(FlowMatching) | {"gamma", "sigma_data", "sigmoid_bias"}
    if name == "mean-reverting":
        from .mean_reverting import MeanRevertingObjective

        return _params(MeanRevertingObjective)
    if name == "interpolant":
        from ..interpolants import InterpolantObjective

        return _params(InterpolantObjective)
    if name in ("distill", "rectified-diffusion"):
        from .distill import Distillation, RectifiedDiffusion

        return _params(Distillation if name == "distill" else RectifiedDiffusion)
    if name == "idode":
        from .idode import LikelihoodDSM

        return _params(LikelihoodDSM)
    if name == "dsm-fp":
        from ..fokker_planck import FokkerPlanckDSM

        return _params(DenoisingScoreMatching) | _params(FokkerPlanckDSM)
    if name in ("consistency-fm", "ctm"):
        from .consistency_fm import ConsistencyFM
        from .ctm import CTM

        return _params(ConsistencyFM if name == "consistency-fm" else CTM)
    return _params(Consistency, drop=("mode",) if name == "consistency-distillation" else ("mode", "teacher"))


def _choice(key: str, value, valid, what: str = "names"):
    if value not in valid:
        raise ValueError(f"{key}={value!r} is unknown; valid {what}: {', '.join(valid)}")
    return value


def _known_keys(section: str, got: dict, valid: set, what: str):
    bad = sorted(set(got) - valid - {"name"})
    if bad:
        raise ValueError(
            f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(section + '.' + b for b in bad)} for {what}; "
            f"valid keys: {', '.join(sorted(valid | {'name'}))}"
        )


def _checked(section: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its ``ValueError``/``TypeError`` prefixed with the section."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{section}: {e}") from None


def _check_teacher(spec):
    if not isinstance(spec, dict) or "checkpoint" not in spec:
        raise ValueError("objective.teacher must be a mapping with 'checkpoint' (a pfode checkpoint folder or .json)")
    unknown = sorted(set(spec) - {"checkpoint", "which"})
    if unknown:
        raise ValueError(
            f"objective.teacher key {unknown[0]!r} is unknown; valid keys: checkpoint, which (the path, "
            "prediction and time input come from the checkpoint's denoiser description)"
        )


def check_config(cfg: dict) -> dict:
    """Check a training configuration strictly (``ValueError`` naming the key); returns ``cfg`` unchanged."""
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    for s in SECTIONS:
        if s not in cfg and s != "train":
            raise ValueError(f"missing section {s!r} (sections: {', '.join(SECTIONS)})")
        if not isinstance(cfg.get(s) or {}, dict):
            raise ValueError(f"section {s!r} must be a mapping, got {type(cfg[s]).__name__}")
    data = cfg["data"] or {}
    name = _choice("data.name", data.get("name"), DATASETS)
    _known_keys("data", data, DATA_KEYS[name], f"dataset {name!r}")
    if name == "toy2d":
        _choice("data.kind", data.get("kind"), TOYS, "kinds")
        for k, least in (("n", 1), ("seed", 0)):
            v = data.get(k, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"data.{k}={v!r} must be an integer >= {least}")
    elif name != "digits" and not isinstance(data.get("path"), str):
        raise ValueError(f"data.path is required for dataset {name!r}")
    model = dict(cfg["model"] or {})
    name = _choice("model.name", model.pop("name", None), NETS)
    _known_keys("model", model, _params(NETS[name]), f"network {name!r}")
    _checked("model", build_net, name, **model)
    obj = dict(cfg["objective"] or {})
    name = _choice("objective.name", obj.pop("name", None), OBJECTIVES)
    _known_keys("objective", obj, _objective_keys(name), f"objective {name!r}")
    if name in ("consistency-distillation", "ctm"):
        _check_teacher(obj.get("teacher"))
        if name == "ctm":  # its other options, with a stand-in teacher (the checkpoint is loaded by build)
            from ..paths import get_path
            from ..predictions import Denoiser

            stand_in = Denoiser(lambda x, t: x, get_path("linear"), "x0")
            _checked("objective", get_objective, name, **{**obj, "teacher": stand_in})
    else:
        _checked("objective", get_objective, name, **obj)
    _checked("train", TrainConfig.from_dict, dict(cfg.get("train") or {}))
    return cfg


def build(cfg: dict) -> dict:
    """``{"model", "objective", "data", "train", "spec"}`` from a configuration dict (checked first)."""
    check_config(cfg)
    train = TrainConfig.from_dict(dict(cfg.get("train") or {}))
    data = load_dataset(cfg["data"])
    x = data[0] if isinstance(data, tuple) else data
    opts = dict(cfg["objective"])
    if "teacher" in opts:  # a trained pfode model, frozen
        opts["teacher"] = load(opts["teacher"]["checkpoint"], which=opts["teacher"].get("which", "ema")).denoiser
    objective = get_objective(opts.pop("name"), **opts)
    mc = dict(cfg["model"])
    mc.setdefault("data_shape", list(x.shape[1:]))
    torch.manual_seed(train.seed)  # the initial weights follow the seed
    net = build_net(mc.pop("name"), **mc)
    return {"model": net, "objective": objective, "data": data, "train": train, "spec": cfg}


def make_trainer(cfg: dict, out_dir, resume: bool = False, **overrides) -> Trainer:
    """Build everything from ``cfg`` (``overrides`` replace training options); return the :class:`Trainer`."""
    cfg = json.loads(json.dumps(cfg))  # a private, JSON-clean copy
    cfg["train"] = {**(cfg.get("train") or {}), **overrides}
    b = build(cfg)
    os.makedirs(out_dir, exist_ok=True)
    return Trainer(b["model"], b["objective"], b["data"], b["train"], out_dir, spec=cfg, resume=resume)
