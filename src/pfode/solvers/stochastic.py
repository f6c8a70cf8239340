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

import torch

from .._checks import check_finite_float
from .base import Solver, Step, register

__all__ = ["EulerMaruyama", "DPMSolverPP2MSDE"]


class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse SDE family above; weak order 1, one evaluation per step."""

    name = "euler-maruyama"
    order = 1
    evals_per_step = 1
    stochastic = True
    paper = "Song et al., Score-Based Generative Modeling through Stochastic Differential Equations, ICLR 2021"

    def __init__(self, eta: float = 1.0):
        self.eta = check_finite_float("eta", eta, 0.0)

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        r = (q.s - p.s) / p.s  # negative
        k = 1.0 + (1.0 + self.eta) * r
        return Step(
            i,
            1,
            1,
            data={
                "cx": q.alpha / p.alpha * k,
                "cd": q.alpha * (1.0 - k),
                "cz": q.alpha * math.sqrt(self.eta * max(p.s**2 - q.s**2, 0.0)),
            },
        )

    def step(self, ev, x, hist, st, table, noise=None):
        if st.zero:
            return self.zero_step(ev, x, hist, st, table)
        c = st.data
        d = ev(x, st.i)
        out = torch.add(x * c["cx"], d, alpha=c["cd"])
        if c["cz"]:
            out = torch.add(out, noise(), alpha=c["cz"])
        return out, hist, d


class DPMSolverPP2MSDE(Solver):
    """SDE-DPM-Solver++(2M) (Lu et al., 2022b): exact linear part, second-order multistep ``x0_hat`` term.

    ``x_next = (sigma_next/sigma) e^{-eta h} x + alpha_next (1 - e^{-(1+eta) h}) D_i
    + alpha_next [h - (1 - e^{-(1+eta) h})/(1+eta)] (D_i - D_{i-1}) / h_prev + sigma_next sqrt(1 - e^{-2 eta h}) z``.
    """

    name = "dpm++2m-sde"
    order = 1
    evals_per_step = 1
    stochastic = True
    multistep = True
    paper = "Lu et al., DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, 2022"

    def __init__(self, eta: float = 1.0):
        self.eta = check_finite_float("eta", eta, 0.0)

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        g = 1.0 + self.eta
        e = -math.expm1(-g * h)
        data = {
            "cx": q.sigma / p.sigma * math.exp(-self.eta * h),
            "w0": q.alpha * e,
            "w1": 0.0,
            "cz": q.sigma * math.sqrt(-math.expm1(-2.0 * self.eta * h)),
        }
        if i > 0:
            hp = p.lam - table[i - 1].lam
            c = q.alpha * (h - e / g) / hp
            data["w0"] += c
            data["w1"] = -c
        return Step(i, 2 if i > 0 else 1, 1, data=data)

    def step(self, ev, x, hist, st, table, noise=None):
        d = ev(x, st.i)
        if st.zero:
            return self.zero_step(ev, x, (d,), st, table, d)
        c = st.data
        out = torch.add(x * c["cx"], d, alpha=c["w0"])
        if c["w1"]:
            out = torch.add(out, hist[0], alpha=c["w1"])
        if c["cz"]:
            out = torch.add(out, noise(), alpha=c["cz"])
        return out, (d,), d


register("euler-maruyama", EulerMaruyama)
register("dpm++2m-sde", DPMSolverPP2MSDE)
