"""Affine Gaussian paths ``x_t = alpha(t) x_0 + sigma(t) eps``.

Every path gives ``alpha(t)``, ``sigma(t)``, their time derivatives, half the log-SNR
``lam(t) = log(alpha / sigma)`` and its inverse ``t_of_lam``, the SDE coefficients ``f(t)`` and
``g2(t)``, and its time range. Data sits at ``t_min`` and noise at ``t_max``; ``lam`` decreases
strictly with ``t``.

All functions take a float or a tensor of any shape and return float64 tensors of that shape
(on the input's device). ``t_lo`` and ``t_hi`` bound the times a grid may use; ``t_min`` and
``t_max`` are the default ends of a sampling grid. Where a path reaches ``sigma = 0`` (VP at
``t = 0``, EDM at ``t = 0``, Linear at ``t = 0``) ``t_lo`` is that time and ``lam`` is ``+inf``
there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from ._checks import as_f64

__all__ = [
    "Path",
    "VP",
    "VPCosine",
    "VPDiscrete",
    "SubVP",
    "VE",
    "EDM",
    "Linear",
    "Trig",
    "Affine",
    "get_path",
    "from_spec",
    "available",
]


def _lam_from_log_alpha_vp(log_alpha: torch.Tensor) -> torch.Tensor:
    # alpha^2 + sigma^2 = 1  ->  lam = log alpha - 0.5 log(1 - alpha^2)
    return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


def _log_alpha_vp_from_lam(lam: torch.Tensor) -> torch.Tensor:
    # alpha^2 = sigmoid(2 lam)  ->  log alpha = -0.5 softplus(-2 lam)
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


_PATHS: dict[str, Callable[..., Path]] = {}


class Path:
    """Base class of an affine Gaussian path; subclasses define the schedule.

    Subclasses implement ``log_alpha``/``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` and may
    override ``lam`` and ``t_of_lam`` with closed forms. The generic ``t_of_lam`` inverts ``lam``
    by vectorised bisection on ``[t_lo, t_hi]`` to float64 resolution.
    """

    name: str = "path"
    t_min: float
    t_max: float
    t_lo: float
    t_hi: float

    # --- schedule -------------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def coefficients(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha, sigma, d_alpha, d_sigma)`` at ``t`` in one call (paths may share work here)."""
        t = as_f64(t)
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)

    def lam(self, t) -> torch.Tensor:
        """Half log-SNR ``log(alpha / sigma)``; ``+inf`` where sigma is 0."""
        t = as_f64(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def d_lam(self, t) -> torch.Tensor:
        """``d lam / dt`` (negative)."""
        t = as_f64(t)
        return self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t)

    def t_of_lam(self, lam) -> torch.Tensor:
        """Inverse of ``lam``: vectorised bisection on ``[t_lo, t_hi]`` (64 halvings)."""
        lam = as_f64(lam)
        lo = torch.full_like(lam, self.t_lo)
        hi = torch.full_like(lam, self.t_hi)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.lam(mid) > lam  # lam decreases with t: solution lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        out = 0.5 * (lo + hi)
        out = torch.where(torch.isposinf(lam), torch.full_like(lam, self.t_lo), out)
        return torch.where(torch.isneginf(lam), torch.full_like(lam, self.t_hi), out)

    # --- SDE view -------------------------------------------------------------------------
    def f(self, t) -> torch.Tensor:
        """Drift coefficient ``f(t) = d log alpha / dt`` of the forward SDE ``dx = f x dt + g dw``."""
        t = as_f64(t)
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion ``g^2(t) = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d lam/dt``."""
        t = as_f64(t)
        s = self.sigma(t)
        return 2.0 * s * self.d_sigma(t) - 2.0 * self.f(t) * s * s

    # --- derived views --------------------------------------------------------------------
    def s(self, t) -> torch.Tensor:
        """Scaled noise level ``sigma / alpha = exp(-lam)`` (k-diffusion's sigma)."""
        t = as_f64(t)
        return self.sigma(t) / self.alpha(t)

    def t_of_s(self, s) -> torch.Tensor:
        """Inverse of ``s``; ``s = 0`` maps to ``t_lo`` where sigma reaches 0."""
        s = as_f64(s)
        return self.t_of_lam(-torch.log(s))

    # --- description ----------------------------------------------------------------------
    def __init_subclass__(cls, register: bool = True, **kwargs):
        """A subclass that sets its own ``name`` is registered under it (:func:`get_path`, :func:`from_spec`,
        the solvers' order certification): adding a path is one class. ``register=False`` opts out."""
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            _PATHS.setdefault(cls.name, cls)

    def _spec_args(self) -> dict:
        """The constructor's arguments, read from the attributes of the same names."""
        out = {}
        for name in list(inspect.signature(type(self).__init__).parameters)[1:]:
            if not hasattr(self, name) or callable(getattr(self, name)):
                raise ValueError(
                    f"{type(self).__name__} cannot describe itself as JSON: its constructor argument {name!r} is "
                    "not kept as an attribute of that name (override _spec_args)"
                )
            out[name] = getattr(self, name)
        return out

    def spec(self) -> dict:
        """A JSON-serialisable description ``{"name": ..., **constructor arguments}`` (see :func:`from_spec`)."""
        return {"name": self.name, **self._spec_args()}

    @classmethod
    def from_spec(cls, spec: dict) -> Path:
        """The path described by ``spec`` (the inverse of :meth:`spec`)."""
        return from_spec(spec)

    @property
    def reaches_zero(self) -> bool:
        """Whether ``sigma(t_lo) == 0`` (grids may end exactly at zero noise)."""
        return bool(self.sigma(self.t_lo) == 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g})"


class VP(Path):
    """Continuous variance-preserving path with linear beta (Song et al., Score SDE, 2021).

    ``log alpha(t) = -beta_min t / 2 - (beta_max - beta_min) t^2 / 4``, ``sigma = sqrt(1 - alpha^2)``,
    ``t`` in ``[0, 1]`` (sigma is 0 at ``t = 0``); grids end at ``t_min = 1e-3`` by default.
    """

    name = "vp"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0
    ):
        if not (math.isfinite(beta_min) and math.isfinite(beta_max)) or beta_min < 0 or beta_max < beta_min:
            raise ValueError(
                f"beta_min={beta_min!r}, beta_max={beta_max!r}: need 0 <= beta_min <= beta_max, both finite"
            )
        if beta_max <= 0:
            raise ValueError(f"beta_max={beta_max!r}: must be > 0")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = float(t_min), float(t_max)

    def log_alpha(self, t):
        t = as_f64(t)
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def beta(self, t):
        t = as_f64(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        a = self.alpha(t)
        return 0.5 * self.beta(t) * a * a / self.sigma(t)

    def lam(self, t):
        return _lam_from_log_alpha_vp(self.log_alpha(t))

    def _t_of_log_alpha(self, la):
        db, b0 = self.beta_max - self.beta_min, self.beta_min
        # 0.25 db t^2 + 0.5 b0 t + la = 0, stable root; t = 0 at la = 0 (also when beta_min = 0), inf at -inf
        t = -2.0 * la / (0.5 * b0 + torch.sqrt(0.25 * b0 * b0 - db * la))
        t = torch.where(la == 0, torch.zeros_like(t), t)
        return torch.where(torch.isneginf(la), torch.full_like(t, math.inf), t)

    def t_of_lam(self, lam):
        return self._t_of_log_alpha(_log_alpha_vp_from_lam(as_f64(lam)))

    def __repr__(self):
        return f"VP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class SubVP(VP):
    """Sub-VP path of Score SDE: ``alpha`` as in VP, ``sigma = 1 - alpha^2``."""

    name = "subvp"

    def sigma(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))

    def d_sigma(self, t):
        a = self.alpha(t)
        return self.beta(t) * a * a

    def lam(self, t):
        la = self.log_alpha(t)
        return la - torch.log(-torch.expm1(2.0 * la))

    def t_of_lam(self, lam):
        lam = as_f64(lam)
        # alpha = e^lam sigma, alpha^2 = 1 - sigma  ->  sigma = 2 / (1 + sqrt(1 + 4 e^{2 lam})) (stable root,
        # 0 at lam = +inf), log alpha = 0.5 log1p(-sigma): accurate where alpha -> 1 (small t).
        sig = 2.0 / (1.0 + torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        return self._t_of_log_alpha(0.5 * torch.log1p(-sig))

    def __repr__(self):
        return f"SubVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class VPCosine(Path):
    """Cosine VP schedule of improved DDPM (Nichol & Dhariwal, 2021).

    ``alpha(t) = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2)``. At ``t = 1`` alpha is 0 and
    ``lam = -inf``; the default ``t_max = 0.9946`` (as in DPM-Solver) keeps ``lam(t_max)`` at
    about ``-4.78`` (alpha about 0.0084), close to the linear VP's ``lam(1) = -5.0``. Times up
    to 1 are still valid for a grid.
    """

    name = "cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"s={s!r}: must be a finite offset > 0")
        self.s_off = float(s)
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._h = (math.pi / 2) / (1 + self.s_off)  # d theta / dt
        self._c0, self._s0 = math.cos(self.s_off * self._h), math.sin(self.s_off * self._h)

    def _spec_args(self):
        return {"s": self.s_off, "t_min": self.t_min, "t_max": self.t_max}

    def _theta(self, t):
        return (as_f64(t) + self.s_off) * self._h

    def alpha(self, t):
        # cos(theta) = sin((1 - t) h): keeps full relative accuracy as alpha -> 0 at t -> 1
        return torch.sin((1.0 - as_f64(t)) * self._h) / self._c0

    def sigma(self, t):
        # 1 - alpha^2 = (cos^2 theta0 - cos^2 theta) / c0^2 = sin(theta - theta0) sin(theta + theta0) / c0^2,
        # accurate as sigma -> 0 at t -> 0 (1 - alpha^2 would cancel)
        t = as_f64(t)
        prod = torch.sin(t * self._h) * torch.sin((t + 2.0 * self.s_off) * self._h)
        return torch.sqrt(torch.clamp(prod, min=0.0)) / self._c0

    def d_alpha(self, t):
        return -torch.sin(self._theta(t)) / self._c0 * self._h

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def lam(self, t):
        t = as_f64(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_of_lam(self, lam):
        # with sigma^2 = sigmoid(-2 lam), alpha = sqrt(sigmoid(2 lam)) and d = theta - theta0:
        # sin d = c0 sigma^2 / (sin theta + alpha s0), cos d = c0^2 alpha + s0 sin theta,
        # sin theta = sqrt(s0^2 + c0^2 sigma^2); atan2 keeps full relative accuracy at both ends.
        lam = as_f64(lam)
        sig2, a = torch.sigmoid(-2.0 * lam), torch.sqrt(torch.sigmoid(2.0 * lam))
        c0, s0 = self._c0, self._s0
        sin_theta = torch.sqrt(s0 * s0 + c0 * c0 * sig2)
        d = torch.atan2(c0 * sig2 / (sin_theta + a * s0), c0 * c0 * a + s0 * sin_theta)
        return torch.clamp(d / self._h, self.t_lo, self.t_hi)

    def __repr__(self):
        return f"VPCosine(s={self.s_off:g})"


class VPDiscrete(Path):
    """Discrete-time VP model as DDPM and diffusers train them, made continuous.

    Table index ``i = 0..N-1`` (the network's timestep) sits at ``t_i = (i + 1) / N``; ``log alpha``
    is interpolated piecewise linearly in ``t`` between those points (and to ``log alpha = 0`` at
    ``t = 0``), so ``alpha(t_i)^2`` reproduces ``alphas_cumprod[i]``. ``d_alpha`` uses the slope of
    the segment to the right of a knot. Give ``betas`` or ``alphas_cumprod`` (1-D, N entries).
    """

    name = "vp-discrete"

    def __init__(self, betas=None, alphas_cumprod=None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("VPDiscrete needs exactly one of betas= or alphas_cumprod=")
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if b.numel() < 2 or not bool(torch.all((b > 0) & (b < 1))):
                raise ValueError("betas: need at least 2 values, each in (0, 1)")
            ac = torch.cumprod(1.0 - b, 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if ac.numel() < 2 or not bool(torch.all((ac > 0) & (ac < 1))):
                raise ValueError("alphas_cumprod: need at least 2 values, each in (0, 1)")
            if not bool(torch.all(ac[1:] < ac[:-1])):
                raise ValueError("alphas_cumprod: must decrease strictly")
        self.alphas_cumprod = ac
        self.n = ac.numel()
        # knots: t = 0 (log alpha = 0), then t_i = (i + 1) / N
        self._log_alpha_knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(ac)])
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = 1.0 / self.n, 1.0
        self._ddpm: dict | None = None  # the arguments of ddpm() when it built this table

    def spec(self) -> dict:
        """``{"name": "ddpm", n, beta_start, beta_end}`` for a :meth:`ddpm` table, else the whole table as
        ``{"name": "vp-discrete", "alphas_cumprod": [...]}`` (floats round-trip exactly through JSON)."""
        if self._ddpm is not None:
            return {"name": "ddpm", **self._ddpm}
        return {"name": self.name, "alphas_cumprod": self.alphas_cumprod.tolist()}

    @classmethod
    def ddpm(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPDiscrete:
        """The linear-beta table of DDPM (Ho et al., 2020): ``betas = linspace(beta_start, beta_end, n)``."""
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n={n!r}: need an integer >= 2")
        path = cls(betas=torch.linspace(beta_start, beta_end, n, dtype=torch.float64))
        path._ddpm = {"n": n, "beta_start": float(beta_start), "beta_end": float(beta_end)}
        return path

    # index <-> time
    def index_of_t(self, t) -> torch.Tensor:
        """Network timestep (float) for path time ``t``: ``N t - 1``."""
        return as_f64(t) * self.n - 1.0

    def t_of_index(self, i) -> torch.Tensor:
        """Path time of network timestep ``i``: ``(i + 1) / N``."""
        return (as_f64(i) + 1.0) / self.n

    def _segment(self, t):
        u = torch.clamp(as_f64(t) * self.n, 0.0, float(self.n))
        k = torch.clamp(torch.floor(u), max=self.n - 1).long()
        return u, k

    def log_alpha(self, t):
        u, k = self._segment(t)
        knots = self._log_alpha_knots.to(u.device)
        return knots[k] + (u - k) * (knots[k + 1] - knots[k])

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t):
        u, k = self._segment(t)
        knots = self._log_alpha_knots.to(u.device)
        return self.alpha(t) * (knots[k + 1] - knots[k]) * self.n

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def coefficients(self, t):
        u, k = self._segment(t)
        knots = self._log_alpha_knots.to(u.device)
        slope = knots[k + 1] - knots[k]
        la = knots[k] + (u - k) * slope
        a = torch.exp(la)
        s = torch.sqrt(-torch.expm1(2.0 * la))
        da = a * slope * self.n
        return a, s, da, -a * da / s

    def lam(self, t):
        return _lam_from_log_alpha_vp(self.log_alpha(t))

    def t_of_lam(self, lam):
        lam = as_f64(lam)
        la = _log_alpha_vp_from_lam(lam)
        knots = self._log_alpha_knots.to(la.device)
        neg = -knots  # increasing
        k = torch.clamp(torch.searchsorted(neg, -la.contiguous(), right=True) - 1, 0, self.n - 1)
        w = (la - knots[k]) / (knots[k + 1] - knots[k])
        out = (k + w) / self.n
        return torch.where(torch.isposinf(lam), torch.zeros_like(out), out)

    def __repr__(self):
        return f"VPDiscrete(n={self.n})"


class _Exploding(Path):
    """``alpha = 1`` and ``sigma`` from ``sigma_min`` to ``sigma_max``: the variance-exploding family."""

    def __init__(self, sigma_min: float, sigma_max: float):
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(
                f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: need 0 < sigma_min < sigma_max"
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def alpha(self, t):
        return torch.ones_like(as_f64(t))

    def d_alpha(self, t):
        return torch.zeros_like(as_f64(t))

    def __repr__(self):
        return f"{type(self).__name__}(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class VE(_Exploding):
    """Variance-exploding path (Score SDE): ``alpha = 1``, ``sigma = sigma_min (sigma_max/sigma_min)^t``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        super().__init__(sigma_min, sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = 0.0, 1.0

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_f64(t) * self._log_ratio)

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def lam(self, t):
        return -(math.log(self.sigma_min) + as_f64(t) * self._log_ratio)

    def t_of_lam(self, lam):
        return (-as_f64(lam) - math.log(self.sigma_min)) / self._log_ratio


class EDM(_Exploding):
    """EDM path (Karras et al., 2022): ``alpha = 1``, ``sigma = t``; grids from ``sigma_max`` to
    ``sigma_min``.

    Times from 0 (zero noise) upward are valid.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(sigma_min, sigma_max)
        self.t_lo, self.t_hi = 0.0, math.inf
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def sigma(self, t):
        return as_f64(t).clone()

    def d_sigma(self, t):
        return torch.ones_like(as_f64(t))

    def lam(self, t):
        return -torch.log(as_f64(t))

    def t_of_lam(self, lam):
        return torch.exp(-as_f64(lam))


class Linear(Path):
    """Linear interpolant / rectified flow / conditional OT: ``alpha = 1 - t``, ``sigma = t``.

    Valid on ``[0, 1]``; ``t = 1`` is pure noise (``lam = -inf``, usable by solvers that integrate
    in ``t``), so grids default to ``[1e-3, 1 - 1e-3]`` where every solver applies.
    """

    name = "linear"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t):
        return 1.0 - as_f64(t)

    def sigma(self, t):
        return as_f64(t).clone()

    def d_alpha(self, t):
        return -torch.ones_like(as_f64(t))

    def d_sigma(self, t):
        return torch.ones_like(as_f64(t))

    def lam(self, t):
        t = as_f64(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lam(self, lam):
        return torch.sigmoid(-as_f64(lam))


class Trig(Path):
    """Trigonometric interpolant: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` (VP, the "v" path)."""

    name = "trig"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t):
        return torch.cos(as_f64(t) * (math.pi / 2))

    def sigma(self, t):
        return torch.sin(as_f64(t) * (math.pi / 2))

    def d_alpha(self, t):
        return -(math.pi / 2) * self.sigma(t)

    def d_sigma(self, t):
        return (math.pi / 2) * self.alpha(t)

    def lam(self, t):
        return -torch.log(torch.tan(as_f64(t) * (math.pi / 2)))

    def t_of_lam(self, lam):
        return torch.arctan(torch.exp(-as_f64(lam))) * (2 / math.pi)


class Affine(Path, register=False):
    """A user's own path from torch functions ``alpha_fn(t)`` and ``sigma_fn(t)`` (float64 tensors).

    Derivatives come from autograd unless ``d_alpha_fn``/``d_sigma_fn`` are given; ``t_of_lam`` is a
    vectorised bisection (float64 resolution). ``lam`` must decrease strictly on ``[t_min, t_max]``;
    this is checked on 257 points at construction.
    """

    name = "affine"

    def __init__(
        self,
        alpha_fn: Callable[[torch.Tensor], torch.Tensor],
        sigma_fn: Callable[[torch.Tensor], torch.Tensor],
        d_alpha_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        d_sigma_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
        name: str = "affine",
    ):
        if not callable(alpha_fn) or not callable(sigma_fn):
            raise TypeError("alpha_fn and sigma_fn must be callables mapping a float64 tensor t to a tensor")
        if not (math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max):
            raise ValueError(f"t_min={t_min!r}, t_max={t_max!r}: need finite t_min < t_max")
        self._a, self._s, self._da, self._ds = alpha_fn, sigma_fn, d_alpha_fn, d_sigma_fn
        self.t_lo, self.t_hi = float(t_min), float(t_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.name = name
        probe = torch.linspace(self.t_min, self.t_max, 257, dtype=torch.float64)
        a, s = self.alpha(probe), self.sigma(probe)
        if a.shape != probe.shape or s.shape != probe.shape:
            raise ValueError("alpha_fn and sigma_fn must return a tensor of the same shape as t")
        positive = bool(torch.all(a[:-1] > 0)) and bool(torch.all(s[1:] > 0))
        if not positive or bool(torch.any(a < 0) | torch.any(s < 0)):
            raise ValueError(
                "alpha_fn and sigma_fn must be >= 0, with alpha > 0 before t_max and sigma > 0 after t_min"
            )
        lam = self.lam(probe)
        if not bool(torch.all(lam[1:] < lam[:-1])):
            raise ValueError("lam = log(alpha/sigma) must decrease strictly from t_min to t_max")

    def spec(self) -> dict:
        """Always raises: an ``Affine`` path is made of the user's functions, which JSON cannot describe."""
        raise ValueError(
            f"{self!r} is built from user functions (alpha_fn, sigma_fn), which cannot be described as JSON; "
            "use a named path (pfode.paths.available()) to save a model that can be loaded again"
        )

    def alpha(self, t):
        return self._a(as_f64(t)).to(torch.float64)

    def sigma(self, t):
        return self._s(as_f64(t)).to(torch.float64)

    @staticmethod
    def _grad(fn, t):
        t = as_f64(t).detach().requires_grad_(True)
        with torch.enable_grad():
            y = fn(t)
            (g,) = torch.autograd.grad(y.sum(), t, allow_unused=True)
        return torch.zeros_like(t).detach() if g is None else g.detach()

    def d_alpha(self, t):
        return self._da(as_f64(t)).to(torch.float64) if self._da else self._grad(self._a, t)

    def d_sigma(self, t):
        return self._ds(as_f64(t)).to(torch.float64) if self._ds else self._grad(self._s, t)

    def __repr__(self):
        return f"Affine(name={self.name!r}, t_min={self.t_min:g}, t_max={self.t_max:g})"


