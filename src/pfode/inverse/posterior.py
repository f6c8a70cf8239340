"""The exact posterior of a Gaussian or Gaussian-mixture prior under a linear Gaussian measurement.

With ``x ~ sum_k w_k N(mu_k, S_k)`` and ``y = A x + noise * n``, Bayes' rule keeps every component Gaussian:

    C_k   = A S_k A^T + noise^2 I                         (the evidence covariance, [m, m])
    K_k   = S_k A^T C_k^{-1}                              (the gain, [d, m])
    mu'_k = mu_k + K_k (y - A mu_k),    S'_k = S_k - K_k A S_k,
    w'_k  proportional to  w_k N(y; A mu_k, C_k),

so the posterior is again a mixture, in closed form (float64). :class:`PosteriorMixture` samples it, gives its
log-density, mean, covariance and per-coordinate credible intervals: the truth that every method of
:mod:`pfode.inverse` is measured against.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_f64, check_finite_float, check_int
from .operators import LinearOperator

__all__ = ["PosteriorMixture", "posterior"]

_LOG_2PI = math.log(2 * math.pi)


class PosteriorMixture:
    """A Gaussian mixture with full covariances, ``weights [K]``, ``means [K, d]``, ``covs [K, d, d]`` (float64),
    whose samples are shaped ``[n, *shape]``."""

    def __init__(self, weights, means, covs, shape=None, log_evidence: float | None = None):
        self.weights, self.means, self.covs = as_f64(weights), as_f64(means), as_f64(covs)
        self.k, self.d = self.means.shape
        self.shape = tuple(shape) if shape is not None else (self.d,)
        self.log_evidence = log_evidence
        covs = 0.5 * (self.covs + self.covs.transpose(1, 2))
        evals, evecs = torch.linalg.eigh(covs)
        self._evals, self._evecs = evals.clamp_min(0.0), evecs

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact posterior samples ``[n, *shape]`` (float64)."""
        check_int("n", n, 1)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        root = self._evecs[idx] * self._evals[idx].sqrt()[:, None, :]  # [n, d, d]
        x = self.means[idx] + (root @ z[:, :, None]).squeeze(-1)
        return x.reshape(n, *self.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | y)`` (``[B]``). Needs non-degenerate components (a noisy measurement, ``noise > 0``)."""
        lo = float(self._evals.min())
        if lo <= 1e-14 * float(self._evals.max()):
            raise ValueError("the posterior is degenerate (noise=0 pins some directions): log_prob needs noise > 0")
        f = as_f64(x).reshape(x.shape[0], -1)
        diff = f[:, None, :] - self.means[None]  # [B, K, d]
        proj = torch.einsum("bkd,kde->bke", diff, self._evecs)
        maha = (proj * proj / self._evals[None]).sum(-1)
        logdet = torch.log(self._evals).sum(-1)
        logn = -0.5 * (maha + logdet[None] + self.d * _LOG_2PI)
        return torch.logsumexp(logn + torch.log(self.weights)[None], dim=1)

    def mean(self) -> torch.Tensor:
        """The posterior mean ``[*shape]``."""
        return (self.weights[:, None] * self.means).sum(0).reshape(self.shape)

    def cov(self) -> torch.Tensor:
        """The posterior covariance ``[d, d]`` (law of total covariance)."""
        mu = self.mean().reshape(-1)
        dm = self.means - mu
        w = self.weights[:, None, None]
        return (w * self.covs).sum(0) + (self.weights[:, None] * dm).T @ dm

    def marginal_std(self) -> torch.Tensor:
        """Per-coordinate posterior standard deviation ``[*shape]``."""
        return self.cov().diagonal().clamp_min(0.0).sqrt().reshape(self.shape)

    def credible_interval(self, level: float = 0.9, iters: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
        """The central ``level`` interval of each coordinate's marginal (a 1-D mixture of normals; quantiles by
        bisection): ``(low, high)``, each ``[*shape]``."""
        level = check_finite_float("level", level, 0.0, strict=True)
        if level >= 1.0:
            raise ValueError(f"level={level!r} must be in (0, 1)")
        mu = self.means  # [K, d]
        sd = self.covs.diagonal(dim1=1, dim2=2).clamp_min(1e-300).sqrt()

        def cdf(v):  # v [d] -> [d]
            return (self.weights[:, None] * 0.5 * torch.erfc(-(v[None] - mu) / (sd * math.sqrt(2)))).sum(0)

        def quantile(q):
            lo = (mu - 12 * sd).min(0).values
            hi = (mu + 12 * sd).max(0).values
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                below = cdf(mid) < q
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            return 0.5 * (lo + hi)

        a = 0.5 * (1.0 - level)
        return quantile(a).reshape(self.shape), quantile(1.0 - a).reshape(self.shape)

    def __repr__(self):
        return f"PosteriorMixture(k={self.k}, d={self.d})"


def _prior(target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..analytic import Gaussian, GaussianMixture

    if isinstance(target, GaussianMixture):
        return target.weights, target.means, torch.diag_embed(target.variances)
    if isinstance(target, Gaussian):
        return torch.ones(1, dtype=torch.float64), target.mean.reshape(1, -1), target.cov[None]
    raise TypeError(f"target must be a pfode.analytic Gaussian or GaussianMixture, got {type(target).__name__}")


def posterior(target, operator: LinearOperator, y: torch.Tensor) -> PosteriorMixture:
    """The exact posterior ``p(x | y)`` of an analytic prior under ``y = A x + noise * n``.

    Args:
        target: a :class:`pfode.analytic.Gaussian` or :class:`pfode.analytic.GaussianMixture` prior (dimension
            ``d`` = the operator's sample size).
        operator: a :class:`~pfode.inverse.operators.LinearOperator` (its matrix and ``noise`` are used).
        y: one measurement, ``[m]`` or ``[1, m]``.
    Returns:
        a :class:`PosteriorMixture` whose samples have the operator's sample shape; ``log_evidence`` is
        ``log p(y)``.
    """
    if not isinstance(operator, LinearOperator):
        raise TypeError(
            f"operator must be a linear pfode.inverse operator (the exact posterior needs a matrix), got {operator!r}"
        )
    w, mu, cov = _prior(target)
    a = operator.matrix()
    if mu.shape[1] != a.shape[1]:
        raise ValueError(f"the prior has dimension {mu.shape[1]}, the operator acts on {a.shape[1]} entries")
    y = as_f64(y).reshape(-1) if isinstance(y, torch.Tensor) else None
    if y is None or y.shape[0] != a.shape[0]:
        raise ValueError(f"y must be one measurement of {a.shape[0]} entries ([m] or [1, m])")
    m = a.shape[0]
    c = a[None] @ cov @ a.T[None] + operator.noise**2 * torch.eye(m, dtype=torch.float64)[None]  # [K, m, m]
    try:
        chol = torch.linalg.cholesky(c)
    except RuntimeError:
        raise ValueError(
            "A S A^T + noise^2 I is singular: with noise=0 the operator's rows must be independent on the prior's "
            "support; give noise > 0"
        ) from None
    r = y[None] - mu @ a.T  # [K, m]
    sol = torch.cholesky_solve(r[:, :, None], chol).squeeze(-1)  # C^{-1} r
    sa = cov @ a.T[None]  # S A^T  [K, d, m]
    means = mu + (sa @ sol[:, :, None]).squeeze(-1)
    gain_t = torch.cholesky_solve(sa.transpose(1, 2), chol)  # C^{-1} A S  [K, m, d]
    covs = cov - sa @ gain_t
    covs = 0.5 * (covs + covs.transpose(1, 2))
    logdet = 2 * torch.log(chol.diagonal(dim1=1, dim2=2)).sum(-1)
    logn = -0.5 * ((r * sol).sum(-1) + logdet + m * _LOG_2PI)
    logw = torch.log(w) + logn
    ev = torch.logsumexp(logw, 0)
    return PosteriorMixture(torch.exp(logw - ev), means, covs, operator.shape, float(ev))
