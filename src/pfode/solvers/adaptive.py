"""Adaptive Dormand-Prince 5(4) with per-sample error control.

The ODE ``dy/dlam = x0_hat(alpha y, t(lam)) - y`` (``y = x / alpha``, :class:`pfode.engine.PFODE` in
``lam``) is integrated by :func:`pfode.engine.solve_adaptive`. Each sample keeps its own ``lam`` and step
size: a sample's steps are accepted or rejected on its own error alone, so a hard sample does not slow
down or perturb the others, and a sample's result does not depend on what else is in the batch.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_finite_float, check_int
from ..engine import DOPRI5, PFODE, IController, solve_adaptive
from ..predictions import Coeffs
from .base import AdaptiveSolver, register

__all__ = ["Dopri5"]


def rms_norm(b: int, rtol: float, atol: float):
    """The per-sample RMS error norm ``sqrt(mean((err / (atol + rtol max(|u|, |u_new|)))^2))`` of a state's
    first tensor, as an ``error_norm`` for :func:`pfode.engine.solve_adaptive`."""

    def norm(u, new, err):
        sc = atol + rtol * torch.maximum(u[0].abs(), new[0].abs())
        return torch.sqrt(((err[0] / sc) ** 2).reshape(b, -1).mean(1)).to(torch.float64)

    return norm


def batch_view(x: torch.Tensor):
    """``h -> h.reshape(B, 1, ..., 1)`` to broadcast a per-sample ``[B]`` tensor against ``x``."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return lambda h: h.reshape(shape)


class Dopri5(AdaptiveSolver):
    """Dormand-Prince 5(4), adaptive, per-sample step sizes (order 5, 6 evaluations per accepted step with FSAL).

    Args:
        rtol, atol: tolerances of the per-sample RMS error norm.
        h0: first step in ``lam`` (default: from the initial slope, per sample).
        max_evals: stop with an error after this many network evaluations.
    """

    name = "dopri5"
    order = 5
    evals_per_step = 6
    paper = "Dormand & Prince, A family of embedded Runge-Kutta formulae, J. Comp. Appl. Math. 1980"

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, h0: float | None = None, max_evals: int = 100_000):
        self.rtol = check_finite_float("rtol", rtol, 0.0, strict=True)
        self.atol = check_finite_float("atol", atol, 0.0, strict=True)
        self.h0 = None if h0 is None else check_finite_float("h0", h0, 0.0, strict=True)
        self.max_evals = check_int("max_evals", max_evals, 1)

    def solve(self, den, x: torch.Tensor, t_start: float, t_end: float, cond=None, callback=None):
        """Solve the PF-ODE of ``den`` from path time ``t_start`` to ``t_end`` (both with ``sigma, alpha > 0``).

        ``callback`` is called after every step attempt with ``{"i", "t", "t_prev", "x", "x0_hat",
        "accepted"}``: as each sample keeps its own step size, ``t`` and ``t_prev`` are ``[B]`` float64
        tensors (each sample's time now and before the attempt; equal where it was rejected or is done),
        ``x`` the states at ``t``, ``x0_hat`` the denoiser there and ``accepted`` a ``[B]`` bool tensor.
        (:func:`pfode.sample` adds one last call for its denoising step, with ``t`` at zero noise.)
        Returns ``(x, info)``.
        """
        ode = PFODE(den, "lam", cond)
        l0, l1 = ode.v_of_t(t_start), ode.v_of_t(t_end)
        if not (math.isfinite(l0) and math.isfinite(l1)):
            raise ValueError(
                f"dopri5 integrates in lam and needs finite lam at both ends: lam({t_start:g})={l0}, "
                f"lam({t_end:g})={l1}; end the grid above zero noise (denoise=True then finishes at zero noise)"
            )
        b = x.shape[0]
        y = x / float(den.path.alpha(t_start))
        norm = rms_norm(b, self.rtol, self.atol)

        def f(u, lam):
            return [ode.velocity(u[0], lam)[0]]

        k1 = f([y], torch.full((b,), l0, dtype=torch.float64, device=x.device))
        if self.h0 is not None:
            h0 = torch.full((b,), self.h0, dtype=torch.float64, device=x.device)
        else:  # from the initial slope, per sample
            d0, d1 = norm([y], [y], [y]), norm([y], [y], k1)
            h0 = torch.where((d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / d1.clamp_min(1e-300), torch.full_like(d0, 1e-6))

        on_step = None
        if callback is not None:

            def on_step(i, lam, lam_prev, u, k, ok):
                t = ode.t_of(lam)
                a = Coeffs.at(den.path, t, like=u[0]).alpha
                callback({"i": i, "t": t, "t_prev": ode.t_of(lam_prev), "x": u[0] * a, "x0_hat": k[0] + u[0],
                          "accepted": ok})

        (y,), info = solve_adaptive(
            f, [y], l0, l1, error_norm=norm, h0=h0, views=[batch_view(y)], tab=DOPRI5, controller=IController(),
            max_evals=self.max_evals, what="dopri5", k1=k1, on_step=on_step,
        )
        info["nfe"] += 1  # k1
        return y * float(den.path.alpha(t_end)), info


register("dopri5", Dopri5)