# classes register themselves by name (Path.__init_subclass__); a discrete table defaults to DDPM's
_PATHS.update({"vp-discrete": VPDiscrete.ddpm, "ddpm": VPDiscrete.ddpm, "rectified-flow": Linear})


# paths defined in modules that import this one register when those load; load them on first lookup
_EXTENSIONS = ("kinetic", "pfgmpp")


def _load_extensions() -> None:
    import importlib

    for mod in _EXTENSIONS:
        importlib.import_module(f"{__package__}.{mod}")


def available() -> list[str]:
    """Names accepted by :func:`get_path`."""
    _load_extensions()
    return sorted(_PATHS)


def get_path(name: str | dict | Path, **options) -> Path:
    """Build a path by name (``"vp"``, ``"cosine"``, ``"ddpm"``, ``"edm"``, ``"linear"``, ...) or from a
    description ``{"name": ..., **options}`` (:func:`from_spec`)."""
    if isinstance(name, Path):
        return name
    if isinstance(name, dict):
        return from_spec({**name, **options})
    if not isinstance(name, str):
        raise TypeError(f"path must be a pfode Path, a name or a description dict, got {type(name).__name__}")
    _load_extensions()
    if name not in _PATHS:
        raise ValueError(f"path={name!r} is unknown; valid names: {', '.join(available())}")
    return _PATHS[name](**options)


