"""Stochastic interpolants between two arbitrary distributions (Albergo, Boffi & Vanden-Eijnden, 2023).

An interpolant joins a *data* sample ``x_data`` (what we generate) and a *source* sample ``x_src`` through

    x_t = a(t) x_data + b(t) x_src + gamma(t) z,      z ~ N(0, I),   t in [0, 1],

with ``a(0) = 1, b(0) = 0`` (``t = 0`` is data) and ``a(1) = 0, b(1) = 1`` (``t = 1`` is the source), and a
latent noise level ``gamma(0) = gamma(1) = 0``. pfode's convention holds: data at the low end of ``t``,
sampling goes *down* in ``t``. With ``x_src ~ N(0, I)`` and ``gamma = 0`` this is the affine Gaussian path
``alpha = a``, ``sigma = b`` (:class:`LinearInterpolant` is :class:`pfode.paths.Linear`, :class:`TrigInterpolant`
is :class:`pfode.paths.Trig`). The paper writes ``x0`` for our source and ``x1`` for our data.

The density ``rho_t`` of ``x_t`` solves the transport equation ``d rho / dt + div(b rho) = 0`` with the
velocity ``b(t, x) = E[a' x_data + b' x_src + gamma' z | x_t = x]``, and for every ``eps(t) >= 0`` the
Fokker-Planck equations of the SDEs with drift ``b +- eps s``, where ``s = grad log rho_t = -eta_z / gamma``
and ``eta_z(t, x) = E[z | x_t = x]`` is the denoiser (paper, Thm 2.8 and Cor 2.10). Going from the source
to the data (``t`` decreasing, ``dt < 0``):

    dX = (b - eps s) dt + sqrt(2 eps) dW_|t|

(the backward SDE of the paper: in reversed time ``tau = 1 - t`` the drift is ``-(b - eps s)``). ``eps = 0``
is the probability-flow ODE ``dX/dt = b``.

* Interpolants: :class:`LinearInterpolant`, :class:`TrigInterpolant`, :class:`EncoderDecoder` (``x_t`` is
  pure noise at ``t = 1/2``), :class:`CustomInterpolant` (your callables; derivatives by autograd), each with
  a :class:`Gamma` (``"zero"``, ``"sqrt"``: ``sqrt(c t (1 - t))``, ``"quadratic"``: ``c t (1 - t)``,
  ``"sin2"``: ``c sin^2(pi t)``).
* Learned fields: :class:`InterpolantModel` (a velocity net and/or a denoiser net -- two separate networks)
  and the training objective :class:`InterpolantObjective` (``pfode.train.get_objective("interpolant")``).
* Samplers: :func:`transport` (ODE: Euler, Heun, RK4; SDE: Euler-Maruyama, additive-noise Heun).
* Likelihood: :func:`log_likelihood` (``log p_data(x) = log p_src(x_1) + int_0^1 div b(t, x_t) dt``).
* Exact truth: :class:`pfode.analytic.GMMBridge`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import as_f64, check_choice, check_finite_float, check_int, check_state
from .engine import EULER, HEUN, RK4, drive, rk_stages

__all__ = [
    "GAMMAS",
    "INTERPOLANTS",
    "FIELDS",
    "SOLVERS",
    "Gamma",
    "Coefficients",
    "Interpolant",
    "LinearInterpolant",
    "TrigInterpolant",
    "EncoderDecoder",
    "CustomInterpolant",
    "get_interpolant",
    "from_spec",
    "InterpolantModel",
    "InterpolantObjective",
    "transport",
    "log_likelihood",
    "LikelihoodResult",
    "load_model",
]

GAMMAS = ("zero", "sqrt", "quadratic", "sin2")
INTERPOLANTS = ("linear", "trig", "encoder-decoder")
FIELDS = ("velocity", "denoiser", "both")
SOLVERS = ("euler", "heun", "rk4")
_TABLEAUX = {"euler": EULER, "heun": HEUN, "rk4": RK4}
_VERSION = 1


def _check_t(t) -> torch.Tensor:
    """``t`` as float64 (scalar or ``[B]``), finite and inside ``[0, 1]``."""
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"t must be a float or a float64 tensor, got {type(t).__name__}")
    t = as_f64(t)
    if t.dim() > 1:
        raise ValueError(f"t must be a scalar or a [B] tensor, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"t must lie in [0, 1] (data at 0, source at 1); got values {t.flatten()[:4].tolist()}")
    return t


# --- gamma ------------------------------------------------------------------------------------------
class Gamma:
    """The latent noise level ``gamma(t)`` of an interpolant (paper, Sec. 3.1), with ``gamma(0) = gamma(1) = 0``.

    * ``"zero"``: ``0`` (a deterministic interpolant);
    * ``"sqrt"``: ``sqrt(c t (1 - t))`` (``c = 2``: a Brownian bridge); ``gamma'`` is infinite at the ends,
      ``gamma gamma'`` is not;
    * ``"quadratic"``: ``c t (1 - t)``;
    * ``"sin2"``: ``c sin^2(pi t)`` (the encoder-decoder's).

    Args:
        name: one of :data:`GAMMAS`.
        scale: ``c > 0`` (ignored by ``"zero"``).
    """

    def __init__(self, name: str = "zero", scale: float = 1.0):
        self.name = check_choice("gamma", name, GAMMAS)
        self.scale = check_finite_float("scale", scale, 0.0, strict=True)

    @property
    def singular_ends(self) -> bool:
        """``gamma'`` is infinite at ``t = 0`` and ``t = 1``."""
        return self.name == "sqrt"

    @property
    def is_zero(self) -> bool:
        return self.name == "zero"

    def __call__(self, t) -> torch.Tensor:
        t = as_f64(t)
        if self.name == "sqrt":
            return torch.sqrt((self.scale * t * (1 - t)).clamp_min(0))
        return self._sq_root_free(t)

    def _sq_root_free(self, t):
        c = self.scale
        if self.name == "zero":
            return torch.zeros_like(t)
        if self.name == "quadratic":
            return c * t * (1 - t)
        return c * torch.sin(math.pi * t) ** 2

    def d(self, t) -> torch.Tensor:
        """``gamma'(t)`` (``+-inf`` at the ends for ``"sqrt"``)."""
        t = as_f64(t)
        c = self.scale
        if self.name == "zero":
            return torch.zeros_like(t)
        if self.name == "sqrt":
            return c * (1 - 2 * t) / (2 * torch.sqrt(c * t * (1 - t)))
        if self.name == "quadratic":
            return c * (1 - 2 * t)
        return c * math.pi * torch.sin(2 * math.pi * t)

    def sq(self, t) -> torch.Tensor:
        """``gamma(t)^2``."""
        t = as_f64(t)
        if self.name == "sqrt":
            return self.scale * t * (1 - t)
        return self._sq_root_free(t) ** 2

    def dsq(self, t) -> torch.Tensor:
        """``d/dt gamma(t)^2 = 2 gamma gamma'`` (finite everywhere)."""
        t = as_f64(t)
        if self.name == "sqrt":
            return self.scale * (1 - 2 * t)
        return 2 * self._sq_root_free(t) * self.d(t)

    def spec(self) -> dict:
        return {"name": self.name, "scale": self.scale}

    def __repr__(self):
        return f"Gamma({self.name!r}, scale={self.scale})"


def _gamma(g) -> Gamma:
    if g is None or (isinstance(g, (int, float)) and not isinstance(g, bool) and g == 0):
        return Gamma("zero")
    if isinstance(g, Gamma):
        return g
    if isinstance(g, str):
        return Gamma(g)
    if isinstance(g, dict):
        unknown = sorted(set(g) - {"name", "scale"})
        if unknown or "name" not in g:
            raise ValueError(f"gamma description {g!r} needs 'name' and optionally 'scale' (no other keys)")
        return Gamma(g["name"], g.get("scale", 1.0))
    raise TypeError(f"gamma must be 0, None, a name ({', '.join(GAMMAS)}), a dict or a Gamma; got {g!r}")


# --- interpolants -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coefficients:
    """Interpolant coefficients at times ``t`` (float64, shaped like ``t``): ``a, b, gamma``, their
    derivatives ``da, db, dgamma``, ``g2 = gamma^2`` and ``dg2 = d gamma^2 / dt``."""

    a: torch.Tensor
    b: torch.Tensor
    gamma: torch.Tensor
    da: torch.Tensor
    db: torch.Tensor
    dgamma: torch.Tensor
    g2: torch.Tensor
    dg2: torch.Tensor


class Interpolant:
    """Base class: ``x_t = a(t) x_data + b(t) x_src + gamma(t) z`` on ``t`` in ``[0, 1]``.

    Subclasses give ``a``, ``b``, ``da``, ``db`` (float64 in, float64 out) and hold a :class:`Gamma`.
    """

    name = "interpolant"
    gamma: Gamma

    def a(self, t) -> torch.Tensor:
        raise NotImplementedError

    def b(self, t) -> torch.Tensor:
        raise NotImplementedError

    def da(self, t) -> torch.Tensor:
        raise NotImplementedError

    def db(self, t) -> torch.Tensor:
        raise NotImplementedError

    def coeffs(self, t) -> Coefficients:
        """All coefficients at ``t`` (float or ``[B]``; ``ValueError`` outside ``[0, 1]``)."""
        t = _check_t(t)
        g = self.gamma
        return Coefficients(self.a(t), self.b(t), g(t), self.da(t), self.db(t), g.d(t), g.sq(t), g.dsq(t))

    @staticmethod
    def _ends(x_data, x_src, z=None):
        check_state("x_data", x_data)
        check_state("x_src", x_src)
        if x_data.shape != x_src.shape:
            raise ValueError(
                f"x_data has shape {tuple(x_data.shape)} and x_src {tuple(x_src.shape)}: the two ends must have "
                "the same shape (pair them one to one)"
            )
        if z is not None and z.shape != x_data.shape:
            raise ValueError(f"z has shape {tuple(z.shape)}, x_data {tuple(x_data.shape)}: they must match")

    @staticmethod
    def _col(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = c.to(device=x.device, dtype=x.dtype)
        return c if c.dim() == 0 else c.reshape((-1,) + (1,) * (x.dim() - 1))

    def __call__(self, t, x_data: torch.Tensor, x_src: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t`` (``[B, ...]`` like ``x_data``; ``z = None`` means ``gamma z`` is left out)."""
        return self.sample_and_velocity(t, x_data, x_src, z)[0]

    def sample_and_velocity(self, t, x_data, x_src, z=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, d/dt x_t)`` with ``d/dt x_t = a' x_data + b' x_src + gamma' z`` (the velocity target)."""
        self._ends(x_data, x_src, z)
        c = self.coeffs(t)
        col = self._col
        x_t = col(c.a, x_data) * x_data + col(c.b, x_data) * x_src
        v = col(c.da, x_data) * x_data + col(c.db, x_data) * x_src
        if z is not None and not self.gamma.is_zero:
            x_t = x_t + col(c.gamma, z) * z
            v = v + col(c.dgamma, z) * z
        return x_t, v

    def spec(self) -> dict:
        """JSON description; :func:`from_spec` rebuilds the interpolant."""
        return {"name": self.name, "gamma": self.gamma.spec(), "version": _VERSION}

    def __repr__(self):
        return f"{type(self).__name__}(gamma={self.gamma!r})"

    def __eq__(self, other):
        return isinstance(other, Interpolant) and type(self) is type(other) and self.spec() == other.spec()

    __hash__ = object.__hash__


class LinearInterpolant(Interpolant):
    """``a = 1 - t``, ``b = t`` (the paper's linear interpolant; rectified flow when ``gamma = 0``)."""

    name = "linear"

    def __init__(self, gamma=None):
        self.gamma = _gamma(gamma)

    def a(self, t):
        return 1.0 - as_f64(t)

    def b(self, t):
        return as_f64(t).clone()

    def da(self, t):
        return -torch.ones_like(as_f64(t))

    def db(self, t):
        return torch.ones_like(as_f64(t))


class TrigInterpolant(Interpolant):
    """``a = cos(pi t / 2)``, ``b = sin(pi t / 2)`` (the paper's trigonometric interpolant)."""

    name = "trig"

    def __init__(self, gamma=None):
        self.gamma = _gamma(gamma)

    def a(self, t):
        return torch.cos(as_f64(t) * (math.pi / 2))

    def b(self, t):
        return torch.sin(as_f64(t) * (math.pi / 2))

    def da(self, t):
        return -(math.pi / 2) * self.b(t)

    def db(self, t):
        return (math.pi / 2) * self.a(t)


class EncoderDecoder(Interpolant):
    """The encoder-decoder interpolant (paper, Sec. 3.4): ``a = cos^2(pi t)`` on ``t < 1/2`` (0 after),
    ``b = cos^2(pi t)`` on ``t > 1/2`` (0 before), ``gamma = sin^2(pi t)`` -- at ``t = 1/2`` the state is the
    pure noise ``z``: the data are encoded into noise and decoded into the source.

    ``gamma`` may be any :class:`Gamma` with ``gamma(1/2) > 0`` (default ``"sin2"``, scale 1).
    """

    name = "encoder-decoder"

    def __init__(self, gamma="sin2"):
        self.gamma = _gamma(gamma)
        if self.gamma.is_zero:
            raise ValueError("gamma=0 is not allowed for the encoder-decoder interpolant: x_t would vanish at t=1/2")

    def a(self, t):
        t = as_f64(t)
        return torch.where(t < 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))

    def b(self, t):
        t = as_f64(t)
        return torch.where(t > 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))

    def da(self, t):
        t = as_f64(t)
        return torch.where(t < 0.5, -math.pi * torch.sin(2 * math.pi * t), torch.zeros_like(t))

    def db(self, t):
        t = as_f64(t)
        return torch.where(t > 0.5, -math.pi * torch.sin(2 * math.pi * t), torch.zeros_like(t))


def _autograd_d(fn: Callable, t: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        tt = as_f64(t).detach().clone().requires_grad_(True)
        y = fn(tt)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            return torch.zeros_like(tt.detach())
        (g,) = torch.autograd.grad(y.sum(), tt, allow_unused=True)
    return torch.zeros_like(tt.detach()) if g is None else g.detach()


class _CallableGamma(Gamma):
    def __init__(self, fn, d=None):
        self.name, self.scale, self.fn, self.dfn = "callable", 1.0, fn, d

    @property
    def singular_ends(self):
        return False

    @property
    def is_zero(self):
        return False

    def __call__(self, t):
        return as_f64(self.fn(as_f64(t)))

    def d(self, t):
        return as_f64(self.dfn(as_f64(t))) if self.dfn is not None else _autograd_d(self.fn, as_f64(t))

    def sq(self, t):
        return self(t) ** 2

    def dsq(self, t):
        return 2 * self(t) * self.d(t)

    def spec(self):
        raise ValueError("a callable gamma cannot be described as JSON")


class CustomInterpolant(Interpolant):
    """Your own ``a(t)``, ``b(t)``, ``gamma(t)``: float64 tensor -> float64 tensor, elementwise.

    Missing derivatives (``da``, ``db``, ``dgamma``) come from autograd. ``gamma`` may also be ``None``/0, a
    :data:`GAMMAS` name, a dict or a :class:`Gamma`. The ends are checked at construction: ``a(0) = 1``,
    ``b(0) = 0``, ``a(1) = 0``, ``b(1) = 1``, ``gamma(0) = gamma(1) = 0`` (to 1e-9). Not JSON-describable.
    """

    name = "custom"

    def __init__(self, a: Callable, b: Callable, gamma=None, da=None, db=None, dgamma=None):
        for nm, f in (("a", a), ("b", b), ("da", da), ("db", db), ("dgamma", dgamma)):
            if f is not None and not callable(f):
                raise TypeError(f"{nm} must be a callable t -> tensor, got {type(f).__name__}")
        self._a, self._b, self._da, self._db = a, b, da, db
        self.gamma = _CallableGamma(gamma, dgamma) if callable(gamma) else _gamma(gamma)
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        for nm, f, want in (("a", self.a, (1.0, 0.0)), ("b", self.b, (0.0, 1.0)), ("gamma", self.gamma, (0.0, 0.0))):
            got = f(ends)
            if got.shape != ends.shape or not torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9):
                raise ValueError(f"{nm}(0), {nm}(1) must be {want}, got {got.tolist()}")

    def a(self, t):
        return as_f64(self._a(as_f64(t)))

    def b(self, t):
        return as_f64(self._b(as_f64(t)))

    def da(self, t):
        return as_f64(self._da(as_f64(t))) if self._da is not None else _autograd_d(self._a, as_f64(t))

    def db(self, t):
        return as_f64(self._db(as_f64(t))) if self._db is not None else _autograd_d(self._b, as_f64(t))

    def spec(self):
        raise ValueError("a CustomInterpolant (user callables) cannot be described as JSON; use a built-in one")


_REGISTRY = {"linear": LinearInterpolant, "trig": TrigInterpolant, "encoder-decoder": EncoderDecoder}


def from_spec(spec: dict) -> Interpolant:
    """Rebuild a built-in interpolant from :meth:`Interpolant.spec`."""
    if not isinstance(spec, dict):
        raise TypeError(f"an interpolant description must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"name", "gamma", "version"})
    if unknown:
        raise ValueError(f"interpolant description key {unknown[0]!r} is unknown; valid keys: name, gamma, version")
    if spec.get("version", _VERSION) != _VERSION:
        raise ValueError(f"interpolant description version={spec['version']!r}; this pfode reads {_VERSION}")
    name = check_choice("interpolant", spec.get("name"), INTERPOLANTS)
    return _REGISTRY[name](spec["gamma"]) if "gamma" in spec else _REGISTRY[name]()


def get_interpolant(name, gamma=None) -> Interpolant:
    """An interpolant from a name (:data:`INTERPOLANTS`) with ``gamma``, a description dict, or an object."""
    if isinstance(name, Interpolant):
        if gamma is not None:
            raise ValueError("gamma= can only be given with an interpolant name")
        return name
    if isinstance(name, dict):
        if gamma is not None:
            raise ValueError("gamma= can only be given with an interpolant name, not with a description")
        return from_spec(name)
    check_choice("interpolant", name, INTERPOLANTS)
    return _REGISTRY[name]() if gamma is None else _REGISTRY[name](gamma)


# --- learned fields ---------------------------------------------------------------------------------
class InterpolantModel(nn.Module):
    """Learned fields of an interpolant: ``velocity(x, t) ~ b(t, x)`` and ``denoiser(x, t) ~ eta_z(t, x)``.

    Two separate networks ``net(x [B, ...], t [B]) -> [B, ...]`` (either may be ``None``); the score is
    ``s = -eta_z / gamma`` where ``gamma(t) > 0``. ``forward(x, t)`` returns ``(velocity, eta)`` (``None`` for a
    missing network) so data-parallel training sees one call.
    """

    def __init__(self, interpolant: Interpolant, velocity: nn.Module | None = None, denoiser: nn.Module | None = None):
        super().__init__()
        if velocity is None and denoiser is None:
            raise ValueError("an InterpolantModel needs a velocity network, a denoiser network or both")
        self.interpolant = get_interpolant(interpolant)
        self.velocity_net, self.denoiser_net = velocity, denoiser
        net = velocity if velocity is not None else denoiser
        if hasattr(net, "data_shape"):
            self.data_shape = net.data_shape

    @property
    def field(self) -> str:
        if self.velocity_net is not None and self.denoiser_net is not None:
            return "both"
        return "velocity" if self.velocity_net is not None else "denoiser"

    @staticmethod
    def _t(t, x):
        t = _check_t(t).to(x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}")
        return t.to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)

    def _run(self, net, x, t):
        out = net(x, t)
        if out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} differs from its input {tuple(x.shape)}")
        return out.to(x.dtype)

    def forward(self, x, t):
        t = self._t(t, x)
        v = self._run(self.velocity_net, x, t) if self.velocity_net is not None else None
        e = self._run(self.denoiser_net, x, t) if self.denoiser_net is not None else None
        return v, e

    def velocity(self, x, t) -> torch.Tensor:
        """Learned ``b(t, x)``, shaped like ``x``."""
        if self.velocity_net is None:
            raise ValueError("this model has no velocity network (trained with field='denoiser')")
        return self._run(self.velocity_net, x, self._t(t, x))

    def denoiser(self, x, t) -> torch.Tensor:
        """Learned ``eta_z(t, x) = E[z | x_t = x]``, shaped like ``x``."""
        if self.denoiser_net is None:
            raise ValueError("this model has no denoiser network (train with field='denoiser' or 'both')")
        return self._run(self.denoiser_net, x, self._t(t, x))

    def score_defined(self, t) -> torch.Tensor:
        """Where ``s = -eta_z / gamma`` is defined: a denoiser network and ``gamma(t) > 0``."""
        t = _check_t(t)
        if self.denoiser_net is None:
            return torch.zeros_like(t, dtype=torch.bool)
        return self.interpolant.gamma(t) > 0

    def score(self, x, t) -> torch.Tensor:
        """``s(t, x) = -eta_z / gamma(t)`` (``ValueError`` where ``gamma(t) = 0``)."""
        tt = _check_t(t)
        g = self.interpolant.gamma(tt)
        if bool((g <= 0).any()):
            raise ValueError(
                f"the score -eta_z/gamma is undefined where gamma(t) = 0 (t={tt.flatten()[:4].tolist()}); "
                "choose eps(t) = 0 there"
            )
        return -self.denoiser(x, t) / Interpolant._col(g, x)

    def config(self) -> dict:
        """``{"name": "interpolant", "field", "net", "interpolant"}`` (JSON; :func:`load_model` rebuilds it)."""
        net = self.velocity_net if self.velocity_net is not None else self.denoiser_net
        if not hasattr(net, "config"):
            raise ValueError(f"the wrapped {type(net).__name__} has no config() to describe it")
        return {"name": "interpolant", "field": self.field, "net": net.config(), "interpolant": self.interpolant.spec()}


