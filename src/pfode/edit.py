"""Editing with a pfode model as the prior: SDEdit, CODE and inversion-based editing.

* :func:`sdedit` -- Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations"
  (ICLR 2022): noise the guide to ``t0`` with the path's own forward kernel, ``x_t0 = alpha(t0) guide +
  sigma(t0) z``, and integrate back to data with any pfode solver. ``t0`` trades realism (large ``t0``: the guide is
  forgotten) for faithfulness (small ``t0``: the guide comes back).
* :func:`code` -- van Delft, Martorella & Alahi, "CODE: Confident Ordinary Differential Editing" (2024,
  arXiv:2408.12418): encode the guide *deterministically* along the probability-flow ODE to ``t0`` (no noise
  injected, so the inversion depth and the amount of correction are decoupled), correct the latent with Langevin
  steps on the model's score at ``t0`` (likelihood ascent with noise, ``x <- x + (eps/2) sigma^2 score + sqrt(eps)
  sigma z``, i.e. ``x - (eps/2) sigma eps_hat + sqrt(eps) sigma z``), and decode with the ODE. Confidence-based
  clipping: the latent of data in ``[lo, hi]`` lies, coordinate by coordinate, in ``[alpha lo - eta sigma,
  alpha hi + eta sigma]`` with the confidence of ``eta`` standard deviations of the Gaussian noise; coordinates outside
  that interval (corrupted pixels that the model could not have produced) are clipped to it before the correction.
  Our reading of the paper: the Langevin correction runs at the single time ``t0`` (``steps`` iterations), and the
  clipping is applied to the inverted latent once.
* :func:`invert_edit` -- inversion-based editing: invert the input with one conditioning (exactly, with BDIA --
  :func:`pfode.invert`) and sample back along the same grid with another.

All take a :class:`pfode.Denoiser` of any path and prediction type and states ``[B, ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_choice, check_finite_float, check_int, check_state
from .predictions import check_denoiser

__all__ = ["sdedit", "code", "invert_edit", "EditOutput"]


@dataclass
class EditOutput:
    """An edit: the result ``x [B, ...]``, the network evaluations ``nfe`` and method ``info``."""

    x: torch.Tensor
    nfe: int
    info: dict = field(default_factory=dict)


def _check_t0(den, t0) -> float:
    t0 = check_finite_float("t0", t0)
    lo, hi = float(den.path.t_min), float(den.path.t_max)
    if not lo <= t0 <= hi:
        raise ValueError(f"t0={t0!r} must be a path time in [t_min, t_max] = [{lo:g}, {hi:g}]")
    return t0


def _coef(path, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(path.alpha(tt)), float(path.sigma(tt))


def _decode(den, x, t0, nfe, solver, spacing, cond, generator):
    """Sample from ``x`` at ``t0`` to data with ``nfe`` evaluations (one ``x0_hat`` when ``t0 = t_min``)."""
    from .sample import sample

    if t0 <= float(den.path.t_min) or nfe == 1:
        with torch.no_grad():
            return den.pair_at(x, t0, cond)[0].to(x.dtype), 1
    out = sample(
        den, x, solver=solver, nfe=nfe, spacing=spacing, t_start=t0, return_info=True, cond=cond, generator=generator
    )
    return out.x, out.nfe


def sdedit(
    den,
    guide: torch.Tensor,
    t0: float,
    *,
    nfe: int = 20,
    solver: str | None = None,
    spacing: str = "logsnr",
    generator: torch.Generator | None = None,
    cond: dict | None = None,
) -> EditOutput:
    """SDEdit (Meng et al., ICLR 2022): noise ``guide [B, ...]`` to path time ``t0`` and sample back.

    Args:
        den: a :class:`pfode.Denoiser`.
        guide: the guide images/states ``[B, ...]`` (data scale).
        t0: the noising time in ``[t_min, t_max]`` (``t_max``: the guide is almost forgotten; ``t_min``: returned).
        nfe: evaluations of the sampler from ``t0`` (any pfode ``solver``, default ``dpm++2m``; ``spacing`` its grid).
        generator: seeds the noise. cond: network conditioning.
    Returns:
        an :class:`EditOutput` (``info["t0"]``, ``info["x_t0"]``: the noised guide).
    """
    check_denoiser(den)
    check_state("guide", guide)
    t0 = _check_t0(den, t0)
    nfe = check_int("nfe", nfe, 1)
    a, s = _coef(den.path, t0)
    z = torch.randn(guide.shape, generator=generator, dtype=guide.dtype).to(guide.device)
    x_t0 = a * guide + s * z
    x, used = _decode(den, x_t0, t0, nfe, solver, spacing, cond, generator)
    return EditOutput(x, used, {"t0": t0, "x_t0": x_t0})


def code(
    den,
    guide: torch.Tensor,
    t0: float,
    *,
    nfe: int = 20,
    steps: int = 10,
    step_size: float = 0.05,
    eta: float | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    solver: str = "ddim",
    spacing: str = "logsnr",
    generator: torch.Generator | None = None,
    cond: dict | None = None,
) -> EditOutput:
    """CODE (van Delft et al. 2024): ODE inversion to ``t0``, confidence-based clipping, Langevin correction, ODE
    decoding (see the module docs).

    Args:
        den: a :class:`pfode.Denoiser`.
        guide: the (possibly corrupted, out-of-distribution) guide ``[B, ...]``.
        t0: inversion depth, a path time in ``[t_min, t_max]``.
        nfe: evaluations of the inversion ODE (``solver``, deterministic); the decoding retraces the same grid
            with as many.
        steps: Langevin iterations at ``t0`` (one evaluation each; ``0`` skips the correction).
        step_size: Langevin step ``eps`` relative to ``sigma(t0)^2`` (``> 0``).
        eta: confidence of the clipping in noise standard deviations (``None``: no clipping).
        value_range: ``(lo, hi)`` of the data, for the clipping interval.
        generator: seeds the Langevin noise. cond: network conditioning.
    Returns:
        an :class:`EditOutput`; ``info`` holds the latent before and after the correction (``latent``,
        ``corrected``), the fraction of clipped coordinates ``clipped`` and the clipping bounds ``bounds``.
    """
    from .invert import invert

    check_denoiser(den)
    check_state("guide", guide)
    t0 = _check_t0(den, t0)
    nfe = check_int("nfe", nfe, 1)
    steps = check_int("steps", steps, 0)
    step_size = check_finite_float("step_size", step_size, 0.0, strict=True)
    lo, hi = value_range
    lo, hi = check_finite_float("value_range[0]", lo), check_finite_float("value_range[1]", hi)
    if not lo < hi:
        raise ValueError(f"value_range={value_range!r} must be (lo, hi) with lo < hi")
    path = den.path
    used, grid = 0, None
    if t0 > float(path.t_min):
        with torch.no_grad():
            inv = invert(den, guide, nfe=nfe, solver=solver, spacing=spacing, t_start=t0, cond=cond, return_info=True)
        latent, used, grid = inv.x_T, inv.nfe, inv.grid
    else:
        latent = guide.clone()
    a, s = _coef(path, t0)
    x = latent
    clipped, bounds = 0.0, None
    if eta is not None:
        eta = check_finite_float("eta", eta, 0.0, strict=True)
        bounds = (a * lo - eta * s, a * hi + eta * s)
        clipped = float(((x < bounds[0]) | (x > bounds[1])).double().mean())
        x = x.clamp(*bounds)
    for _ in range(steps):
        with torch.no_grad():
            _, eps_hat = den.pair_at(x, t0, cond)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x - 0.5 * step_size * s * eps_hat.to(x.dtype) + math.sqrt(step_size) * s * z
        used += 1
    corrected = x
    if grid is None:
        x, dec = _decode(den, x, t0, 1, solver, spacing, cond, generator)
    else:
        from .sample import sample

        out = sample(den, x, grid=grid, solver=solver, denoise=False, cond=cond, return_info=True)
        x, dec = out.x, out.nfe
    info = {"t0": t0, "latent": latent, "corrected": corrected, "clipped": clipped, "bounds": bounds}
    return EditOutput(x, used + dec, info)


def invert_edit(
    den,
    x: torch.Tensor,
    *,
    cond_source: dict | None = None,
    cond_target: dict | None = None,
    nfe: int = 20,
    method: str = "bdia",
    solver: str = "ddim",
    gamma: float = 1.0,
    t0: float | None = None,
    spacing: str = "logsnr",
) -> EditOutput:
    """Inversion-based editing: invert ``x [B, ...]`` to ``t0`` (default ``t_max``) under ``cond_source``, sample back
    along the same grid under ``cond_target``.

    With ``method="bdia"`` (Zhang et al., ECCV 2024; :func:`pfode.invert`) the inversion is exact, so equal
    conditionings return ``x`` to float rounding and every change of the output is the edit's; ``"plain"`` runs
    the solver backwards (approximate). ``nfe``: evaluations of the inversion grid (the sampling side spends as
    many); ``solver``: a deterministic (for BDIA: single-step) solver.

    Returns:
        an :class:`EditOutput` with ``info["x_T"]`` (the latent) and ``info["grid"]``.
    """
    from .invert import bdia_sample, invert
    from .sample import sample

    check_denoiser(den)
    check_state("x", x)
    method = check_choice("method", method, ("bdia", "plain"))
    nfe = check_int("nfe", nfe, 1)
    t_start = _check_t0(den, t0) if t0 is not None else None
    with torch.no_grad():
        inv = invert(
            den,
            x,
            nfe=nfe,
            solver=solver,
            spacing=spacing,
            t_start=t_start,
            method=method,
            gamma=gamma,
            cond=cond_source,
            return_info=True,
        )
        if method == "bdia":
            out = bdia_sample(
                den, inv.x_T, inv.grid, solver, gamma=gamma, x_next=inv.x_next, cond=cond_target, return_info=True
            )
        else:
            out = sample(den, inv.x_T, grid=inv.grid, solver=solver, denoise=False, cond=cond_target, return_info=True)
    return EditOutput(out.x, inv.nfe + out.nfe, {"x_T": inv.x_T, "grid": inv.grid, "method": method})
