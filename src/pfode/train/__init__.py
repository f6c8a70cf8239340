"""Training for pfode: losses for every path and prediction type, couplings (independent, minibatch OT,
reflow), consistency models, and a plain PyTorch :class:`Trainer` with exact resume, safetensors
checkpoints and DDP.

* :mod:`pfode.train.losses` -- :class:`DenoisingScoreMatching`, :class:`FlowMatching`,
  :class:`Consistency`, weightings, time samplers, metrics;
* :mod:`pfode.train.couplings` -- :class:`Independent`, :class:`MinibatchOT`, :class:`Paired`,
  :func:`generate_reflow_pairs`, :class:`PairStore`;
* :mod:`pfode.train.trainer` -- :class:`Trainer`, :class:`TrainConfig`;
* :mod:`pfode.train.config` -- runs from YAML/JSON (``python -m pfode.train``).
"""

from ..checkpoint import CheckpointError, load_weights, read_checkpoint
from .consistency_fm import ConsistencyFM
from .couplings import (
    Independent,
    MinibatchOT,
    Paired,
    PairStore,
    generate_reflow_pairs,
    get_coupling,
    ot_permutation,
)
from .ctm import CTM
from .losses import (
    METRICS,
    OBJECTIVES,
    TIME_SAMPLERS,
    WEIGHTINGS,
    Consistency,
    ConsistencyModel,
    DenoisingScoreMatching,
    FlowMatching,
    Objective,
    TimeSampler,
    consistency_sample,
    get_objective,
    loss_weight,
)
from .trainer import NonFiniteLossError, TrainConfig, Trainer

__all__ = [
    "ConsistencyFM",
    "CTM",
    "Trainer",
    "TrainConfig",
    "NonFiniteLossError",
    "CheckpointError",
    "read_checkpoint",
    "load_weights",
    "Objective",
    "DenoisingScoreMatching",
    "FlowMatching",
    "Consistency",
    "ConsistencyModel",
    "consistency_sample",
    "TimeSampler",
    "get_objective",
    "loss_weight",
    "WEIGHTINGS",
    "TIME_SAMPLERS",
    "METRICS",
    "OBJECTIVES",
    "Independent",
    "MinibatchOT",
    "Paired",
    "PairStore",
    "generate_reflow_pairs",
    "get_coupling",
    "ot_permutation",
]
