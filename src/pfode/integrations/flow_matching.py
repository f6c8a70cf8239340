"""Flow-matching velocity models as pfode denoisers, in one call.

Flow-matching libraries differ in which end of time holds the data:

* ``data_at=1`` (default): the convention of facebookresearch/flow_matching and torchcfm: noise at
  ``tau = 0``, data at ``tau = 1``, ``x_tau = tau x1 + (1 - tau) x0``, and the model predicts
  ``dx/dtau = x1 - x0``. In pfode time ``t = 1 - tau`` this is the :class:`~pfode.paths.Linear` path
  (``alpha = 1 - t``, ``sigma = t``) with ``time_input="reversed"`` (pfode negates the velocity).
* ``data_at=0``: rectified flow / diffusers / SD3: data at ``t = 0``, noise at ``t = 1``, the model
  predicts ``dx/dt = noise - x0``: the Linear path with ``time_input="t"``.

Either way the result is a :class:`pfode.Denoiser` with prediction ``"velocity"``; sample it with any
pfode solver::

    den = pfode.integrations.flow_matching.denoiser(model)
    x = pfode.sample(den, torch.randn(n, d), nfe=10, solver="dpm++2m")          # lam-based solvers
    x = pfode.sample(den, torch.randn(n, d), pfode.grid(den.path, 8, "uniform", t_start=1.0, t_end=0.0),
                     solver=pfode.solvers.get("rk4", variable="t"))              # from pure noise at t = 1

Exponential (lam-based) solvers start just below pure noise (``t_max = 1 - 1e-3`` by default, where
``log(alpha/sigma)`` is finite); RK solvers with ``variable="t"`` can start at ``t = 1`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .._checks import check_choice
from ..paths import Linear
from ..predictions import Denoiser

__all__ = ["denoiser"]


def denoiser(
    model: Callable,
    *,
    data_at: int = 1,
    signature: str = "xt",
    t_min: float = 1e-3,
    t_max: float = 1.0 - 1e-3,
) -> Denoiser:
    """Wrap a flow-matching velocity model as a :class:`pfode.Denoiser` on the Linear path.

    Args:
        model: the velocity network, called as ``model(x, t, **cond)`` (``signature="xt"``, flow_matching's
            ``ModelWrapper``) or ``model(t, x, **cond)`` (``signature="tx"``, the torchdyn/torchcfm ODE
            convention); ``t`` is a ``[B]`` tensor in the model's own time.
        data_at: ``1`` if the model was trained with data at time 1 and noise at 0 (flow_matching,
            torchcfm), ``0`` if data sits at time 0 (rectified flow, diffusers).
        signature: ``"xt"`` or ``"tx"``, the argument order of ``model``.
        t_min, t_max: default ends of pfode grids on the path, in pfode time (noise at ``t = 1``).
    Returns:
        a :class:`pfode.Denoiser` with ``prediction="velocity"``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if data_at not in (0, 1) or isinstance(data_at, bool):
        raise ValueError(f"data_at={data_at!r} must be 0 or 1 (the time at which the model's data sits)")
    check_choice("signature", signature, ("xt", "tx"))
    if not (math.isfinite(t_min) and math.isfinite(t_max) and 0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"t_min={t_min!r}, t_max={t_max!r}: need 0 <= t_min < t_max <= 1")

    def swapped(x, t, **cond):
        return model(t, x, **cond)

    net = model if signature == "xt" else swapped
    return Denoiser(net, Linear(t_min=t_min, t_max=t_max), "velocity", "reversed" if data_at == 1 else "t")
