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
(:meth:`pfode.train.variance.VarianceMatching.variance_fn`), the exact one of an analytic target
(:func:`exact_velocity_variance`), or, with ``variance_fn=None`` (the registered ``"adaflow"``), read off the
model itself by Tweedie's second-order formula (:func:`tweedie_velocity_variance`): no variance head, at the cost of
Jacobian-vector products.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import as_f64, check_finite_float, check_int
from ..analytic import Gaussian, GaussianMixture
from ..paths import Path
from ..predictions import Coeffs
from .base import AdaptiveSolver, register

__all__ = ["AdaFlow", "exact_velocity_variance", "posterior_x0_variance", "tweedie_velocity_variance"]


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
        variance_fn: ``variance_fn(x, t, **cond) -> [B]`` total conditional variance of ``dx/dt`` (non-negative);
            ``None``: the denoiser's own Tweedie variance (:func:`tweedie_velocity_variance`; its Jacobian
            products are reported in ``info["jacobian_products"]``, not in ``nfe``).
        probes: with ``variance_fn=None``: 0 for the exact Jacobian trace (one product per element of a sample:
            small states, e.g. actions), ``k > 0`` for Hutchinson's estimate with ``k`` Rademacher probes.
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

    def __init__(self, variance_fn: Callable | None = None, eta: float = 0.1, min_step: float | None = None,
                 max_steps: int = 10, probes: int = 0):
        if variance_fn is not None and not callable(variance_fn):
            raise TypeError(
                f"variance_fn must be None or callable as variance_fn(x, t, **cond), got {type(variance_fn)}"
            )
        self.variance_fn = variance_fn
        self.probes = check_int("probes", probes, 0)
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
        i = products = 0
        own = self.variance_fn is None
        if own and float(path.alpha(torch.tensor(t_start, dtype=torch.float64))) <= 0.0:
            raise ValueError(
                f"adaflow without a variance_fn reads the variance off the denoiser (Tweedie), which needs "
                f"alpha > 0; alpha(t_start={t_start:g}) = 0 on {path!r}: give a variance_fn or a lower t_start"
            )
        gen = torch.Generator(device=dev).manual_seed(0) if own and self.probes else None
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
            if own:
                var, k = _tweedie(den, xa, ta, ca, self.probes, gen)
                products += k
            else:
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
        if own:
            info["jacobian_products"] = products
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


def _velocity_factor(a, s, da, ds):
    """``(alpha' - sigma' alpha / sigma)^2``: ``Var[dx/dt | x_t] = factor * Var[x0 | x_t]`` (0 where sigma = 0)."""
    zero = s == 0
    s_safe = torch.where(zero, torch.ones_like(s), s)
    return torch.where(zero, torch.zeros_like(s), (da - ds * a / s_safe) ** 2)


def _tweedie(den, x, t, cond, probes, generator):
    """``(tr Var[dx/dt | x_t] [B] float64, Jacobian products spent)`` from ``den`` (see
    :func:`tweedie_velocity_variance`)."""
    path = den.path
    c = Coeffs.at(path, t, like=x)
    b = x.shape[0]
    flat = int(x[0].numel()) if x.dim() > 1 else 1
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        x0 = den.pair_at(y, t, cond, coeffs=c)[0]
        if probes == 0:
            basis = torch.eye(flat, dtype=x.dtype, device=x.device)
            vs = [basis[j].reshape(x.shape[1:]).expand_as(x) for j in range(flat)]
        else:
            vs = [(torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1).to(x.dtype)
                  for _ in range(probes)]
        tr = torch.zeros(b, dtype=torch.float64, device=x.device)
        for j, v in enumerate(vs):
            (g,) = torch.autograd.grad(x0, y, v, retain_graph=j + 1 < len(vs))
            tr = tr + (g * v).reshape(b, -1).sum(1).double()
    if probes:
        tr = tr / probes
    a, s, da, ds = (as_f64(f(t)).to(x.device).reshape(b) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    var_x0 = (s * s / a) * tr  # Tweedie: d x0_hat / d x_t = alpha Cov[x0 | x_t] / sigma^2
    return (_velocity_factor(a, s, da, ds) * var_x0).clamp_min(0.0).detach(), len(vs)


def tweedie_velocity_variance(den, probes: int = 0, generator: torch.Generator | None = None) -> Callable:
    """``variance_fn(x, t, **cond) -> [B]``: ``tr Var[dx/dt | x_t]`` read off a denoiser, no variance head.

    Tweedie's second-order identity on an affine Gaussian path: ``d x0_hat / d x_t = (alpha / sigma^2)
    Cov[x0 | x_t]``, so ``tr Var[x0 | x_t] = (sigma^2 / alpha) tr(d x0_hat / d x_t)`` and the velocity's variance
    is ``(alpha' - sigma' alpha / sigma)^2`` times that (see :func:`exact_velocity_variance`). Exact for the exact
    denoiser; for a network, as good as its Jacobian. The trace is exact (``probes=0``: one vector-Jacobian
    product per element of a sample) or Hutchinson's with ``probes`` Rademacher vectors. Needs ``alpha > 0``.
    """
    check_int("probes", probes, 0)

    def variance_fn(x: torch.Tensor, t, **cond) -> torch.Tensor:
        tt = as_f64(t).to(x.device)
        tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
        return _tweedie(den, x, tt, cond, probes, generator)[0]

    return variance_fn


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
        return _velocity_factor(a, s, da, ds) * posterior_x0_variance(target, x, tt, path)

    return variance_fn


register("adaflow", AdaFlow)