def load_model(path, which: str | None = None, device="cpu") -> InterpolantModel:
    """Load an :class:`InterpolantModel` from a pfode training checkpoint (run folder, ``checkpoints/`` or a
    ``step-*.json``) written by a :class:`~pfode.train.Trainer` with :class:`InterpolantObjective`."""
    from pathlib import Path as FsPath

    from .checkpoint import CheckpointError, read_checkpoint
    from .nets import build as build_net

    p = FsPath(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    ck = read_checkpoint(p)
    cfg = ck.meta.get("model_config")
    if not isinstance(cfg, dict) or cfg.get("name") != "interpolant":
        raise CheckpointError(f"{ck.json_path} does not hold an interpolant model (model_config={cfg!r})")
    opts = dict(cfg["net"])
    name = opts.pop("name")
    v = build_net(name, **opts) if cfg["field"] in ("velocity", "both") else None
    e = build_net(name, **opts) if cfg["field"] in ("denoiser", "both") else None
    model = InterpolantModel(from_spec(cfg["interpolant"]), v, e)
    if which is None:
        which = "ema" if any(k.startswith("ema/") for k in ck.meta.get("manifest", {})) else "model"
    ck.load_into(model, which)
    return model.to(device).eval().requires_grad_(False)


# --- training objective ------------------------------------------------------------------------------
def _objective_base():
    from .train.losses import Objective

    return Objective


class _SourcePairs:
    """Coupling adapter used when the source comes as the second tensor of the data (``source="pairs"``): it
    declares itself paired (so the trainer accepts ``(x_data, x_src)``) and applies the inner coupling."""

    paired = True

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def data(self):
        return self.inner.data()

    def spec(self):
        return {**self.inner.spec(), "source": "pairs"}


class InterpolantObjective(_objective_base()):
    """Learn the velocity ``b`` and/or the denoiser ``eta_z`` of a stochastic interpolant by regression.

    Losses (Albergo et al., 2023, Thm 2.7 and eq. 2.17; the square-loss forms, same minimisers):
    ``|b_hat(t, x_t) - (a' x_data + b' x_src + gamma' z)|^2`` and ``|eta_hat(t, x_t) - z|^2``, averaged over
    the elements of a sample; ``field="both"`` sums them (two separate networks: the given one is deep-copied
    for the denoiser).

    Args:
        interpolant: a name (:data:`INTERPOLANTS`), a description dict or an :class:`Interpolant`.
        gamma: the latent noise with an interpolant name (``0``, a :data:`GAMMAS` name or ``{name, scale}``).
        field: ``"velocity"``, ``"denoiser"`` or ``"both"``.
        coupling: ``"independent"``, ``"minibatch-ot"`` (exact OT between the data batch and the source batch),
            ``"paired"`` or a coupling object.
        source: where ``x_src`` comes from -- ``"gaussian"`` (``N(0, I)``, default), ``"pairs"`` (the trainer's
            data are ``(x_data, x_src)`` pairs), a dataset description for :func:`pfode.data.load_dataset`
            (e.g. ``{"name": "toy2d", "kind": "checkerboard", "n": 20000, "seed": 1}``), a tensor ``[M, ...]``
            (drawn with replacement) or a callable ``(n, generator) -> [n, ...]``.
        time_sampler: ``"uniform"``, ``"logit-normal"`` or ``"u-shaped"`` on ``t_range``.
        t_range: training times; default ``(0, 1)``, or ``(1e-3, 1 - 1e-3)`` when ``gamma'`` is singular at the
            ends (``"sqrt"``).
        sampler_options: options of :class:`pfode.train.TimeSampler`.
    """

    name = "interpolant"

    def __init__(
        self,
        interpolant="linear",
        gamma=None,
        field: str = "velocity",
        coupling="independent",
        source="gaussian",
        time_sampler="uniform",
        t_range=None,
        sampler_options: dict | None = None,
    ):
        from .train.couplings import Independent, MinibatchOT, Paired, get_coupling
        from .train.losses import TimeSampler

        self.interpolant = get_interpolant(interpolant, gamma)
        self.field = check_choice("field", field, FIELDS)
        inner = get_coupling(coupling)
        if not isinstance(inner, (Independent, MinibatchOT, Paired)):
            raise TypeError(f"coupling must be independent, minibatch-ot or paired, got {type(inner).__name__}")
        self._source_desc, self._source = self._resolve_source(source)
        if isinstance(inner, Paired) and self._source_desc not in ("gaussian", "pairs"):
            raise ValueError("coupling='paired' takes its pairs from the data: use source='pairs' or 'gaussian'")
        self.inner_coupling = inner
        self.coupling = _SourcePairs(inner) if self._source_desc == "pairs" else inner
        if t_range is None:
            t_range = (1e-3, 1 - 1e-3) if self.interpolant.gamma.singular_ends else (0.0, 1.0)
        t0, t1 = (float(v) for v in t_range)
        if not (0.0 <= t0 < t1 <= 1.0):
            raise ValueError(f"t_range={tuple(t_range)!r} must satisfy 0 <= t0 < t1 <= 1")
        if self.interpolant.gamma.singular_ends and (t0 == 0.0 or t1 == 1.0):
            raise ValueError(f"t_range={tuple(t_range)!r}: gamma'={self.interpolant.gamma!r} is infinite at 0 and 1")
        if isinstance(time_sampler, str) and time_sampler == "edm-lognormal":
            raise ValueError("time_sampler='edm-lognormal' needs a Gaussian path; use uniform, logit-normal, u-shaped")
        self.time_sampler = (
            time_sampler
            if isinstance(time_sampler, TimeSampler)
            else TimeSampler(time_sampler, None, (t0, t1), **(sampler_options or {}))
        )

    @staticmethod
    def _resolve_source(source):
        if isinstance(source, str):
            if source in ("gaussian", "pairs"):
                return source, None
            from .data import TOYS, toy2d

            if source in TOYS:
                return source, toy2d(source, 20000, seed=1)
            raise ValueError(
                f"source={source!r} is unknown; valid: gaussian, pairs, a toy ({', '.join(TOYS)}), a dataset dict"
            )
        if isinstance(source, dict):
            from .data import load_dataset

            x = load_dataset(source)
            if isinstance(x, tuple):
                raise ValueError(
                    "source: a pair dataset cannot be a source; give the pairs as data with source='pairs'"
                )
            return dict(source), x
        if isinstance(source, torch.Tensor):
            check_state("source", source)
            return "tensor", source
        if callable(source):
            return "callable", source
        raise TypeError(f"source must be 'gaussian', 'pairs', a dataset dict, a tensor or a callable; got {source!r}")

    def draw_source(self, n: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` source samples shaped ``[n, *like.shape[1:]]`` on ``like``'s device and dtype."""
        check_int("n", n, 1)
        if self._source_desc == "pairs":
            raise ValueError("source='pairs' has no sampler: the source samples come with the data")
        if self._source_desc == "gaussian":
            x = torch.randn((n, *like.shape[1:]), generator=generator, dtype=torch.float32)
        elif callable(self._source) and not isinstance(self._source, torch.Tensor):
            x = self._source(n, generator)
        else:
            idx = torch.randint(0, self._source.shape[0], (n,), generator=generator)
            x = self._source[idx]
        if tuple(x.shape) != (n, *like.shape[1:]):
            raise ValueError(f"source samples have shape {tuple(x.shape[1:])}, the data {tuple(like.shape[1:])}")
        return x.to(device=like.device, dtype=like.dtype)

    def prepare(self, batch, generator, step: int = 0):
        from .train.couplings import Independent

        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"a paired batch must be (x_data, x_src), got {len(batch)} tensors")
            x_d, x_s = batch
        else:
            x_d, x_s = batch, None
        inner = self.inner_coupling
        if self._source_desc == "gaussian":
            x_d, x_s = inner(x_d, x_s, generator)  # the pfode couplings draw N(0, I) themselves
        else:
            if x_s is None:
                x_s = self.draw_source(x_d.shape[0], x_d, generator)
            if isinstance(inner, Independent):  # break any fixed pairing of the data set
                x_s = x_s[torch.randperm(x_s.shape[0], generator=generator).to(x_s.device)]
            else:  # minibatch OT between the two batches, or the given pairs
                x_d, x_s = inner(x_d, x_s, generator)
        z = torch.randn(x_d.shape, generator=generator, dtype=torch.float32).to(device=x_d.device, dtype=x_d.dtype)
        t = self.time_sampler(x_d.shape[0], generator)
        return {"x_data": x_d, "x_src": x_s, "z": z, "t": t}

    def wrap(self, net):
        if isinstance(net, InterpolantModel):
            return net
        if self.field == "velocity":
            return InterpolantModel(self.interpolant, net, None)
        if self.field == "denoiser":
            return InterpolantModel(self.interpolant, None, net)
        return InterpolantModel(self.interpolant, net, copy.deepcopy(net))

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x_d, x_s, z, t = batch["x_data"], batch["x_src"], batch["z"], batch["t"].to(batch["x_data"].device)
        x_t, v = self.interpolant.sample_and_velocity(t, x_d, x_s, z)
        if not isinstance(model, InterpolantModel) and not isinstance(getattr(model, "module", None), InterpolantModel):
            raise TypeError("the model must be an InterpolantModel (the trainer wraps the network with objective.wrap)")
        b_hat, eta_hat = model(x_t, t)
        per = torch.zeros(x_d.shape[0], device=x_d.device, dtype=torch.float32)
        if b_hat is not None:
            per = per + (b_hat.float() - v.float()).reshape(x_d.shape[0], -1).pow(2).mean(1)
        if eta_hat is not None:
            per = per + (eta_hat.float() - z.float()).reshape(x_d.shape[0], -1).pow(2).mean(1)
        return per.mean(), per

    def denoiser_spec(self) -> None:
        """``None``: an interpolant model is not a :class:`pfode.Denoiser`; its checkpoints are described by the
        objective and ``model_config`` (:func:`load_model`, ``pfode sample --from DATA``)."""
        return None

    def sample(self, model, z, *, nfe: int = 20, solver: str = "heun", generator=None, eps=0.0, **options):
        """Samples from source draws: ``z`` itself for a Gaussian source, else ``len(z)`` fresh source draws."""
        x_src = z if self._source_desc == "gaussian" else self.draw_source(z.shape[0], z, generator)
        if solver == "heun" and nfe % 2:
            solver = "euler"
        return transport(model, x_src, nfe=nfe, solver=solver, eps=eps, generator=generator, **options)

    def spec(self) -> dict:
        src = self._source_desc if isinstance(self._source_desc, (str, dict)) else str(self._source_desc)
        return {
            "name": self.name,
            "interpolant": self.interpolant.spec(),
            "field": self.field,
            "coupling": self.coupling.spec(),
            "source": src,
            "time_sampler": self.time_sampler.spec(),
        }


# --- samplers ---------------------------------------------------------------------------------------
def _eps_fn(eps, model) -> tuple[Callable[[float], float], bool]:
    """``eps(t)`` as a host function and whether it can be non-zero."""
    if callable(eps):

        def f(t):
            v = float(eps(t))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"eps(t) must be finite and >= 0, got eps({t})={v!r}")
            return v

        return f, True
    e = check_finite_float("eps", eps, 0.0)
    if e == 0.0:
        return (lambda t: 0.0), False
    defined = getattr(model, "score_defined", None)
    if defined is None:
        raise ValueError("eps > 0 needs the score: the model must have score(x, t) and score_defined(t)")

    def g(t):
        return e if bool(defined(torch.tensor(t, dtype=torch.float64))) else 0.0

    return g, True


def transport(
    model,
    x_src: torch.Tensor,
    interpolant: Interpolant | None = None,
    *,
    nfe: int | None = None,
    steps: int | None = None,
    solver: str = "heun",
    eps=0.0,
    t_start: float = 1.0,
    t_end: float = 0.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
):
    """Carry source samples ``x_src`` (at ``t_start``, default 1) to data (at ``t_end``, default 0).

    ``eps = 0`` integrates the ODE ``dx/dt = b(t, x)`` with an explicit Runge-Kutta method in ``t``
    (``"euler"`` order 1, ``"heun"`` order 2, ``"rk4"`` order 4; 1, 2, 4 evaluations per step) on a uniform
    grid. ``eps > 0`` integrates the SDE ``dX = (b - eps s) dt + sqrt(2 eps) dW`` with ``dt < 0`` (Albergo et
    al., 2023, backward SDE eq. 2.33 written in decreasing ``t``): ``"euler"`` is Euler-Maruyama, ``"heun"`` the
    additive-noise Heun scheme (drift by Heun, one Gaussian increment per step of variance
    ``|h| (eps(t_i) + eps(t_{i+1}))``); ``"rk4"`` is ODE-only.

    Args:
        model: anything with ``velocity(x, t)`` (``t`` a ``[B]`` float64 tensor); for ``eps > 0`` also
            ``score(x, t)`` and ``score_defined(t)`` (:class:`InterpolantModel`, :class:`pfode.analytic.GMMBridge`).
        x_src: ``[B, ...]`` source samples (the state keeps their dtype).
        interpolant: unused by the integration; when given it must equal ``model.interpolant`` (a guard).
        nfe: velocity evaluations (a multiple of the solver's cost), or ``steps``: grid intervals.
        eps: a float ``>= 0`` -- ``eps(t) = eps`` where the model's score is defined and 0 where it is not
            (a learned score ``-eta_z / gamma`` at ``gamma(t) = 0``) -- or a callable ``t -> eps(t) >= 0``.
        generator: for the SDE's Gaussian increments (drawn on the CPU, float32 or float64).
        return_trajectory: also return the states ``[steps + 1, B, ...]`` and the times ``[steps + 1]``.

    Returns:
        ``x`` at ``t_end`` shaped like ``x_src`` (and ``(trajectory, times)`` when asked).
    """
    check_state("x_src", x_src)
    check_choice("solver", solver, SOLVERS)
    tab = _TABLEAUX[solver]
    if interpolant is not None and getattr(model, "interpolant", interpolant) != interpolant:
        raise ValueError(f"interpolant={interpolant!r} differs from the model's {model.interpolant!r}")
    t0 = float(_check_t(float(t_start)))
    t1 = float(_check_t(float(t_end)))
    if not t0 > t1:
        raise ValueError(f"t_start={t_start} must be above t_end={t_end} (sampling goes down in t)")
    if (nfe is None) == (steps is None):
        raise ValueError("give exactly one of nfe= or steps=")
    if nfe is not None:
        check_int("nfe", nfe, 1)
        if nfe % tab.stages:
            raise ValueError(f"nfe={nfe} is not a multiple of {tab.stages}, the evaluations per step of {solver!r}")
        steps = nfe // tab.stages
    check_int("steps", steps, 1)
    eps_of, stochastic = _eps_fn(eps, model)
    if stochastic and solver == "rk4":
        raise ValueError("solver='rk4' is for the ODE only (eps=0); use 'euler' or 'heun' with eps > 0")
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
    b = x_src.shape[0]
    noise_dtype = torch.float64 if x_src.dtype == torch.float64 else torch.float32

    def drift(x, t: float, e: float):
        tt = torch.full((b,), t, dtype=torch.float64, device=x.device)
        v = model.velocity(x, tt).to(x.dtype)
        if e > 0:
            v = v - e * model.score(x, tt).to(x.dtype)
        return v

    x = x_src
    traj = [x] if return_trajectory else None
    with torch.no_grad():
        for ta, tb in zip(grid[:-1], grid[1:]):
            h = tb - ta
            if not stochastic:

                def evaluate(u, i, ta=ta, h=h):
                    return [drift(u[0], ta + tab.c[i] * h, 0.0)]

                x = drive(rk_stages(tab, [x], [h]), evaluate)[0][0]
            else:
                ea, eb = eps_of(ta), eps_of(tb)
                xi = torch.randn(x.shape, generator=generator, dtype=noise_dtype).to(device=x.device, dtype=x.dtype)
                if solver == "euler":
                    x = x + h * drift(x, ta, ea) + math.sqrt(2 * ea * abs(h)) * xi
                else:
                    noise = math.sqrt(abs(h) * (ea + eb)) * xi
                    k1 = drift(x, ta, ea)
                    xe = x + h * k1 + noise
                    x = x + 0.5 * h * (k1 + drift(xe, tb, eb)) + noise
            if traj is not None:
                traj.append(x)
    if return_trajectory:
        return x, torch.stack(traj), torch.tensor(grid, dtype=torch.float64)
    return x


# --- likelihood ---------------------------------------------------------------------------------------
def _exact_div(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i d v_i / d x_i`` per sample (``[B]`` float64): one backward pass per dimension."""
    vf = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for i in range(vf.shape[1]):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, allow_unused=True)
        if g is not None:
            div += g.reshape(g.shape[0], -1)[:, i].to(torch.float64)
    return div


@dataclass
class LikelihoodResult:
    """``logp`` ``[B]`` (float64): ``log p_data(x)``; ``x_src``: the ODE's end at ``t_end``; ``delta`` ``[B]``:
    ``int div b dt``; ``logp_src`` ``[B]``: ``log p_src(x_src)``."""

    logp: torch.Tensor
    x_src: torch.Tensor
    delta: torch.Tensor
    logp_src: torch.Tensor


def log_likelihood(
    model,
    x: torch.Tensor,
    source_log_prob: Callable[[torch.Tensor], torch.Tensor],
    *,
    steps: int = 32,
    solver: str = "rk4",
    divergence: str = "auto",
    probes: int = 1,
    generator: torch.Generator | None = None,
    t_start: float = 0.0,
    t_end: float = 1.0,
) -> LikelihoodResult:
    """``log p_data(x)`` through the probability-flow ODE of the interpolant (Albergo et al., 2023, Sec. 2.6).

    Solves ``dx/dt = b(t, x)``, ``d delta/dt = div b(t, x)`` from ``x`` at ``t_start`` (0, data) to
    ``t_end`` (1, source) with an explicit RK method on ``steps`` uniform intervals, then
    ``log p_data(x) = source_log_prob(x_1) + delta`` (``d/dt log rho_t(x_t) = -div b`` along the flow).

    Args:
        model: anything with ``velocity(x, t)`` differentiable in ``x``.
        x: ``[B, ...]`` data points (float64 recommended).
        source_log_prob: ``[B, ...] -> [B]`` log-density of the source (known in closed form).
        divergence: ``"exact"`` (one vector-Jacobian product per dimension), ``"hutchinson"`` (``probes``
            Rademacher probes, fixed along the path; unbiased) or ``"auto"`` (exact up to 64 dimensions).
    """
    from .likelihood import hutchinson_divergence

    check_state("x", x)
    check_choice("solver", solver, SOLVERS)
    check_choice("divergence", divergence, ("auto", "exact", "hutchinson"))
    check_int("steps", steps, 1)
    check_int("probes", probes, 1)
    if not callable(source_log_prob):
        raise TypeError("source_log_prob must be a callable x -> [B] log-density")
    t0, t1 = float(_check_t(float(t_start))), float(_check_t(float(t_end)))
    if not t1 > t0:
        raise ValueError(f"t_end={t_end} must be above t_start={t_start} (the likelihood ODE goes up in t)")
    d = x[0].numel()
    if divergence == "auto":
        divergence = "exact" if d <= 64 else "hutchinson"
    pr = None
    if divergence == "hutchinson":
        pr = (torch.randint(0, 2, (probes, *x.shape), generator=generator).to(x.dtype) * 2 - 1).to(x.device)
    tab = _TABLEAUX[solver]
    b = x.shape[0]

    def rhs(u, t):
        with torch.enable_grad():
            xi = u.detach().requires_grad_(True)
            v = model.velocity(xi, torch.full((b,), t, dtype=torch.float64, device=x.device))
            div = _exact_div(v, xi) if pr is None else hutchinson_divergence(v, xi, pr).mean(0)
        return v.detach(), div.detach()

    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
    state = [x, torch.zeros(b, dtype=torch.float64, device=x.device)]
    for ta, tb in zip(grid[:-1], grid[1:]):
        h = tb - ta

        def evaluate(u, i, ta=ta, h=h):
            return list(rhs(u[0], ta + tab.c[i] * h))

        state = drive(rk_stages(tab, state, [h, h]), evaluate)[0]
    x1, delta = state
    lp_src = as_f64(source_log_prob(x1)).reshape(b)
    return LikelihoodResult(lp_src + delta, x1, delta, lp_src)
