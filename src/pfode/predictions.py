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

from ._checks import as_f64, check_choice, check_spec, check_state
from .paths import Path
from .paths import from_spec as path_from_spec

__all__ = [
    "Denoiser",
    "Prediction",
    "PREDICTIONS",
    "TIME_INPUTS",
    "get_prediction",
    "to_x0_eps",
    "from_x0_eps",
    "convert",
    "Coeffs",
    "check_denoiser",
    "VELOCITY_AT_ZERO",
    "velocity_at_zero",
    "velocity",
]

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


def _mix(u, cu, cv, v):
    """``cu u + cv v``, skipping literal ``0.0``/``1.0`` coefficients (eps-prediction's ``eps_hat`` is its output)."""
    if isinstance(cu, float) and cu == 0.0:
        return v if isinstance(cv, float) and cv == 1.0 else cv * v
    return cu * u + cv * v


def fold(x: torch.Tensor, px: float, po: float, out: torch.Tensor) -> torch.Tensor:
    """``px x + po out`` for host floats in one fused op (``out`` alone where ``px`` is 0)."""
    if px == 0.0:
        return out if po == 1.0 else out * po
    return torch.add(x * px, out, alpha=po)


@dataclass(frozen=True)
class Prediction:
    """One prediction type: the linear maps between a network output ``out`` at state ``x`` and the pair.

    ``to_x0(a, s, da, ds) -> (px, po)``: ``x0_hat = px x + po out``; ``to_eps`` likewise for ``eps_hat``;
    ``to_out(a, s, da, ds) -> (ox, oe)``: ``out = ox x0 + oe eps``; ``a, s, da, ds`` are ``alpha, sigma`` and
    their time derivatives (floats or broadcastable tensors).
    """

    name: str
    to_x0: Callable
    to_eps: Callable
    to_out: Callable

    def to_x0_eps(self, out, x, c: Coeffs):
        """Network output ``out`` at state ``x`` -> ``(x0_hat, eps_hat)``."""
        cs = (c.alpha, c.sigma, c.d_alpha, c.d_sigma)
        return _mix(x, *self.to_x0(*cs), out), _mix(x, *self.to_eps(*cs), out)

    def from_x0_eps(self, x0, eps, c: Coeffs):
        """Canonical pair -> the output a network of this type would give."""
        ox, oe = self.to_out(c.alpha, c.sigma, c.d_alpha, c.d_sigma)
        return _mix(x0, ox, oe, eps)

    def x0(self, out: torch.Tensor, x: torch.Tensor, a: float, s: float, da: float, ds: float) -> torch.Tensor:
        """``x0_hat`` from ``out`` with host float coefficients: one fused op (the solvers' fast path)."""
        return fold(x, *self.to_x0(a, s, da, ds), out)

    def __repr__(self):
        return f"Prediction({self.name!r})"


def _det(a, s, da, ds):
    return a * ds - s * da  # = -alpha sigma dlam/dt > 0


_TYPES = (
    Prediction("eps", lambda a, s, *_: (1 / a, -s / a), lambda *_: (0.0, 1.0), lambda *_: (0.0, 1.0)),
    Prediction("x0", lambda *_: (0.0, 1.0), lambda a, s, *_: (1 / s, -a / s), lambda *_: (1.0, 0.0)),
    Prediction(
        "v",
        lambda a, s, *_: (a / (a * a + s * s), -s / (a * a + s * s)),
        lambda a, s, *_: (s / (a * a + s * s), a / (a * a + s * s)),
        lambda a, s, *_: (-s, a),
    ),
    Prediction(
        "score", lambda a, s, *_: (1 / a, s * s / a), lambda a, s, *_: (0.0, -s), lambda a, s, *_: (0.0, -1 / s)
    ),
    Prediction(
        "velocity",
        lambda a, s, da, ds: (ds / _det(a, s, da, ds), -s / _det(a, s, da, ds)),
        lambda a, s, da, ds: (-da / _det(a, s, da, ds), a / _det(a, s, da, ds)),
        lambda a, s, da, ds: (da, ds),
    ),
)
_PREDICTION_TYPES: dict[str, Prediction] = {p.name: p for p in _TYPES}
PREDICTIONS = tuple(_PREDICTION_TYPES)


