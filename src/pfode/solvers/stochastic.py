"""Stochastic samplers of the reverse-time SDE family.

With ``y = x / alpha`` and ``s = sigma/alpha`` every path's marginals are those of the VE process
``y = x0 + s eps``. The reverse SDEs that keep these marginals form a family indexed by ``eta >= 0``:

    dy = (1 + eta) (y - x0_hat) ds / s + sqrt(eta d(s^2)) dw,

``eta = 0`` is the probability-flow ODE and ``eta = 1`` the reverse SDE of Anderson / Song et al.
Noise comes from per-sample streams (see :func:`pfode.sample`), so a seed gives the same samples
whatever the batch size. ``ddpm`` (ancestral sampling) lives in :class:`~pfode.solvers.DDIM` with ``eta=1``.
"""

from __future__ import annotations

import math

from .._checks import check_choice, check_finite_float
from .base import Solver, register
from .exponential import LinearStep, fuse_linear, linear_update

__all__ = ["EulerMaruyama", "DPMSolverPP2MSDE"]


class _ReverseSDE(Solver):
    """A sampler of the reverse SDE family with ``eta >= 0``: one evaluation per step, weak order 1."""

    order = 1
    evals_per_step = 1
    stochastic = True

    def __init__(self, eta: float = 1.0):
        self.eta = check_finite_float("eta", eta, 0.0)

    def update(self, x, hist, st, d, noise=None):
        return linear_update(x, hist, st, d, noise)

    def fuse_step(self, b, st, hist):
        return fuse_linear(b, st, hist, "x0", 1)


class EulerMaruyama(_ReverseSDE):
    """Euler-Maruyama on the reverse SDE family above; weak order 1, one evaluation per step."""

    name = "euler-maruyama"
    paper = "Song et al., Score-Based Generative Modeling through Stochastic Differential Equations, ICLR 2021"

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        r = (q.s - p.s) / p.s  # negative
        k = 1.0 + (1.0 + self.eta) * r
        return LinearStep(
            i=i,
            cx=q.alpha / p.alpha * k,
            w=(q.alpha * (1.0 - k),),
            cz=q.alpha * math.sqrt(self.eta * max(p.s**2 - q.s**2, 0.0)),
        )

class DPMSolverPP2MSDE(_ReverseSDE):
    """SDE-DPM-Solver++(2M) (Lu et al., 2022b): exact linear part, second-order multistep ``x0_hat`` term.

    ``x_next = (sigma_next/sigma) e^{-eta h} x + alpha_next (1 - e^{-(1+eta) h}) D_i + alpha_next c (D_i - D_{i-1})
    + s_noise sigma_next sqrt(1 - e^{-2 eta h}) z`` with, for ``solver_type="midpoint"`` (the paper's update, and
    k-diffusion's default), ``c = (1 - e^{-(1+eta) h}) h / (2 h_prev)``, and for ``"heun"`` (pfode's default),
    ``c = [h - (1 - e^{-(1+eta) h})/(1+eta)] / h_prev``.
    """

    name = "dpm++2m-sde"
    paper = "Lu et al., DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, 2022"

    def __init__(self, eta: float = 1.0, solver_type: str = "heun", s_noise: float = 1.0):
        super().__init__(eta)
        self.solver_type = check_choice("solver_type", solver_type, ("heun", "midpoint"))
        self.s_noise = check_finite_float("s_noise", s_noise, 0.0)
        self.stochastic = self.eta > 0 and self.s_noise > 0
        if not self.stochastic:
            self.order = 2  # the ODE solver DPM-Solver++(2M) (eta = 0); weak order 1 with noise

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        g = 1.0 + self.eta
        e = -math.expm1(-g * h)
        w0, w1 = q.alpha * e, 0.0
        if i > 0:
            hp = p.lam - table[i - 1].lam
            c = q.alpha * (0.5 * e * h if self.solver_type == "midpoint" else h - e / g) / hp
            w0, w1 = w0 + c, -c
        return LinearStep(
            i=i,
            order=2 if i > 0 else 1,
            history=1 if i > 0 else 0,
            cx=q.sigma / p.sigma * math.exp(-self.eta * h),
            w=(w0, w1),
            cz=self.s_noise * q.sigma * math.sqrt(-math.expm1(-2.0 * self.eta * h)),
        )


register("euler-maruyama", EulerMaruyama)
register("dpm++2m-sde", DPMSolverPP2MSDE)
