"""Prediction types and the :class:`Denoiser` wrapper.

Every prediction type is a linear function of the canonical pair ``(x0_hat, eps_hat)`` and the
state ``x_t = alpha x0 + sigma eps``:

==========  ===================================================  ==========================================
type        network output                                       back to x0
==========  ===================================================  ==========================================
eps         ``eps``                                              ``(x - sigma eps) / alpha``
x0          ``x0``                                               ``x0``
v           ``alpha eps - sigma x0`` (Salimans & Ho)             ``(alpha x - sigma v) / (alpha^2 + sigma^2)``
score       ``grad log p_t(x) = -eps / sigma``                   ``(x + sigma^2 score) / alpha``
velocity    ``dx/dt = alpha' x0 + sigma' eps`` (flow matching)   ``(sigma' x - sigma u) / det``,
                                                                 ``det = alpha sigma' - sigma alpha'``
==========  ===================================================  ==========================================

``alpha sigma' - sigma alpha' = -alpha sigma dlam/dt > 0`` on every path, so each map is invertible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import as_f64, check_choice, check_state
from .paths import Path

__all__ = ["Denoiser", "PREDICTIONS", "TIME_INPUTS", "to_x0_eps", "from_x0_eps", "convert", "Coeffs"]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
TIME_INPUTS = ("t", "index", "sigma", "reversed")


@dataclass(frozen=True)
class Coeffs:
    """``alpha, sigma`` and their time derivatives at the current time (floats or broadcastable tensors)."""

    alpha: object
    sigma: object
    d_alpha: object
    d_sigma: object

    @classmethod
    def at(cls, path: Path, t, like: torch.Tensor | None = None) -> Coeffs:
        """Per-sample coefficients of ``path`` at ``t`` shaped ``[B, 1, ..., 1]`` to broadcast against
        ``like``."""
        t = as_f64(t)
        vals = (path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t))
        if like is not None:
            shape = (-1,) + (1,) * (like.dim() - 1) if t.dim() > 0 else ()
            dtype = like.dtype
            if dtype != torch.float64:
                dtype = torch.promote_types(dtype, torch.float32)
            vals = tuple(v.reshape(shape).to(device=like.device, dtype=dtype) for v in vals)
        return cls(*vals)


def to_x0_eps(prediction: str, out, x, c: Coeffs):
    """Network output of type ``prediction`` at state ``x`` -> ``(x0_hat, eps_hat)``."""
    a, s = c.alpha, c.sigma
    if prediction == "eps":
        return (x - s * out) / a, out
    if prediction == "x0":
        return out, (x - a * out) / s
    if prediction == "v":
        n = a * a + s * s
        return (a * x - s * out) / n, (s * x + a * out) / n
    if prediction == "score":
        return (x + s * s * out) / a, -s * out
    if prediction == "velocity":
        det = a * c.d_sigma - s * c.d_alpha
        return (c.d_sigma * x - s * out) / det, (a * out - c.d_alpha * x) / det
    raise ValueError(f"prediction={prediction!r} is unknown; valid values: {', '.join(PREDICTIONS)}")


def from_x0_eps(prediction: str, x0, eps, c: Coeffs):
    """Canonical pair -> the output a network of type ``prediction`` would give."""
    a, s = c.alpha, c.sigma
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    if prediction == "velocity":
        return c.d_alpha * x0 + c.d_sigma * eps
    raise ValueError(f"prediction={prediction!r} is unknown; valid values: {', '.join(PREDICTIONS)}")


def convert(value, source: str, target: str, x, path: Path, t):
    """Convert a prediction of type ``source`` at ``(x, t)`` on ``path`` into type ``target``."""
    check_choice("source", source, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)
    c = Coeffs.at(path, t, like=x)
    return from_x0_eps(target, *to_x0_eps(source, value, x, c), c)


class Denoiser:
    """Wrap a network of any prediction type as a map ``(x, t) -> (x0_hat, eps_hat)``.

    Args:
        net: callable ``net(x, t_net, **cond)`` returning a tensor shaped like ``x`` (an
            ``nn.Module`` or a function).
        path: the :class:`pfode.paths.Path` the network was trained on.
        prediction: what the network outputs: ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or
            ``"velocity"`` (``dx/dt`` of the path).
        time_input: what the network sees as time: ``"t"`` (path time), ``"index"`` (the
            discrete timestep ``N t - 1`` of a :class:`~pfode.paths.VPDiscrete` model),
            ``"sigma"`` (``sigma(t)``, as k-diffusion and EDM networks), ``"reversed"``
            (``1 - t``: flow-matching checkpoints with data at time 1; their velocity
            ``dx/d(1-t)`` is negated here), or a callable mapping float64 path times to network
            times.

    Calling ``den(x, t, **cond)`` with ``x`` of shape ``[B, ...]`` and ``t`` a float or a ``[B]``
    tensor of path times returns ``(x0_hat, eps_hat)`` in ``x``'s dtype (at least float32).
    """

    def __init__(self, net: Callable, path: Path, prediction: str = "eps", time_input: str | Callable = "t"):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
        if not isinstance(path, Path):
            raise TypeError(f"path must be a pfode.paths.Path, got {type(path).__name__}")
        self.net = net
        self.path = path
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        if not callable(time_input):
            check_choice("time_input", time_input, TIME_INPUTS)
            if time_input == "index" and not hasattr(path, "index_of_t"):
                raise ValueError(
                    "time_input='index' needs a discrete path (VPDiscrete) that maps t to a timestep; "
                    f"got {path!r}"
                )
        self.time_input = time_input

    # -- time --------------------------------------------------------------------------------
    def net_time(self, t) -> torch.Tensor:
        """Path times (float64) -> what the network sees (float64)."""
        t = as_f64(t)
        ti = self.time_input
        if callable(ti):
            return as_f64(ti(t))
        if ti == "t":
            return t
        if ti == "index":
            return self.path.index_of_t(t)
        if ti == "sigma":
            return self.path.sigma(t)
        return 1.0 - t  # reversed

    @property
    def _velocity_sign(self) -> float:
        return -1.0 if self.time_input == "reversed" else 1.0

    # -- evaluation --------------------------------------------------------------------------
    def raw(self, x: torch.Tensor, t_net: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        """Run the network with a ``[B]`` time tensor; check its output shape; upcast it to ``x``'s dtype."""
        out = self.net(x, t_net, **(cond or {}))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network returned {type(out).__name__}, expected a tensor shaped like x")
        if out.shape != x.shape:
            raise ValueError(
                f"network output shape {tuple(out.shape)} differs from its input shape {tuple(x.shape)}; "
                "a learned-variance model returns 2C channels: wrap it to return the first C"
            )
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.prediction == "velocity" and self.time_input == "reversed":
            out = -out
        return out

    def time_tensor(self, t, x: torch.Tensor) -> torch.Tensor:
        """A ``[B]`` network-time tensor for path time(s) ``t`` (float or ``[B]``), on ``x``'s device."""
        tn = self.net_time(t)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        tn = tn.to(device=x.device, dtype=dtype)
        return tn.expand(x.shape[0]) if tn.dim() == 0 else tn

    def __call__(self, x: torch.Tensor, t, **cond):
        check_state("x", x)
        t = as_f64(t)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(
                f"t must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}"
            )
        t_dev = t.to(x.device)
        c = Coeffs.at(self.path, t_dev if t.dim() else t_dev.expand(x.shape[0]), like=x)
        out = self.raw(x, self.time_tensor(t_dev, x), cond)
        return to_x0_eps(self.prediction, out, x, c)

    def x0(self, x: torch.Tensor, t_net: torch.Tensor, a: float, s: float, da: float, ds: float, cond=None):
        """Fast path for solvers: ``x0_hat`` at one time with host float coefficients (no checks on x).

        ``t_net`` is the ``[B]`` network-time tensor; ``a, s, da, ds`` are ``alpha, sigma`` and their
        derivatives at that time as Python floats.
        """
        out = self.raw(x, t_net, cond)
        p = self.prediction
        if p == "x0":
            return out
        if p == "eps":
            return torch.add(x, out, alpha=-s).mul_(1.0 / a)
        if p == "v":
            n = a * a + s * s
            return torch.add(x * (a / n), out, alpha=-s / n)
        if p == "score":
            return torch.add(x, out, alpha=s * s).mul_(1.0 / a)
        det = a * ds - s * da  # velocity
        return torch.add(x * (ds / det), out, alpha=-s / det)

    def __repr__(self):
        ti = self.time_input
        if not isinstance(ti, str):
            ti = getattr(ti, "__name__", "fn")
        return f"Denoiser(path={self.path!r}, prediction={self.prediction!r}, time_input={ti!r})"
