"""Closed-form ground truth: Gaussian and Gaussian-mixture data on any affine path.

For data ``x0 ~ p`` and ``x_t = alpha x0 + sigma eps`` every marginal is again a Gaussian
(mixture), so the denoiser ``E[x0 | x_t]``, the score and the log-density are exact. For a single
Gaussian ``N(mu, S)`` the probability-flow ODE has the closed-form flow map

    x_t = alpha_t mu + (alpha_t^2 S + sigma_t^2 I)^(1/2) (alpha_T^2 S + sigma_T^2 I)^(-1/2)
          (x_T - alpha_T mu).

Everything is computed in float64; inputs ``x`` of shape ``[B, ...]`` are flattened to ``[B, d]``.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_f64, check_int
from .paths import Path
from .predictions import Denoiser

__all__ = ["Gaussian", "GaussianMixture", "GMMBridge"]

_LOG_2PI = math.log(2 * math.pi)


def _coef(path: Path, t, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    t = as_f64(t).to(device)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"t must be a float or a [B] tensor with B={b}, got shape {tuple(t.shape)}")
    return path.alpha(t)[:, None], path.sigma(t)[:, None]


def posterior(target, operator, y):
    """The exact posterior of a Gaussian or Gaussian-mixture ``target`` under ``y = A x + noise`` for a linear
    :mod:`pfode.inverse` operator: a :class:`pfode.inverse.PosteriorMixture` (see :func:`pfode.inverse.posterior`)."""
    from .inverse.posterior import posterior as _posterior

    return _posterior(target, operator, y)


class _Target:
    d: int

    def _at(self, x: torch.Tensor, t, path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` as ``[B, d]`` float64 and ``alpha, sigma`` at ``t`` as ``[B, 1]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        f = x.reshape(x.shape[0], -1).to(torch.float64)
        if f.shape[1] != self.d:
            raise ValueError(f"x has {f.shape[1]} features per sample ({tuple(x.shape)}), the target has d={self.d}")
        return (f, *_coef(path, t, f.shape[0], f.device))

    def x0_eps(self, x: torch.Tensor, t, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def denoiser(self, path: Path) -> Denoiser:
        """The exact denoiser ``E[x0 | x_t]`` on ``path`` as a :class:`pfode.Denoiser` (x0-prediction)."""

        def net(x, t):
            return self.x0_eps(x, t, path)[0]

        return Denoiser(net, path, prediction="x0", time_input="t")

    def score(self, x: torch.Tensor, t, path: Path) -> torch.Tensor:
        """``grad_x log p_t(x)``, shaped like ``x`` (float64)."""
        _, eps = self.x0_eps(x, t, path)
        _, s = _coef(path, t, x.shape[0], x.device)
        return (-eps.reshape(x.shape[0], -1) / s).reshape(x.shape)


class Gaussian(_Target):
    """Gaussian data ``N(mean, cov)`` with full covariance.

    Args:
        mean: ``[d]``.
        cov: ``[d, d]`` symmetric positive definite.
    """

    def __init__(self, mean, cov):
        mean = as_f64(mean).detach().cpu()
        cov = as_f64(cov).detach().cpu()
        if mean.dim() != 1:
            raise ValueError(f"mean must have shape [d], got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape [d, d] = [{d}, {d}] to match mean, got {tuple(cov.shape)}")
        if not bool(torch.isfinite(mean).all() & torch.isfinite(cov).all()):
            raise ValueError("mean and cov must be finite")
        if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
            raise ValueError("cov must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if float(evals.min()) <= 0:
            raise ValueError(f"cov must be positive definite; its smallest eigenvalue is {float(evals.min()):.3g}")
        self.mean, self.cov, self.d = mean, cov, d
        self.evals, self.evecs = evals, evecs

    def _rot(self, x, alpha):
        """Coordinates of ``x - alpha mu`` in the covariance eigenbasis."""
        return (x - alpha * self.mean.to(x.device)) @ self.evecs.to(x.device)

    def marginal_var(self, alpha, sigma):
        """Eigenvalues of the marginal covariance ``alpha^2 S + sigma^2 I``."""
        return alpha * alpha * self.evals.to(alpha.device) + sigma * sigma

    def x0_eps(self, x, t, path):
        """Exact ``(E[x0|x_t], E[eps|x_t])`` for ``x`` of shape ``[B, ...]`` (float64, shaped like x)."""
        f, a, s = self._at(x, t, path)
        z = self._rot(f, a)
        v = self.marginal_var(a, s)
        q = self.evecs.to(f.device)
        x0 = self.mean.to(f.device) + (a * self.evals.to(f.device) / v * z) @ q.T
        eps = (s / v * z) @ q.T
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def log_prob(self, x, t, path: Path) -> torch.Tensor:
        """``log p_t(x)`` of the marginal at path time ``t`` (``[B]``, float64)."""
        f, a, s = self._at(x, t, path)
        z = self._rot(f, a)
        v = self.marginal_var(a, s)
        return -0.5 * ((z * z / v).sum(1) + torch.log(v).sum(1) + self.d * _LOG_2PI)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` data samples ``[n, d]`` (float64)."""
        check_int("n", n, 1)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return self.mean + (z * self.evals.sqrt()) @ self.evecs.T

    def flow_map(self, x_T: torch.Tensor, T, t, path: Path) -> torch.Tensor:
        """Exact PF-ODE solution at time ``t`` from ``x_T`` at time ``T`` (shaped like ``x_T``, float64)."""
        f, aT, sT = self._at(x_T, T, path)
        at, st = _coef(path, t, f.shape[0], f.device)
        z = self._rot(f, aT)
        ratio = torch.sqrt(self.marginal_var(at, st) / self.marginal_var(aT, sT))
        out = at * self.mean.to(f.device) + (ratio * z) @ self.evecs.to(f.device).T
        return out.reshape(x_T.shape)

    def __repr__(self):
        return f"Gaussian(d={self.d})"