def from_spec(spec: dict) -> Path:
    """The path a description ``{"name": ..., **constructor arguments}`` (from :meth:`Path.spec`) names.

    ``"vp-discrete"`` with ``alphas_cumprod`` or ``betas`` is that table; every other name takes the
    arguments of :func:`get_path`. Unknown names and keys raise ``ValueError`` listing the allowed ones.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"a path description must be a dict {{'name': ..., ...}}, got {type(spec).__name__}")
    if "name" not in spec:
        raise ValueError(f"the path description {spec!r} has no 'name'; valid names: {', '.join(available())}")
    opts = dict(spec)
    name = opts.pop("name")
    _load_extensions()
    table = name == "vp-discrete" and ("alphas_cumprod" in opts or "betas" in opts)
    make = VPDiscrete if table else _PATHS.get(name) if isinstance(name, str) else None
    if make is None:
        raise ValueError(f"path name={name!r} is unknown; valid names: {', '.join(available())}")
    allowed = [k for k in inspect.signature(make).parameters if k != "self"]
    for key in opts:
        if key not in allowed:
            raise ValueError(
                f"path description key {key!r} is unknown for {name!r}; valid keys: name, {', '.join(allowed)}"
            )
    return make(**opts)


# the mean-reverting path (IR-SDE) lives in its own module and registers itself on import; it imports only this
# module, which is complete here
from . import mean_reverting as _mean_reverting  # noqa: E402, F401