#: prediction types whose output determines ``dx/dt`` at zero noise (``sigma = 0``): there ``x0_hat = x / alpha``
#: carries no information, and ``x0``/``score`` outputs leave ``eps_hat`` undefined
VELOCITY_AT_ZERO = ("eps", "v", "velocity")


def velocity_at_zero(prediction: str | Prediction, point) -> tuple[float, float]:
    """``(vx, vo)`` with ``dx/dt = vx x + vo out`` at a zero-noise ``point`` (``alpha > 0``, ``sigma = 0``, finite
    derivatives): ``alpha' x0_hat + sigma' eps_hat`` with the pair read from the output ``out``."""
    pred = get_prediction(prediction)
    if pred.name not in VELOCITY_AT_ZERO:
        raise ValueError(f"a {pred.name!r} prediction does not determine dx/dt at zero noise")
    c = (point.alpha, point.sigma, point.d_alpha, point.d_sigma)
    return velocity(point, pred.to_x0(*c), pred.to_eps(*c))


def velocity(point, x0: tuple[float, float], eps: tuple[float, float]) -> tuple[float, float]:
    """``(vx, vo)`` with ``dx/dt = alpha' x0_hat + sigma' eps_hat = vx x + vo out`` at ``point``, from the
    coefficients ``x0 = (px, po)`` and ``eps = (ex, eo)`` of the prediction's conversions there."""
    return point.d_alpha * x0[0] + point.d_sigma * eps[0], point.d_alpha * x0[1] + point.d_sigma * eps[1]


def get_prediction(prediction: str | Prediction) -> Prediction:
    """The :class:`Prediction` object of a type name (``ValueError`` naming the valid ones otherwise)."""
    if isinstance(prediction, Prediction):
        return prediction
    return _PREDICTION_TYPES[check_choice("prediction", prediction, PREDICTIONS)]


def to_x0_eps(prediction: str, out, x, c: Coeffs):
    """Network output of type ``prediction`` at state ``x`` -> ``(x0_hat, eps_hat)``."""
    return get_prediction(prediction).to_x0_eps(out, x, c)


def from_x0_eps(prediction: str, x0, eps, c: Coeffs):
    """Canonical pair -> the output a network of type ``prediction`` would give."""
    return get_prediction(prediction).from_x0_eps(x0, eps, c)


def convert(value, source: str, target: str, x, path: Path, t):
    """Convert a prediction of type ``source`` at ``(x, t)`` on ``path`` into type ``target``."""
    check_choice("source", source, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)
    c = Coeffs.at(path, t, like=x)
    return from_x0_eps(target, *to_x0_eps(source, value, x, c), c)


