"""The analytic first segment: the closed-form PF-ODE of a Gaussian with the data's mean and covariance.

At high noise the marginal of any data distribution is close to that of the Gaussian with the same mean
``mu`` and covariance ``S`` ("Diffusion models generate images like painters": the early trajectory
follows the Gaussian's PF-ODE), and that ODE has a closed-form flow map on every affine path:

    x_to = alpha_to mu + (alpha_to^2 S + sigma_to^2 I)^(1/2) (alpha_from^2 S + sigma_from^2 I)^(-1/2)
           (x_from - alpha_from mu).

A tuned recipe may follow it from ``t_max`` to a tuned ``t_skip`` for no network evaluation. The
covariance is kept as ``mean + low-rank eigenbasis + isotropic rest``: ``S = U diag(v) U^T + rest (I - U U^T)``
(full when the rank is the dimension), so images of any size stay cheap.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_f64, check_int
from ..io import decode_array, encode_array
from ..paths import Path

__all__ = ["GaussianSkip"]


class GaussianSkip:
    """Gaussian moments ``mean [d]``, ``basis [d, r]`` (orthonormal columns), ``var [r]`` and ``rest >= 0``
    of a data distribution of sample shape ``shape``, and the closed-form PF-ODE flow map of that Gaussian.
    """

    def __init__(self, mean, basis, var, rest: float, shape):
        self.mean = as_f64(mean).detach().cpu().reshape(-1)
        self.basis = as_f64(basis).detach().cpu().contiguous()
        self.var = as_f64(var).detach().cpu().reshape(-1)
        self.rest = float(rest)
        self.shape = tuple(int(v) for v in shape)
        d = self.mean.numel()
        if math.prod(self.shape) != d:
            raise ValueError(f"shape={self.shape} has {math.prod(self.shape)} elements, mean has {d}")
        if self.basis.dim() != 2 or self.basis.shape[0] != d or self.basis.shape[1] != self.var.numel():
            raise ValueError(
                f"basis must have shape [d, r] = [{d}, {self.var.numel()}] (r = len(var)), "
                f"got {tuple(self.basis.shape)}"
            )
        if not (
            torch.isfinite(self.mean).all() and torch.isfinite(self.basis).all() and torch.isfinite(self.var).all()
        ):
            raise ValueError("mean, basis and var must be finite")
        if bool((self.var < 0).any()) or not (math.isfinite(self.rest) and self.rest >= 0):
            raise ValueError(f"variances must be >= 0 (var min {float(self.var.min()):.3g}, rest {self.rest!r})")
        self._cache: dict = {}

    @property
    def d(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        return self.var.numel()

    @classmethod
    def from_samples(cls, x: torch.Tensor, rank: int | None = None) -> GaussianSkip:
        """Moments of samples ``x [m, *shape]``: the mean, the top ``rank`` principal directions (default:
        ``min(d, m // 2)``; ``d`` is the full covariance) and the mean variance of the rest."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError("data must be a tensor [m, *shape] of samples")
        m = x.shape[0]
        if m < 2:
            raise ValueError(f"data has {m} sample(s); moments need at least 2")
        f = x.detach().reshape(m, -1).to(torch.float64).cpu()
        d = f.shape[1]
        r = min(d, max(1, m // 2)) if rank is None else check_int("rank", rank, 1)
        if r > d:
            raise ValueError(f"rank={r} exceeds the data dimension {d}")
        mean = f.mean(0)
        c = (f - mean) / math.sqrt(m - 1)
        if r == d and m > d:
            ev, vec = torch.linalg.eigh(c.T @ c)
            ev, vec = ev.flip(0).clamp_min(0), vec.flip(1)
            return cls(mean, vec, ev, 0.0, x.shape[1:])
        _, sv, vh = torch.linalg.svd(c, full_matrices=False)
        k = min(r, sv.numel())
        ev = sv[:k] ** 2
        total = float((c * c).sum())
        rest = max(total - float(ev.sum()), 0.0) / (d - k) if d > k else 0.0
        return cls(mean, vh[:k].T, ev, rest, x.shape[1:])

    @classmethod
    def from_gaussian(cls, mean, cov, shape=None) -> GaussianSkip:
        """Exact moments of ``N(mean, cov)`` (full covariance)."""
        mean = as_f64(mean).reshape(-1)
        ev, vec = torch.linalg.eigh(as_f64(cov))
        return cls(mean, vec, ev.clamp_min(0), 0.0, shape if shape is not None else (mean.numel(),))

    # -- the flow map ------------------------------------------------------------------------
    def factors(self, path: Path, t_from: float, t_to: float):
        """Host float64 ``(a_from, a_to, f_rest, f)``: ``f = sqrt((a_to^2 v + s_to^2) / (a_from^2 v + s_from^2))``."""
        t = torch.tensor([t_from, t_to], dtype=torch.float64)
        (a0, a1), (s0, s1) = path.alpha(t).tolist(), path.sigma(t).tolist()
        if s0 <= 0:
            raise ValueError(f"the analytic segment must start above zero noise (sigma(t_from={t_from:g}) = 0)")

        def fac(v):
            return ((a1 * a1 * v + s1 * s1) / (a0 * a0 * v + s0 * s0)).sqrt()

        return a0, a1, float(fac(torch.tensor(self.rest, dtype=torch.float64))), fac(self.var)

    def flow(self, x: torch.Tensor, path: Path, t_from: float, t_to: float) -> torch.Tensor:
        """The Gaussian's PF-ODE solution at ``t_to`` from ``x [B, *shape]`` at ``t_from`` (dtype of ``x``)."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"x has sample shape {tuple(x.shape[1:])}; the analytic segment was fitted on {self.shape}"
            )
        key = (id(path), float(t_from), float(t_to), x.device, x.dtype)
        hit = self._cache.get(key)
        if hit is None:
            a0, a1, fr, f = self.factors(path, t_from, t_to)
            dt = x.dtype
            mean = self.mean.to(x.device, dt)
            hit = (a0, fr, (a1 - fr * a0) * mean, mean, self.basis.to(x.device, dt), (f - fr).to(x.device, dt))
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = hit
        a0, fr, shift, mean, u, g = hit
        flat = x.reshape(x.shape[0], -1)
        coef = torch.add(flat, mean, alpha=-a0) @ u
        out = torch.addmm(torch.add(flat * fr, shift), coef * g, u.T)
        return out.reshape(x.shape)

    # -- description -------------------------------------------------------------------------
    def spec(self) -> dict:
        return {
            "shape": list(self.shape),
            "mean": encode_array(self.mean),
            "basis": encode_array(self.basis),
            "var": encode_array(self.var),
            "rest": self.rest,
        }

    @classmethod
    def from_spec(cls, spec, name: str = "skip") -> GaussianSkip:
        if not isinstance(spec, dict):
            raise ValueError(f"{name} must be a dict, got {type(spec).__name__}")
        need = {"shape", "mean", "basis", "var", "rest"}
        if set(spec) != need:
            raise ValueError(f"{name} must have exactly the fields {sorted(need)}, got {sorted(spec)}")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
            raise ValueError(f"{name}.shape must be a list of integers, got {shape!r}")
        rest = spec["rest"]
        if isinstance(rest, bool) or not isinstance(rest, (int, float)):
            raise ValueError(f"{name}.rest must be a number, got {rest!r}")
        return cls(
            decode_array(spec["mean"], f"{name}.mean"),
            decode_array(spec["basis"], f"{name}.basis"),
            decode_array(spec["var"], f"{name}.var"),
            rest,
            shape,
        )
