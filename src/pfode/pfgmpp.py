"""PFGM++: Poisson-flow generative models with ``D`` augmented dimensions.

Xu, Liu, Tian, Tegmark, Jaakkola, "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models"
(ICML 2023). Data ``y`` in ``N`` dimensions (``N`` = elements per sample) is perturbed by the kernel

    p_r(x | y) proportional to 1 / (|x - y|^2 + r^2)^((N + D) / 2),

drawn as ``x = y + R u`` with ``u`` uniform on the unit sphere and ``R = r sqrt(b / (1 - b))``,
``b ~ Beta(N/2, D/2)``. With ``r = sigma sqrt(D)`` the probability-flow ODE is EDM's
``dx/dsigma = (x - D_theta(x, sigma)) / sigma`` with ``D_theta`` the posterior mean ``E[y | x]`` under this
kernel, so every pfode solver samples PFGM++ on :class:`PFGMPP` (``alpha = 1``, ``sigma = t``) unchanged;
``D -> inf`` gives EDM (the kernel tends to ``N(y, sigma^2 I)``).

Sampling the kernel. With ``b = G_N / (G_N + G_D)`` (independent ``Gamma(N/2)`` and ``Gamma(D/2)``) and
``G_N = |z|^2 / 2`` for ``z ~ N(0, I_N)``, ``R u = r z / sqrt(2 G_D)``: the perturbation is
``sigma z sqrt(D / chi^2_D)`` -- a multivariate Student-t with ``D`` degrees of freedom and scale ``sigma``.
:meth:`PFGMPP.noise_from_gaussian` applies that per-sample radial factor to Gaussian noise (how
:class:`pfode.train.DenoisingScoreMatching` trains on this path); :meth:`PFGMPP.perturb` and
:meth:`PFGMPP.prior` draw from the kernel. ``Gamma`` draws use Marsaglia & Tsang (2000) on the given generator.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_f64, check_int
from .paths import EDM
from .predictions import Denoiser

__all__ = ["PFGMPP", "PointSetDenoiser", "sample_gamma"]


def sample_gamma(shape_param: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws of ``Gamma(shape_param, 1)`` (float64, CPU) from ``generator`` (Marsaglia & Tsang, 2000;
    ``shape_param < 1`` via ``Gamma(a + 1) U^(1/a)``)."""
    check_int("n", n, 0)
    a = float(shape_param)
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"shape_param={shape_param!r}: need a finite value > 0")
    boost = a < 1.0
    aa = a + 1.0 if boost else a
    d = aa - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / a)
    return out


def _check_d(D) -> float:
    if isinstance(D, str) and D.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(D, bool) or not isinstance(D, (int, float)):
        raise TypeError(f"D must be a number > 0 (or math.inf / 'inf' for EDM), got {D!r}")
    D = float(D)
    if math.isnan(D) or D <= 0:
        raise ValueError(f"D={D!r}: the number of augmented dimensions must be > 0 (math.inf gives EDM)")
    return D