class GaussianMixture(_Target):
    """Mixture of Gaussians with diagonal covariances.

    Args:
        weights: ``[K]``, non-negative, summing to 1.
        means: ``[K, d]``.
        variances: ``[K, d]`` (per-dimension variances, ``> 0``) or ``[K]`` (isotropic).
    """

    def __init__(self, weights, means, variances):
        w = as_f64(weights).detach().cpu()
        m = as_f64(means).detach().cpu()
        v = as_f64(variances).detach().cpu()
        if w.dim() != 1:
            raise ValueError(f"weights must have shape [K], got {tuple(w.shape)}")
        k = w.shape[0]
        if m.dim() != 2 or m.shape[0] != k:
            raise ValueError(f"means must have shape [K, d] with K={k} (from weights), got {tuple(m.shape)}")
        if v.shape != m.shape and v.shape != (k,):
            raise ValueError(
                f"variances must have shape [K, d] = {tuple(m.shape)} or [K] = ({k},), got {tuple(v.shape)}"
            )
        if v.dim() == 1:
            v = v[:, None].expand(m.shape).clone()
        if not bool(torch.isfinite(w).all() & torch.isfinite(m).all() & torch.isfinite(v).all()):
            raise ValueError("weights, means and variances must be finite")
        if bool((w < 0).any()):
            raise ValueError(f"weights must be non-negative, got {w.tolist()}")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, they sum to {float(w.sum())!r}")
        if bool((v <= 0).any()):
            raise ValueError(f"variances must be > 0; smallest given is {float(v.min())!r}")
        self.weights, self.means, self.variances = w, m, v
        self.k, self.d = k, m.shape[1]

    @classmethod
    def random(
        cls,
        d: int,
        k: int,
        std_range=(0.05, 1.0),
        spread: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """A random mixture: means ``N(0, spread^2 I / d)``-ish, per-dimension stds log-uniform in
        ``std_range``."""
        check_int("d", d, 1)
        check_int("k", k, 1)
        lo, hi = std_range
        if not (0 < lo <= hi):
            raise ValueError(f"std_range={std_range!r}: need 0 < low <= high")
        w = torch.rand(k, generator=generator, dtype=torch.float64) + 0.5
        means = torch.randn(k, d, generator=generator, dtype=torch.float64)
        means = spread * means / math.sqrt(max(d, 1)) * 2
        u = torch.rand(k, d, generator=generator, dtype=torch.float64)
        std = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return cls(w / w.sum(), means, std**2)

    def _components(self, f, a, s):
        dev = f.device
        m, var = self.means.to(dev), self.variances.to(dev)
        vt = a[:, :, None] * a[:, :, None] * var[None] + (s * s)[:, :, None]  # [B, K, d]
        diff = f[:, None, :] - a[:, :, None] * m[None]  # [B, K, d]
        logn = -0.5 * ((diff * diff / vt).sum(-1) + torch.log(vt).sum(-1) + self.d * _LOG_2PI)
        return logn + torch.log(self.weights.to(dev))[None], vt, diff

    def x0_eps(self, x, t, path):
        """Exact ``(E[x0|x_t], E[eps|x_t])`` for ``x`` of shape ``[B, ...]`` (float64, shaped like x)."""
        f, a, s = self._at(x, t, path)
        logw, vt, diff = self._components(f, a, s)
        r = torch.softmax(logw, dim=1)[:, :, None]  # responsibilities
        var = self.variances.to(f.device)[None]
        x0 = (r * (self.means.to(f.device)[None] + a[:, :, None] * var / vt * diff)).sum(1)
        eps = (r * (s[:, :, None] / vt * diff)).sum(1)
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def log_prob(self, x, t, path: Path) -> torch.Tensor:
        """``log p_t(x)`` of the marginal at path time ``t`` (``[B]``, float64)."""
        f, a, s = self._at(x, t, path)
        logw, _, _ = self._components(f, a, s)
        return torch.logsumexp(logw, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` data samples ``[n, d]`` (float64)."""
        check_int("n", n, 1)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return self.means[idx] + z * self.variances[idx].sqrt()

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[d]`` and covariance ``[d, d]`` of the mixture."""
        w = self.weights[:, None]
        mu = (w * self.means).sum(0)
        dm = self.means - mu
        cov = torch.diag((w * self.variances).sum(0)) + (w * dm).T @ dm
        return mu, cov

    def __repr__(self):
        return f"GaussianMixture(k={self.k}, d={self.d})"


class GMMBridge:
    """Exact fields of a stochastic interpolant between two Gaussian mixtures (independent coupling).

    ``x_t = a(t) x_data + b(t) x_src + gamma(t) z`` with ``x_data ~ data``, ``x_src ~ source`` (diagonal
    mixtures, independent) and ``z ~ N(0, I)`` (Albergo, Boffi & Vanden-Eijnden, 2023). Given the pair of
    components ``(i, j)``, ``x_t`` is Gaussian with mean ``m_ij = a mu_i + b nu_j`` and diagonal covariance
    ``C_ij = a^2 S_i + b^2 T_j + gamma^2 I``, so ``rho_t`` is a mixture over pairs with weights ``w_i v_j``.
    Within a pair ``(x_data, x_src, z, x_t)`` is jointly Gaussian, hence with responsibilities ``r_ij(x)``:

    * velocity ``b(t, x) = sum r_ij [a' mu_i + b' nu_j + (a a' S_i + b b' T_j + gamma gamma') C_ij^-1 (x - m_ij)]``
      (``= dm/dt + 1/2 dC/dt C^-1 (x - m)`` per pair);
    * denoiser ``eta_z(t, x) = E[z | x_t = x] = sum r_ij gamma C_ij^-1 (x - m_ij)``;
    * score ``s(t, x) = -sum r_ij C_ij^-1 (x - m_ij)`` (``= -eta_z / gamma`` where ``gamma > 0``; finite
      everywhere);
    * ``log rho_t(x) = logsumexp_ij(log w_i v_j + log N(x; m_ij, C_ij))``.

    Args:
        data: the :class:`GaussianMixture` at ``t = 0``.
        source: the :class:`GaussianMixture` at ``t = 1`` (``N(0, I)`` as a one-component mixture gives back
            the Gaussian paths of :mod:`pfode.paths` when ``gamma = 0``).
        interpolant: a :class:`pfode.interpolants.Interpolant` (anything with ``coeffs(t)``).

    Methods take ``x`` ``[B, ...]`` (flattened to ``[B, d]``) and ``t`` a float or ``[B]``; results are float64.
    """

    def __init__(self, data: GaussianMixture, source: GaussianMixture, interpolant):
        if not isinstance(data, GaussianMixture) or not isinstance(source, GaussianMixture):
            raise TypeError("data and source must be pfode.analytic.GaussianMixture objects")
        if data.d != source.d:
            raise ValueError(f"data has d={data.d} and source d={source.d}: the two ends must have the same dimension")
        if not callable(getattr(interpolant, "coeffs", None)):
            raise TypeError(f"interpolant must be a pfode.interpolants.Interpolant, got {type(interpolant).__name__}")
        self.data, self.source, self.interpolant, self.d = data, source, interpolant, data.d
        self._logw = (torch.log(data.weights)[:, None] + torch.log(source.weights)[None, :]).reshape(-1)  # [K*L]

    def _pairs(self, x, t):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        f = x.reshape(x.shape[0], -1).to(torch.float64)
        if f.shape[1] != self.d:
            raise ValueError(f"x has {f.shape[1]} features per sample ({tuple(x.shape)}), the bridge has d={self.d}")
        c = self.interpolant.coeffs(as_f64(t).to("cpu"))
        n = f.shape[0]

        def col(v):
            v = v.to(f.device)
            v = v.expand(n) if v.dim() == 0 else v
            if v.shape != (n,):
                raise ValueError(f"t must be a float or a [B] tensor with B={n}, got shape {tuple(v.shape)}")
            return v[:, None, None]  # [B, 1, 1] against [B, P, d]

        dev = f.device
        k, l_ = self.data.k, self.source.k
        mu = self.data.means.to(dev)[:, None, :].expand(k, l_, self.d).reshape(-1, self.d)[None]
        nu = self.source.means.to(dev)[None, :, :].expand(k, l_, self.d).reshape(-1, self.d)[None]
        s_ = self.data.variances.to(dev)[:, None, :].expand(k, l_, self.d).reshape(-1, self.d)[None]
        t_ = self.source.variances.to(dev)[None, :, :].expand(k, l_, self.d).reshape(-1, self.d)[None]
        a, b, g2 = col(c.a), col(c.b), col(c.g2)
        cov = a * a * s_ + b * b * t_ + g2  # [B, P, d]
        diff = f[:, None, :] - (a * mu + b * nu)
        logn = -0.5 * ((diff * diff / cov).sum(-1) + torch.log(cov).sum(-1) + self.d * _LOG_2PI)
        logp = logn + self._logw.to(dev)[None]
        parts = {"a": a, "b": b, "da": col(c.da), "db": col(c.db), "gamma": col(c.gamma), "dg2": col(c.dg2)}
        return f, logp, cov, diff, (mu, nu, s_, t_), parts

    def velocity(self, x, t) -> torch.Tensor:
        """Exact ``b(t, x) = E[a' x_data + b' x_src + gamma' z | x_t = x]``, shaped like ``x``."""
        f, logp, cov, diff, (mu, nu, s_, t_), p = self._pairs(x, t)
        r = torch.softmax(logp, dim=1)[:, :, None]
        gain = (p["a"] * p["da"] * s_ + p["b"] * p["db"] * t_ + 0.5 * p["dg2"]) / cov
        v = (r * (p["da"] * mu + p["db"] * nu + gain * diff)).sum(1)
        return v.reshape(x.shape)

    def score(self, x, t) -> torch.Tensor:
        """Exact ``grad_x log rho_t(x)``, shaped like ``x``."""
        f, logp, cov, diff, _, _ = self._pairs(x, t)
        r = torch.softmax(logp, dim=1)[:, :, None]
        return (-(r * diff / cov).sum(1)).reshape(x.shape)

    def score_defined(self, t) -> torch.Tensor:
        """The exact score is finite at every ``t`` (both ends have positive variances)."""
        return torch.ones_like(as_f64(t), dtype=torch.bool)

    def denoiser(self, x, t) -> torch.Tensor:
        """Exact ``eta_z(t, x) = E[z | x_t = x]``, shaped like ``x``."""
        f, logp, cov, diff, _, p = self._pairs(x, t)
        r = torch.softmax(logp, dim=1)[:, :, None]
        return (r * p["gamma"] * diff / cov).sum(1).reshape(x.shape)

    def log_prob(self, x, t) -> torch.Tensor:
        """``log rho_t(x)`` (``[B]``)."""
        _, logp, _, _, _, _ = self._pairs(x, t)
        return torch.logsumexp(logp, dim=1)

    def sample(self, n: int, t=None, generator: torch.Generator | None = None):
        """``n`` draws of ``(x_t, x_data, x_src, z)`` at times ``t`` (float or ``[n]``; default uniform on
        ``[0, 1]``), each ``[n, d]`` float64, plus the times ``[n]``."""
        check_int("n", n, 1)
        xd = self.data.sample(n, generator)
        xs = self.source.sample(n, generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        tt = torch.rand(n, generator=generator, dtype=torch.float64) if t is None else as_f64(t).expand(n).clone()
        c = self.interpolant.coeffs(tt)
        x_t = c.a[:, None] * xd + c.b[:, None] * xs + c.gamma[:, None] * z
        return x_t, xd, xs, z, tt

    def __repr__(self):
        return f"GMMBridge(data={self.data!r}, source={self.source!r}, interpolant={self.interpolant!r})"
