"""AdaFlow: Euler steps sized by the predicted conditional variance of the flow velocity.

Hu, Liu, Liu & Liu, *AdaFlow: Imitation Learning with Variance-Adaptive Flow-Based Policies*, NeurIPS 2024
(arXiv:2402.04292).

The flow velocity of a path, ``u = alpha' x0 + sigma' eps``, is a random variable given ``x_t``; its regression
target is its conditional mean ``v(x_t, t) = E[u | x_t]``. The paper bounds the local error of an Euler step of
the flow by the conditional variance ``sigma^2(x_t, t) = E[|u - v(x_t, t)|^2 | x_t]`` (the trace over all
dimensions): where it is zero the straight line from ``x_t`` along ``v`` is exact, so one Euler step from noise
lands on the data (the conditional law given the condition is a point, or more generally the flow is straight).
The variance-adaptive solver takes, per sample, in the paper's time ``tau = 1 - t`` (noise at ``tau = 0``)

    dtau = clip(eta / sigma(x_tau, tau), dtau_min, 1 - tau),     x <- x + dtau * v(x, tau),

so a sample spends one evaluation where the predicted variance is below ``eta^2`` and at most ``1 / dtau_min``
where it is large. In pfode's convention (data at ``t_min``, noise at ``t_max``, sampling down in ``t``) the step
is ``t <- max(t - dt, t_end)`` with the same ``dt``.

``variance_fn(x, t, **cond) -> [B]`` is the (predicted or exact) total conditional variance of ``dx/dt`` at
path times ``t`` (``[B]`` float64): a trained variance network
(:meth:`pfode.train.variance.VarianceMatching.variance_fn`) or the exact one of an analytic target
(:func:`exact_velocity_variance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import as_f64, check_finite_float, check_int
from ..analytic import Gaussian, GaussianMixture
from ..paths import Path
from ..predictions import Coeffs
from .base import AdaptiveSolver

__all__ = ["AdaFlow", "exact_velocity_variance", "posterior_x0_variance"]


def _slice_cond(cond: dict | None, idx: torch.Tensor, b: int) -> dict:
    """The conditioning of the samples ``idx``: tensors with a leading batch dimension ``b`` are indexed, every
    other value is passed unchanged."""
    if not cond:
        return {}
    return {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b else v)
            for k, v in cond.items()}


class AdaFlow(AdaptiveSolver):
    """The variance-adaptive Euler solver of AdaFlow (order 1, 1 evaluation of the velocity and 1 of the
    variance per step; Hu et al., 2024, the variance-adaptive ODE solver).

    Each sample keeps its own time: its step is ``dt = clip(eta / sqrt(var), min_step, t - t_end)`` with
    ``var = variance_fn(x, t, **cond)``; only samples that have not reached ``t_end`` are evaluated, so a sample's
    result does not depend on the rest of the batch. At most ``max_steps`` steps are taken per sample: the
    ``max_steps``-th step goes to ``t_end`` whatever its size (the NFE cap).

    Args:
        variance_fn: ``variance_fn(x, t, **cond) -> [B]`` total conditional variance of ``dx/dt`` (non-negative).
        eta: the error scale ``eta > 0``: one step where ``var <= eta^2 / (t_start - t_end)^2``.
        min_step: smallest step in path time (``> 0``); default ``(t_start - t_end) / max_steps``, the paper's
            ``1 / N``.
        max_steps: the NFE cap per sample (``>= 1``).
    """

    name = "adaflow"
    order = 1
    evals_per_step = 1
    paper = "Hu, Liu, Liu & Liu, AdaFlow: Imitation Learning with Variance-Adaptive Flow-Based Policies, NeurIPS 2024"
    needs_finite_lam = False

    def __init__(self, variance_fn: Callable, eta: float = 0.1, min_step: float | None = None, max_steps: int = 10):
        if not callable(variance_fn):
            raise TypeError(f"variance_fn must be callable as variance_fn(x, t, **cond), got {type(variance_fn)}")
        self.variance_fn = variance_fn
        self.eta = check_finite_float("eta", eta, 0.0, strict=True)
        self.max_steps = check_int("max_steps", max_steps, 1)
        if min_step is not None:
            min_step = check_finite_float("min_step", min_step, 0.0, strict=True)
        self.min_step = min_step

    def __repr__(self):
        return f"AdaFlow(eta={self.eta:g}, min_step={self.min_step}, max_steps={self.max_steps})"

    def step_sizes(self, var: torch.Tensor, remaining: torch.Tensor, min_step: float) -> torch.Tensor:
        """``clip(eta / sqrt(var), min_step, remaining)`` per sample (float64; ``var = 0`` gives ``remaining``)."""
        var = as_f64(var).to(remaining.device)
        if var.shape != remaining.shape:
            raise ValueError(f"variance_fn must return a [B] tensor, B={remaining.shape[0]}; got {tuple(var.shape)}")
        if not bool(torch.isfinite(var).all()) or bool((var < 0).any()):
            raise ValueError("variance_fn returned negative or non-finite variances")
        h = self.eta / var.sqrt()  # inf where var == 0
        return torch.minimum(h.clamp_min(min_step), remaining)

    def solve(self, den, x: torch.Tensor, t_start: float, t_end: float, cond=None, callback=None):
        """Integrate ``dx/dt = alpha' x0_hat + sigma' eps_hat`` of ``den`` from ``t_start`` down to ``t_end``.

        ``callback`` is called after every step with ``{"i", "t", "t_prev", "x", "x0_hat", "accepted",
        "variance"}``: ``t``, ``t_prev`` are ``[B]`` float64 (each sample's time now and before; equal for samples
        already done), ``x`` the states, ``x0_hat`` the denoiser at ``t_prev`` (``nan`` rows for samples done),
        ``accepted`` a ``[B]`` bool of the samples that stepped and ``variance`` ``[B]`` (``nan`` where done).
        Returns ``(x, info)``: ``info["nfe"]`` the evaluations of the batch (iterations of the loop, the most
        any sample spent), ``info["nfe_per_sample"]`` ``[B]`` int64 (steps = evaluations per sample),
        ``info["steps"]`` the same, ``info["mean_nfe"]`` a float and ``info["attempts"]``.
        """
        t_start = check_finite_float("t_start", t_start)
        t_end = check_finite_float("t_end", t_end)
        if not t_start > t_end:
            raise ValueError(f"t_start={t_start:g} must be above t_end={t_end:g} (sampling goes down in t)")
        path: Path = den.path
        if not (path.t_lo <= t_end and t_start <= path.t_hi):
            raise ValueError(f"[t_end, t_start]=[{t_end:g}, {t_start:g}] leaves [{path.t_lo}, {path.t_hi}] of {path!r}")
        b, dev = x.shape[0], x.device
        min_step = self.min_step if self.min_step is not None else (t_start - t_end) / self.max_steps
        t = torch.full((b,), t_start, dtype=torch.float64, device=dev)
        steps = torch.zeros(b, dtype=torch.int64, device=dev)
        view = (-1,) + (1,) * (x.dim() - 1)
        i = 0
        while True:
            active = t > t_end
            if not bool(active.any()):
                break
            idx = active.nonzero().squeeze(1)
            xa, ta = x[idx], t[idx]
            ca = _slice_cond(cond, idx, b)
            c = Coeffs.at(path, ta, like=xa)
            x0, eps = den.pair_at(xa, ta, ca, coeffs=c)
            vel = c.d_alpha * x0 + c.d_sigma * eps
            var = self.variance_fn(xa, ta, **ca)
            remaining = ta - t_end
            h = self.step_sizes(var, remaining, min_step)
            last = steps[idx] + 1 >= self.max_steps  # the NFE cap: this step ends the sample's integration
            h = torch.where(last, remaining, h)
            t_new = torch.where(h >= remaining, torch.full_like(ta, t_end), ta - h)
            x = x.index_copy(0, idx, (xa - (ta - t_new).to(xa.dtype).reshape(view) * vel).to(x.dtype))
            t_prev = t.clone()
            t = t.index_copy(0, idx, t_new)
            steps = steps.index_add(0, idx, torch.ones_like(idx))
            if callback is not None:
                full_x0 = torch.full_like(x, math.nan).index_copy(0, idx, x0.to(x.dtype))
                full_var = torch.full((b,), math.nan, dtype=torch.float64, device=dev)
                full_var = full_var.index_copy(0, idx, as_f64(var).to(dev))
                callback({"i": i, "t": t.clone(), "t_prev": t_prev, "x": x, "x0_hat": full_x0, "accepted": active,
                          "variance": full_var})
            i += 1
        info = {"nfe": i, "attempts": i, "steps": steps, "nfe_per_sample": steps,
                "mean_nfe": float(steps.double().mean())}
        return x, info


# --- exact conditional variance of the velocity on analytic targets ------------------------------------------
def posterior_x0_variance(target, x: torch.Tensor, t, path: Path) -> torch.Tensor:
    """``tr Var[x0 | x_t = x]`` (``[B]``, float64) for a :class:`~pfode.analytic.Gaussian` or
    :class:`~pfode.analytic.GaussianMixture` target on ``path``.

    Per mixture component ``k`` (diagonal prior variance ``v_k``): ``x0 | x_t, k`` is Gaussian with covariance
    ``v_k sigma^2 / (alpha^2 v_k + sigma^2)`` and mean ``m_k = mu_k + alpha v_k (x - alpha mu_k) /
    (alpha^2 v_k + sigma^2)``; with responsibilities ``r_k`` the law of total variance gives
    ``tr Var = sum_k r_k (tr Cov_k + |m_k|^2) - |sum_k r_k m_k|^2``. A full-covariance Gaussian ``N(mu, S)`` has
    ``tr Var = sum_i l_i sigma^2 / (alpha^2 l_i + sigma^2)`` over the eigenvalues ``l_i`` of ``S``.
    """
    f, a, s = target._at(x, t, path)
    if isinstance(target, GaussianMixture):
        logw, vt, diff = target._components(f, a, s)
        r = torch.softmax(logw, dim=1)  # [B, K]
        var = target.variances.to(f.device)[None]  # [1, K, d]
        post_var = var * (s * s)[:, :, None] / vt  # [B, K, d]
        post_mean = target.means.to(f.device)[None] + a[:, :, None] * var / vt * diff  # [B, K, d]
        second = (r[:, :, None] * (post_var + post_mean * post_mean)).sum(1)  # [B, d]
        mean = (r[:, :, None] * post_mean).sum(1)
        return (second - mean * mean).sum(1).clamp_min(0.0)
    if isinstance(target, Gaussian):
        lam = target.evals.to(f.device)[None]  # [1, d]
        return (lam * s * s / (a * a * lam + s * s)).sum(1)
    raise TypeError(f"target must be a pfode.analytic Gaussian or GaussianMixture, got {type(target).__name__}")


def exact_velocity_variance(target, path: Path) -> Callable:
    """The exact ``variance_fn(x, t) -> [B]`` of an analytic target: ``tr Var[dx/dt | x_t]`` on ``path``.

    With ``u = alpha' x0 + sigma' eps`` and ``eps = (x_t - alpha x0) / sigma``, ``u = (alpha' - sigma' alpha /
    sigma) x0 + (sigma' / sigma) x_t``, so ``Var[u | x_t] = (alpha' - sigma' alpha / sigma)^2 Var[x0 | x_t]``;
    on the Linear path (``alpha = 1 - t``, ``sigma = t``) the factor is ``1 / t^2``: ``Var[eps - x0 | x_t] =
    Var[x0 | x_t] / t^2``. At ``sigma = 0`` the variance is 0 (``x0 = x_t``).
    """
    if not isinstance(target, (Gaussian, GaussianMixture)):
        raise TypeError(f"target must be a pfode.analytic Gaussian or GaussianMixture, got {type(target).__name__}")
    if not isinstance(path, Path):
        raise TypeError(f"path must be a pfode.paths.Path, got {type(path).__name__}")

    def variance_fn(x: torch.Tensor, t, **cond) -> torch.Tensor:
        tt = as_f64(t).to(x.device)
        tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
        a, s, da, ds = (path.alpha(tt), path.sigma(tt), path.d_alpha(tt), path.d_sigma(tt))
        zero = s == 0
        s_safe = torch.where(zero, torch.ones_like(s), s)
        k = (da - ds * a / s_safe) ** 2
        v = posterior_x0_variance(target, x, tt, path)
        return torch.where(zero, torch.zeros_like(v), k * v)

    return variance_fn