class PFGMPP(EDM):
    """PFGM++ path (Xu et al., 2023) in EDM's parameterization: ``alpha = 1``, ``sigma = t``, ``r = sigma sqrt(D)``.

    Args:
        D: augmented dimensions, ``> 0``; ``math.inf`` (or ``"inf"``) is EDM's Gaussian kernel.
        sigma_min, sigma_max: the grid ends, as :class:`~pfode.paths.EDM`; the prior is the kernel at
            ``sigma_max`` around 0.
    """

    name = "pfgmpp"

    def __init__(self, D: float = 128.0, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.D = _check_d(D)
        super().__init__(sigma_min, sigma_max)

    def _spec_args(self):
        return {"D": "inf" if math.isinf(self.D) else self.D, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def r(self, sigma) -> torch.Tensor:
        """The PFGM++ radius ``r = sigma sqrt(D)`` (``inf`` for ``D = inf``)."""
        return as_f64(sigma) * math.sqrt(self.D)

    def radial_factor(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``sqrt(D / chi^2_D)`` for ``n`` samples ``[n]`` float64 (1 for ``D = inf``)."""
        if math.isinf(self.D):
            return torch.ones(n, dtype=torch.float64)
        return torch.sqrt(self.D / (2.0 * sample_gamma(self.D / 2.0, n, generator)))

    def noise_from_gaussian(self, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit-scale PFGM++ noise ``[B, ...]`` from Gaussian noise ``eps`` (same direction, heavy-tailed radius):
        ``x0 + sigma * noise_from_gaussian(eps)`` is a draw of the kernel ``p_r(. | x0)`` with ``r = sigma sqrt(D)``."""
        if math.isinf(self.D):
            return eps
        f = self.radial_factor(eps.shape[0], generator).to(device=eps.device, dtype=eps.dtype)
        return eps * f.reshape((-1,) + (1,) * (eps.dim() - 1))

    def noise(self, shape, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """Unit-scale PFGM++ noise of ``shape`` ``[B, ...]`` (CPU)."""
        eps = torch.randn(tuple(shape), generator=generator, dtype=dtype)
        return self.noise_from_gaussian(eps, generator)

    def perturb(self, x0: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of ``p_r(x | x0)`` with ``r = sigma sqrt(D)`` for data ``x0`` ``[B, ...]`` and ``sigma`` a float
        or ``[B]``."""
        s = as_f64(sigma)
        if s.dim() == 0:
            s = s.expand(x0.shape[0])
        if s.shape != (x0.shape[0],) or bool((s < 0).any()):
            raise ValueError(f"sigma must be a float >= 0 or a [B] tensor with B={x0.shape[0]}, got {tuple(s.shape)}")
        n = self.noise(x0.shape, generator, torch.float64).to(x0.device)
        s = s.to(x0.device).reshape((-1,) + (1,) * (x0.dim() - 1))
        return (x0.to(torch.float64) + s * n).to(x0.dtype)

    def prior(self, shape, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """Start points ``x_T`` ``[B, ...]``: the kernel at ``sigma_max`` around 0 (the paper's prior)."""
        return (self.sigma_max * self.noise(shape, generator)).to(dtype)

    def __repr__(self):
        return f"PFGMPP(D={self.D:g}, sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class PointSetDenoiser:
    """The exact PFGM++ denoiser ``E[y | x]`` of a finite point set under the kernel of a :class:`PFGMPP` path.

    ``E[y | x] = sum_i w_i y_i`` with ``w_i`` proportional to ``pi_i (|x - y_i|^2 + r^2)^(-(N + D)/2)``,
    ``r = sigma sqrt(D)`` (Gaussian weights ``exp(-|x - y_i|^2 / (2 sigma^2))`` for ``D = inf``).

    Args:
        points: ``[K, ...]`` data points.
        path: the :class:`PFGMPP` path (its ``D``).
        weights: ``[K]`` probabilities (default uniform).
    """

    def __init__(self, points: torch.Tensor, path: PFGMPP, weights=None):
        if not isinstance(path, PFGMPP):
            raise TypeError(f"path must be a PFGMPP path, got {type(path).__name__}")
        if not isinstance(points, torch.Tensor) or points.dim() < 2:
            raise TypeError("points must be a [K, ...] tensor")
        self.points = points.detach().to(torch.float64)
        self.flat = self.points.reshape(points.shape[0], -1)
        k = points.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else as_f64(weights).reshape(-1)
        if w.shape != (k,) or bool((w < 0).any()) or abs(float(w.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be [K]=[{k}] probabilities summing to 1")
        self.log_w = torch.log(w.clamp_min(1e-300))
        self.path = path

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """``E[y | x]`` shaped like ``x``; ``t`` is path time (= sigma), a float or ``[B]``."""
        f = x.reshape(x.shape[0], -1).to(torch.float64)
        n = f.shape[1]
        s = as_f64(t).to(f.device)
        s = s.expand(f.shape[0]) if s.dim() == 0 else s.reshape(-1)
        d2 = torch.cdist(f, self.flat.to(f.device)) ** 2  # [B, K]
        D = self.path.D
        if math.isinf(D):
            logits = -d2 / (2.0 * s[:, None] ** 2)
        else:
            logits = -0.5 * (n + D) * torch.log1p(d2 / (D * s[:, None] ** 2))
        r = torch.softmax(logits + self.log_w.to(f.device)[None], dim=1)
        return (r @ self.flat.to(f.device)).reshape(x.shape).to(x.dtype)

    def denoiser(self) -> Denoiser:
        """As a :class:`pfode.Denoiser` (x0-prediction, path time input) for :func:`pfode.sample`."""
        return Denoiser(self, self.path, prediction="x0", time_input="t")
