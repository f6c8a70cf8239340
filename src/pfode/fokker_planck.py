"""The score Fokker-Planck equation: its residual for a score model, and a regularizer that penalises it.

The forward SDE of an affine path is ``dx = f(t) x dt + g(t) dw`` (``f = dlog alpha/dt``, ``g^2`` of
:meth:`pfode.paths.Path.g2`). Its density solves ``d_t p = -div(f x p) + (g^2 / 2) lap p``; dividing by ``p``
and taking ``grad_x`` gives the equation the true score ``s = grad_x log p_t`` satisfies (Lai et al.,
"FP-Diffusion", ICML 2023; Deveney et al., 2023):

    d_t s = grad_x [ (g^2 / 2) (div_x s + |s|^2) - f x . s - d f ]        (``d f`` = div of the drift: no x),

so the residual of a score model ``s_theta`` is

    R(x, t) = d_t s_theta - grad_x [ (g^2 / 2) (div_x s_theta + |s_theta|^2) - f x . s_theta ].

A model whose PF-ODE and reverse SDE share marginals has ``R = 0`` (Deveney et al.: the ODE-SDE gap is
controlled by the residual). :func:`fp_residual` returns ``|R|`` per sample: ``d_t s`` by automatic
differentiation in ``t`` (or a central difference with ``dt``), ``div_x s`` exact on small samples (one
vector-Jacobian product per element) or Hutchinson's estimate (Rademacher probes; its ``grad_x`` is then an
unbiased estimate of ``grad_x div s``). ``scaled=True`` reports ``sigma R / (-dlam/dt)``: the residual in eps
units per unit log-SNR, the same size on every path and at every noise level (the regularizer's form).

:class:`FokkerPlanckDSM` (objective ``"dsm-fp"``) is denoising score matching plus ``fp_weight`` times the
mean square of the scaled residual at the batch's ``(x_t, t)``, differentiable for training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import as_f64, check_choice, check_finite_float, check_int
from .paths import Path, get_path
from .predictions import Denoiser
from .train.idode import DIVERGENCE_MODES, divergence
from .train.losses import DenoisingScoreMatching

__all__ = ["score_function", "fp_residual", "fp_residual_vector", "FokkerPlanckDSM"]


def score_function(model, path: Path | str | None = None) -> tuple[Callable, Path]:
    """``(score(x, t), path)`` for a :class:`pfode.Denoiser`, a loaded :class:`pfode.models.Model` or a score
    callable ``score(x, t)`` (``t`` a float64 ``[B]`` tensor of path times; then ``path`` is required).

    A denoiser's score is ``-eps_hat / sigma(t)``, differentiable in ``x`` and ``t``.
    """
    if hasattr(model, "denoiser") and isinstance(model.denoiser, Denoiser):
        model = model.denoiser
    if isinstance(model, Denoiser):
        if path is not None and repr(get_path(path)) != repr(model.path):
            raise ValueError(f"path={path!r} differs from the denoiser's own path {model.path!r}; pass path=None")
        den = model

        def score(x, t):
            _, eps = den.pair_at(x, t)
            return -eps / den.path.sigma(t).to(device=x.device, dtype=eps.dtype).reshape((-1,) + (1,) * (x.dim() - 1))

        return score, den.path
    if not callable(model):
        raise TypeError(
            f"model must be a pfode.Denoiser, a pfode Model or a score callable, got {type(model).__name__}"
        )
    if path is None:
        raise ValueError("path= is required when model is a plain score callable score(x, t)")
    return model, get_path(path)


def _times(t, b: int, device) -> torch.Tensor:
    t = as_f64(t).to(device)
    if t.dim() == 0:
        t = t.expand(b).clone()
    if t.shape != (b,):
        raise ValueError(f"t must be a float or a [B] tensor with B={b}, got shape {tuple(t.shape)}")
    return t


def fp_residual_vector(
    model,
    path: Path | str | None,
    x: torch.Tensor,
    t,
    *,
    divergence_mode: str = "auto",
    probes: int = 1,
    dt: float | None = None,
    scaled: bool = False,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """The score Fokker-Planck residual ``R(x, t)`` shaped like ``x`` (in ``x``'s dtype); see the module.

    Args:
        model, path: as :func:`score_function`.
        x: ``[B, ...]`` states; ``t``: a float or ``[B]`` path times strictly inside the path's range.
        divergence_mode: ``"auto"`` (exact up to 16 elements a sample), ``"exact"`` or ``"hutchinson"``
            (``probes`` Rademacher vectors from ``generator``).
        dt: ``None`` differentiates in ``t`` by autograd; a float uses a central difference of that step.
        scaled: return ``sigma R / (-dlam/dt)`` (eps units per unit log-SNR).
        create_graph: keep the graph (for training through the residual).
    """
    score, p = score_function(model, path)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating [B, ...] tensor, got shape {tuple(x.shape)} and {x.dtype}")
    check_choice("divergence_mode", divergence_mode, DIVERGENCE_MODES)
    check_int("probes", probes, 1)
    if dt is not None:
        dt = check_finite_float("dt", dt, 0.0, strict=True)
    b = x.shape[0]
    t = _times(t, b, x.device).detach()
    if bool(((t <= p.t_lo) | (t >= p.t_hi)).any()):
        raise ValueError(f"t must lie strictly inside ({p.t_lo}, {p.t_hi}) of {p!r}")
    shape = (-1,) + (1,) * (x.dim() - 1)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        tg = t.clone().requires_grad_(dt is None)
        s = score(xg, tg)
        if dt is None:
            u = torch.zeros_like(s, requires_grad=True)
            (gt,) = torch.autograd.grad((s * u).sum(), tg, create_graph=True, allow_unused=True)
            if gt is None:
                raise ValueError("the model's output does not depend on t through autograd; pass dt= (a float)")
            (d_t,) = torch.autograd.grad(gt.sum(), u, create_graph=create_graph)
        else:
            h = torch.minimum(torch.full_like(t, dt), torch.minimum(t - p.t_lo, p.t_hi - t) / 2)
            sp, sm = score(xg, t + h), score(xg, t - h)
            d_t = (sp - sm) / (2 * h).to(sp.dtype).reshape(shape)
        div = divergence(s, xg, divergence_mode, probes, generator, create_graph=True)
        g2 = p.g2(t).to(device=x.device, dtype=s.dtype)
        f = p.f(t).to(device=x.device, dtype=s.dtype)
        flat_s, flat_x = s.reshape(b, -1), xg.reshape(b, -1)
        phi = 0.5 * g2 * (div + flat_s.pow(2).sum(1)) - f * (flat_x * flat_s).sum(1)
        (grad_phi,) = torch.autograd.grad(phi.sum(), xg, create_graph=create_graph)
    r = d_t - grad_phi
    if scaled:
        r = r * (p.sigma(t) / -p.d_lam(t)).to(device=x.device, dtype=r.dtype).reshape(shape)
    return r if create_graph else r.detach()


def fp_residual(model, path: Path | str | None, x: torch.Tensor, t, **options) -> torch.Tensor:
    """Per-sample norm ``|R(x, t)|`` (float64 ``[B]``) of the score Fokker-Planck residual.

    Lai et al. (2023), Deveney et al. (2023); the residual, options and scaling are those of
    :func:`fp_residual_vector` (``model``: a :class:`pfode.Denoiser`, a loaded model, or a score callable with
    ``path``). The exact score of a Gaussian mixture (:meth:`pfode.analytic.GaussianMixture.score`) gives 0 to
    round-off.
    """
    r = fp_residual_vector(model, path, x, t, **options)
    return r.reshape(r.shape[0], -1).to(torch.float64).norm(dim=1)


class FokkerPlanckDSM(DenoisingScoreMatching):
    """Denoising score matching with the score Fokker-Planck regularizer (objective ``"dsm-fp"``).

    Per sample: the DSM loss plus ``fp_weight * mean(R_scaled^2)`` at the batch's ``(x_t, t)``, with
    ``R_scaled = sigma R / (-dlam/dt)`` of :func:`fp_residual_vector` (Lai et al., 2023, penalise the residual
    at random points of the forward process). All DSM options apply (``**options``).

    Args:
        fp_weight: the penalty's weight (``>= 0``; 0 is plain DSM).
        fp_divergence: ``"auto"``, ``"exact"`` or ``"hutchinson"``; ``fp_probes``: Hutchinson probes.
        fp_t_range: times where the residual is penalised (default: the DSM training times); residual terms
            of times outside it are 0.
    """

    name = "dsm-fp"

    def __init__(
        self,
        fp_weight: float = 0.0,
        fp_divergence: str = "auto",
        fp_probes: int = 1,
        fp_t_range: tuple[float, float] | None = None,
        **options,
    ):
        super().__init__(**options)
        self.fp_weight = check_finite_float("fp_weight", fp_weight, 0.0)
        self.fp_divergence = check_choice("fp_divergence", fp_divergence, DIVERGENCE_MODES)
        self.fp_probes = check_int("fp_probes", fp_probes, 1)
        if fp_t_range is not None:
            lo, hi = (check_finite_float("fp_t_range", float(v)) for v in fp_t_range)
            if not (self.path.t_lo < lo < hi < self.path.t_hi):
                raise ValueError(f"fp_t_range={fp_t_range!r}: need t_lo < t0 < t1 < t_hi of {self.path!r}")
            fp_t_range = (lo, hi)
        self.fp_t_range = fp_t_range

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        mean, per = super().loss(model, batch, step=step, target_model=target_model)
        if self.fp_weight == 0.0:
            return mean, per
        x0, eps, t = batch["x0"], batch["eps"], batch["t"]
        x_t, _ = self.target(x0, eps, t)
        t = as_f64(t)
        keep = torch.ones_like(t, dtype=torch.bool)
        if self.fp_t_range is not None:
            keep = (t >= self.fp_t_range[0]) & (t <= self.fp_t_range[1])
        t = t.clamp(self.path.t_lo + 1e-9, self.path.t_hi - 1e-9)
        r = fp_residual_vector(
            self.denoiser(model),
            None,
            x_t.detach(),
            t,
            divergence_mode=self.fp_divergence,
            probes=self.fp_probes,
            scaled=True,
            create_graph=True,
        )
        fp = r.float().reshape(r.shape[0], -1).pow(2).mean(1) * keep.to(device=r.device, dtype=torch.float32)
        per = per + self.fp_weight * fp
        return per.mean(), per

    def spec(self) -> dict:
        out = super().spec()
        out.update(
            name=self.name,
            fp_weight=self.fp_weight,
            fp_divergence=self.fp_divergence,
            fp_probes=self.fp_probes,
            fp_t_range=list(self.fp_t_range) if self.fp_t_range else None,
        )
        return out
