"""Guidance as denoiser wrappers: classifier-free guidance, dynamic thresholding, classifier guidance.

Each function takes a :class:`pfode.Denoiser` and returns a new one, so guided models work with every
solver, :func:`pfode.sample`, the likelihood and the adjoint, and wrappers compose
(``dynamic_thresholding(cfg(den, 3.0, uncond), 0.995)``). When the wrapped network is an ``nn.Module``
the wrapper's network is a module holding it, so its parameters stay reachable.

Classifier-free guidance (Ho & Salimans, 2022) combines the conditional and unconditional outputs as
``out_u + w (out_c - out_u)`` in the network's own prediction space, from one batched call. Every
prediction type is an affine function of ``(x0_hat, eps_hat)`` at fixed ``(x, t)`` and the weights
``1 - w`` and ``w`` sum to one, so the same combination holds for ``x0_hat``, ``eps_hat``, the score
and the velocity: the guidance is identical whatever the parameterization (``w = 1``: conditional,
``w = 0``: unconditional). For Gaussians the guided score ``(1 - w) grad log p_u + w grad log p_c`` is
the score of a Gaussian, which the tests use.

Dynamic thresholding (Saharia et al., Imagen, 2022; used by DPM-Solver++) clips ``x0_hat`` to
``[-s, s]`` per sample with ``s`` the ``percentile`` quantile of ``|x0_hat|`` (computed in float32, so
float16 models are safe), floored at the data bound and capped at ``max_value``, then (``rescale=True``,
Imagen) divides by ``s / bound``. A sample whose ``|x0_hat|`` stays within the bound is returned unchanged.

Classifier guidance (Dhariwal & Nichol, 2021) adds ``scale * grad_x log p(y | x_t, t)`` to the score:
``eps_hat <- eps_hat - scale sigma grad``, i.e. ``x0_hat <- x0_hat + scale sigma^2 / alpha grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import as_f64, check_finite_float
from .predictions import Coeffs, Denoiser, check_denoiser

__all__ = ["cfg", "dynamic_thresholding", "threshold_x0", "classifier_guidance"]


class _Wrapper(torch.nn.Module):
    """Holds the wrapped network (and classifier): modules become submodules, other callables attributes."""

    def __init__(self, net, extra=None):
        super().__init__()
        self.inner, self.extra = net, extra


# -- classifier-free guidance -------------------------------------------------------------------------
def _cat_cond(cond: dict, uncond: dict, b: int):
    """Batched kwargs for ``[x; x]``: tensors concatenated (batch-1 tensors expanded); other values equal."""
    if set(cond) != set(uncond):
        return None
    out = {}
    for k in cond:
        c, u = cond[k], uncond[k]
        if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
            if c.dim() == 0 or u.dim() == 0:
                return None
            c = c.expand(b, *c.shape[1:]) if c.shape[0] == 1 and b > 1 else c
            u = u.expand(b, *u.shape[1:]) if u.shape[0] == 1 and b > 1 else u
            if c.shape[0] != b or u.shape[0] != b or c.shape[1:] != u.shape[1:]:
                return None
            out[k] = torch.cat([c, u.to(dtype=c.dtype, device=c.device)])
        elif isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor):
            return None
        else:
            if c is not u and c != u:
                return None
            out[k] = c
    return out


class _CFGNet(_Wrapper):
    def __init__(self, net, scale: float, uncond, batched: bool):
        super().__init__(net)
        self.scale, self.uncond, self.batched = scale, uncond, batched

    def forward(self, x, t, **cond):
        net, w = self.inner, self.scale
        if w == 1.0:
            return net(x, t, **cond)
        unc = self.uncond(cond) if callable(self.uncond) else dict(self.uncond or {})
        if w == 0.0:
            return net(x, t, **unc)
        b = x.shape[0]
        both = _cat_cond(cond, unc, b) if self.batched else None
        if both is not None:
            out = net(torch.cat([x, x]), torch.cat([t, t]), **both)
            if not isinstance(out, torch.Tensor) or out.shape[0] != 2 * b:
                raise ValueError("the network must return a tensor with the batch of its input for cfg")
            out_c, out_u = out[:b], out[b:]
        else:
            out_c, out_u = net(x, t, **cond), net(x, t, **unc)
        return out_u + w * (out_c - out_u)


def cfg(
    denoiser: Denoiser,
    scale: float,
    uncond: dict | Callable[[dict], dict] | None = None,
    *,
    batched: bool = True,
) -> Denoiser:
    """Classifier-free guidance: a :class:`Denoiser` giving ``out_u + scale (out_c - out_u)``.

    Args:
        denoiser: the conditional model; its network gets the ``cond`` passed at sampling time.
        scale: guidance weight ``w`` (finite; ``1`` = conditional, ``0`` = unconditional, ``> 1`` guided).
        uncond: keyword arguments of the unconditional call (e.g. ``{"y": null_label}``), or a callable
            mapping the conditional kwargs to them; ``None``: call the network without kwargs.
        batched: evaluate both in one call on ``[x; x]`` (tensors concatenated along the batch; a batch-1
            tensor is expanded); falls back to two calls when the kwargs cannot be batched.
    """
    check_denoiser(denoiser)
    scale = check_finite_float("scale", scale)
    if uncond is not None and not (isinstance(uncond, dict) or callable(uncond)):
        raise TypeError(f"uncond must be a dict of keyword arguments or a callable, got {type(uncond).__name__}")
    net = _CFGNet(denoiser.net, scale, uncond, bool(batched))
    return Denoiser(net, denoiser.path, prediction=denoiser.prediction, time_input=denoiser.time_input)


# -- dynamic thresholding -----------------------------------------------------------------------------
def threshold_x0(
    x0: torch.Tensor,
    percentile: float = 0.995,
    bound: float = 1.0,
    max_value: float = math.inf,
    rescale: bool = True,
) -> torch.Tensor:
    """Dynamic thresholding of ``x0`` ``[B, ...]`` (see module docs); the quantile is computed in float32."""
    b = x0.shape[0]
    flat = x0.reshape(b, -1).abs().to(torch.float32 if x0.dtype != torch.float64 else torch.float64)
    if flat.shape[1] <= 16_000_000:
        q = torch.quantile(flat, percentile, dim=1)
    else:  # torch.quantile's input limit: the k-th value with the "higher" convention
        k = min(flat.shape[1], max(1, math.ceil(percentile * flat.shape[1])))
        q = flat.kthvalue(k, dim=1).values
    s = q.clamp(min=bound, max=max(bound, max_value)).reshape((b,) + (1,) * (x0.dim() - 1))
    wide = x0.to(s.dtype)
    out = torch.minimum(torch.maximum(wide, -s), s)
    if rescale:
        out = out * (bound / s)
    return out.to(x0.dtype)


class _ThresholdNet(_Wrapper):
    def __init__(self, den: Denoiser, kw: dict):
        super().__init__(den.net)
        self.den, self.kw = den, kw

    def forward(self, x, t, **cond):
        x0, _ = self.den(x, as_f64(t), **cond)
        return threshold_x0(x0, **self.kw)


def dynamic_thresholding(
    denoiser: Denoiser,
    percentile: float = 0.995,
    *,
    bound: float = 1.0,
    max_value: float = math.inf,
    rescale: bool = True,
) -> Denoiser:
    """A :class:`Denoiser` whose ``x0_hat`` is dynamically thresholded (an x0-prediction model).

    Args:
        denoiser: the model.
        percentile: quantile of ``|x0_hat|`` per sample, in ``(0, 1]``.
        bound: the data range ``[-bound, bound]`` (the floor of the threshold ``s``).
        max_value: cap on ``s`` (DPM-Solver++'s ``max_val``; ``bound`` gives static clipping).
        rescale: divide by ``s / bound`` after clipping (Imagen); ``False`` only clips.
    """
    check_denoiser(denoiser)
    percentile = check_finite_float("percentile", percentile)
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile={percentile!r} must be in (0, 1]")
    bound = check_finite_float("bound", bound, 0.0, strict=True)
    if not (isinstance(max_value, (int, float)) and not isinstance(max_value, bool)) or math.isnan(max_value):
        raise TypeError(f"max_value must be a number (inf for no cap), got {max_value!r}")
    kw = {"percentile": percentile, "bound": bound, "max_value": float(max_value), "rescale": bool(rescale)}
    return Denoiser(_ThresholdNet(denoiser, kw), denoiser.path, prediction="x0", time_input="t")


# -- classifier guidance ------------------------------------------------------------------------------
class _ClassifierNet(_Wrapper):
    def __init__(self, den: Denoiser, log_prob, scale: float, net_keys):
        super().__init__(den.net, log_prob)
        self.den, self.scale, self.net_keys = den, scale, net_keys

    def forward(self, x, t, **cond):
        t64 = as_f64(t)
        net_cond = cond if self.net_keys is None else {k: v for k, v in cond.items() if k in self.net_keys}
        x0, _ = self.den(x, t64, **net_cond)
        if self.scale == 0.0:
            return x0
        outer = x.requires_grad and torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if outer else x.detach().requires_grad_(True)
            lp = self.extra(xg, t64.to(x.device), **cond)
            if not isinstance(lp, torch.Tensor) or lp.shape != (x.shape[0],):
                raise ValueError(f"log_prob must return a [B] tensor, got {getattr(lp, 'shape', type(lp))}")
            (grad,) = torch.autograd.grad(lp.sum(), xg, create_graph=outer)
        c = Coeffs.at(self.den.path, t64.to(x.device), like=x)
        return x0 + (self.scale * c.sigma * c.sigma / c.alpha) * grad.to(x0.dtype)


def classifier_guidance(
    denoiser: Denoiser,
    log_prob: Callable[..., torch.Tensor],
    scale: float = 1.0,
    *,
    net_keys: tuple[str, ...] | None = None,
) -> Denoiser:
    """Classifier guidance from a differentiable ``log_prob(x_t, t, **cond) -> [B]`` (``t``: path times).

    The guided model's score is ``grad log p_t(x) + scale grad_x log p(y | x, t)``. ``net_keys`` names the
    ``cond`` entries the denoiser's network takes (default: all); the classifier receives all of them.
    """
    check_denoiser(denoiser)
    if not callable(log_prob):
        raise TypeError(f"log_prob must be callable as log_prob(x, t, **cond), got {type(log_prob).__name__}")
    scale = check_finite_float("scale", scale)
    keys = None if net_keys is None else tuple(net_keys)
    return Denoiser(_ClassifierNet(denoiser, log_prob, scale, keys), denoiser.path, prediction="x0", time_input="t")