def check_denoiser(den, name: str = "denoiser"):
    """Raise ``TypeError`` unless ``den`` is a :class:`Denoiser`, saying how to make one."""
    if not isinstance(den, Denoiser):
        raise TypeError(
            f"{name} must be a pfode.Denoiser, got {type(den).__name__}; wrap your network with "
            "pfode.Denoiser(net, path, prediction=...)"
        )


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
    :meth:`spec` describes the denoiser (all but the network) as JSON; :meth:`from_spec` rebuilds it.
    """

    SPEC_VERSION = 1
    SPEC_KEYS = ("version", "path", "prediction", "time_input")

    def __init__(self, net: Callable, path: Path, prediction: str = "eps", time_input: str | Callable = "t"):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
        if not isinstance(path, Path):
            raise TypeError(f"path must be a pfode.paths.Path, got {type(path).__name__}")
        self.net = net
        self.path = path
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        self._pred = get_prediction(prediction)
        if not callable(time_input):
            check_choice("time_input", time_input, TIME_INPUTS)
            if time_input == "index" and not hasattr(path, "index_of_t"):
                raise ValueError(
                    "time_input='index' needs a discrete path (VPDiscrete) that maps t to a timestep; "
                    f"got {path!r}"
                )
        self.time_input = time_input

    # -- description -------------------------------------------------------------------------
    def spec(self) -> dict:
        """``{"version", "path": path.spec(), "prediction", "time_input"}``, JSON-serialisable.

        Raises ``ValueError`` for a callable ``time_input`` or an :class:`~pfode.paths.Affine` path.
        """
        if callable(self.time_input):
            raise ValueError(
                f"time_input={self.time_input!r} is a callable, which cannot be described as JSON; use one of "
                f"{', '.join(TIME_INPUTS)} to save a model that can be loaded again"
            )
        spec = {"version": self.SPEC_VERSION, "path": self.path.spec(), "prediction": self.prediction}
        return {**spec, "time_input": self.time_input}

    @classmethod
    def from_spec(cls, net: Callable, spec: dict) -> Denoiser:
        """The denoiser of ``net`` that :meth:`spec` described (``ValueError`` naming a bad or missing key)."""
        check_spec("denoiser", spec, cls.SPEC_KEYS, cls.SPEC_VERSION)
        return cls(net, path_from_spec(spec["path"]), spec["prediction"], spec["time_input"])

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

    def time_tensor(self, t, x: torch.Tensor) -> torch.Tensor:
        """A ``[B]`` network-time tensor for path time(s) ``t`` (float or ``[B]``), on ``x``'s device."""
        tn = self.net_time(t)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        tn = tn.to(device=x.device, dtype=dtype)
        return tn.expand(x.shape[0]) if tn.dim() == 0 else tn

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

    def pair_at(self, x: torch.Tensor, t, cond: dict | None = None, coeffs: Coeffs | None = None):
        """``(x0_hat, eps_hat)`` at path times ``t`` (float or ``[B]`` float64): the one conversion of the
        network's output at arbitrary times (no finiteness check on ``x``; differentiable in ``x``).

        ``coeffs``: the path's :class:`Coeffs` at ``t`` shaped against ``x``, if the caller has them.
        """
        t = as_f64(t)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(
                f"t must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}"
            )
        t = t.to(x.device)
        if coeffs is None:
            coeffs = Coeffs.at(self.path, t if t.dim() else t.expand(x.shape[0]), like=x)
        return self._pred.to_x0_eps(self.raw(x, self.time_tensor(t, x), cond), x, coeffs)

    def __call__(self, x: torch.Tensor, t, **cond):
        check_state("x", x)
        return self.pair_at(x, t, cond)

    def x0_at(self, x: torch.Tensor, t, cond: dict | None = None) -> torch.Tensor:
        """``x0_hat`` at path times ``t`` (float or ``[B]`` float64) in ``x``'s dtype (see :meth:`pair_at`)."""
        return self.pair_at(x, t, cond)[0].to(x.dtype)

    def x0(self, x: torch.Tensor, t_net: torch.Tensor, a: float, s: float, da: float, ds: float, cond=None):
        """Fast path for solvers: ``x0_hat`` at one time with host float coefficients (no checks on x).

        ``t_net`` is the ``[B]`` network-time tensor; ``a, s, da, ds`` are ``alpha, sigma`` and their
        derivatives at that time as Python floats.
        """
        return self._pred.x0(self.raw(x, t_net, cond), x, a, s, da, ds)

    def __repr__(self):
        ti = self.time_input
        if not isinstance(ti, str):
            ti = getattr(ti, "__name__", "fn")
        return f"Denoiser(path={self.path!r}, prediction={self.prediction!r}, time_input={ti!r})"
