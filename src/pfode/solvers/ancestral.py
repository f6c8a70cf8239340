"""Ancestral and SDE samplers (k-diffusion's family), for every path and prediction type.

All are written in VE coordinates ``y = x / alpha``, ``s = sigma / alpha`` (k-diffusion's ``x`` and ``sigma``): every
path's marginals are those of ``y = x0 + s eps``. An *ancestral* step from ``s`` to ``s_next`` splits
``s_next^2 = s_down^2 + s_up^2`` (:func:`ancestral_step`, the DDIM ``eta`` family): a deterministic update down to
``s_down``, then fresh noise of standard deviation ``s_up``; ``eta = 1`` is DDPM's posterior, ``eta = 0`` the ODE.

Noise. A step lists in ``draws`` the interval ``(s_from, s_to)`` of each ``noise()`` it calls, in call order, and
uses the draw as the standard normal increment ``(W(s_to) - W(s_from)) / sqrt|s_to - s_from|`` of one Brownian
motion ``W(s)``. The intervals of a run never overlap, so independent normals (pfode's per-sample noise streams)
are exactly such increments; a k-diffusion ``noise_sampler(sigma, sigma_next)`` that is a Brownian motion (its
``BrownianTreeNoiseSampler``) answers them directly (:mod:`pfode.integrations.k_diffusion`). Where a method uses
the increment over overlapping intervals (``dpm++sde``: the half step and the full step) it builds it from the
disjoint ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_finite_float
from .base import Solver, Step, Table, register
from .edm import SigmaStep, check_point, sigma_step
from .exponential import DPMSolverPP2S, LinearStep, _lin, fuse_linear, linear_update, phi

__all__ = [
    "ancestral_step",
    "EulerAncestral",
    "DPM2Ancestral",
    "DPMSolverPP2SAncestral",
    "DPMSolverPPSDE",
    "DPMSolverPP3MSDE",
]

DDIM_PAPER = "Song, Meng & Ermon, Denoising Diffusion Implicit Models, ICLR 2021 (the eta family of ancestral steps)"
LU_PP = DPMSolverPP2S.paper


def ancestral_step(s_from: float, s_to: float, eta: float) -> tuple[float, float]:
    """``(s_down, s_up)`` of an ancestral step from ``s_from`` to ``s_to``: ``s_up = min(s_to, eta s_to
    sqrt(s_from^2 - s_to^2) / s_from)`` (DDIM's ``sigma_t(eta)`` in VE coordinates) and
    ``s_down = sqrt(s_to^2 - s_up^2)``; ``eta = 0`` gives ``(s_to, 0)``."""
    if not eta:
        return s_to, 0.0
    up = min(s_to, eta * math.sqrt(max(s_to * s_to * (s_from * s_from - s_to * s_to) / (s_from * s_from), 0.0)))
    return math.sqrt(max(s_to * s_to - up * up, 0.0)), up


@dataclass(frozen=True, kw_only=True)
class NoisyLinearStep(LinearStep):
    """A :class:`~pfode.solvers.exponential.LinearStep` with the noise interval of its draw."""

    draws: tuple[tuple[float, float], ...] = ()


class _Ancestral(Solver):
    """``eta`` (amount of fresh noise; 0 is the ODE) and ``s_noise`` (scale of the fresh noise)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = check_finite_float("eta", eta, 0.0)
        self.s_noise = check_finite_float("s_noise", s_noise, 0.0)
        self.stochastic = self.eta > 0 and self.s_noise > 0
        if self.stochastic:
            self.order = 1  # weak order; the class's order is that of the ODE solver it is with eta = 0

    def _noise(self, q, up: float, draw):
        """``(cz, draws)`` for fresh noise of standard deviation ``up`` in ``y`` at the step's end ``q``."""
        cz = q.alpha * up * self.s_noise
        return cz, ((draw,) if cz else ())


class EulerAncestral(_Ancestral):
    """Euler steps in ``s`` down to ``s_down``, then fresh noise ``s_noise * s_up`` (ancestral sampling); one
    evaluation per step, weak order 1. ``eta = 0`` is DDIM (Euler in ``s``); ``eta = 1`` with ``s_noise = 1`` is
    DDPM's ancestral sampler. Unlike ``ddim``'s ``eta`` this ``eta`` may exceed 1 (``s_up`` is capped at ``s_next``).
    """

    name = "euler-ancestral"
    order = 1
    evals_per_step = 1
    paper = "Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models, NeurIPS 2020; " + DDIM_PAPER

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p, q = table[i], table[i + 1]
        down, up = ancestral_step(p.s, q.s, self.eta)
        k = down / p.s
        cz, draws = self._noise(q, up, (p.s, q.s))
        return NoisyLinearStep(i=i, cx=q.alpha * k / p.alpha, w=(q.alpha * (1.0 - k),), cz=cz, draws=draws)

    def update(self, x, hist, st, d, noise=None):
        return linear_update(x, hist, st, d, noise)

    def fuse_step(self, b, st, hist):
        return fuse_linear(b, st, hist, "x0", 0)


class DPM2Ancestral(_Ancestral):
    """k-diffusion's DPM-2 step (the midpoint rule in ``s``, midpoint at ``sqrt(s s_down)``) down to ``s_down``, then
    fresh noise; two evaluations per step. A step whose ``s_down`` is 0 is Euler's (``x0_hat``) without fresh noise,
    as in k-diffusion. ``eta = 0`` is the deterministic ``dpm-2``."""

    name = "dpm-2-ancestral"
    order = 2
    evals_per_step = 2
    paper = "Karras et al., NeurIPS 2022 (DPM-2 steps, after Lu et al., DPM-Solver, NeurIPS 2022); " + DDIM_PAPER

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        down, up = ancestral_step(p.s, q.s, self.eta)
        base = dict(i=i, y_in=1.0 / p.alpha, j_hat=i, a_hat=p.alpha, s_hat=p.s, y_out=q.alpha)
        if down == 0.0:
            return SigmaStep(b1=-1.0, **base)
        sm = math.sqrt(p.s * down)
        j = check_point(table, table.add_s(sm), sm, "DPM-2")
        m = table[j]
        cz, draws = self._noise(q, up, (p.s, q.s))
        return SigmaStep(
            order=2, evals=2, a1=(m.s - p.s) / p.s, j2=j, a2=m.alpha, b2=(down - p.s) / m.s, cz=cz, draws=draws, **base
        )

    def step(self, x, hist, st, noise=None):
        return (yield from sigma_step(x, hist, st, noise))


class DPMSolverPP2SAncestral(_Ancestral):
    """DPM-Solver++(2S) (Lu et al., 2022b; ``r = 1/2``) down to ``s_down``, then fresh noise; two evaluations per
    step. A step whose ``s_down`` is 0 is Euler's (``x0_hat``) plus the fresh noise, as in k-diffusion. ``eta = 0`` is
    ``dpm++2s``."""

    name = "dpm++2s-ancestral"
    order = 2
    evals_per_step = 2
    paper = LU_PP + "; " + DDIM_PAPER

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        down, up = ancestral_step(p.s, q.s, self.eta)
        cz, draws = self._noise(q, up, (p.s, q.s))
        base = dict(i=i, y_in=1.0 / p.alpha, j_hat=i, a_hat=p.alpha, s_hat=p.s, y_out=q.alpha, cz=cz, draws=draws)
        if down == 0.0:
            return SigmaStep(b1=-1.0, **base)
        h = -math.log(down) - p.lam
        j = check_point(table, table.add_lam(p.lam + 0.5 * h), math.exp(-(p.lam + 0.5 * h)), "DPM-Solver++(2S)")
        # y2 = y + a1 (y - D) (first order to the midpoint); y' = (s_down/s) y + (1 - s_down/s) D2
        a1, c = math.expm1(-0.5 * h), -math.expm1(-h)
        return SigmaStep(order=2, evals=2, a1=a1, j2=j, a2=table[j].alpha, b1=c * a1, b2=-c, **base)

    def step(self, x, hist, st, noise=None):
        return (yield from sigma_step(x, hist, st, noise))


@dataclass(frozen=True, kw_only=True)
class PPSDEStep(Step):
    """A ``dpm++sde`` step: ``y2 = k1 y + (1 - k1) D + c1 n_a`` at point ``j``; then
    ``x' = cx x + w0 D + w1 D2 + ca n_a + cb n_b`` (``n_a``, ``n_b``: the draws over ``draws``)."""

    y_in: float
    j: int
    a_mid: float
    k1: float
    c1: float
    cx: float
    w: tuple[float, float]
    ca: float
    cb: float
    draws: tuple[tuple[float, float], ...] = ()


class DPMSolverPPSDE(_Ancestral):
    """Stochastic DPM-Solver++ (singlestep, second order), k-diffusion's ``sample_dpmpp_sde``; two evaluations per
    step.

    A step from ``s`` to ``s_next`` takes a first-order ancestral step to the intermediate ``lam + r h`` (noise level
    ``s_r``), evaluates there, and then a first-order ancestral step from ``s`` to ``s_next`` with the DPM-Solver++
    combination ``(1 - 1/(2r)) D + 1/(2r) D2``. The fresh noise of the two ancestral steps is the increment of one
    Brownian motion over ``(s, s_r)`` and ``(s, s_next)``. ``eta = 0`` is DPM-Solver++(2S) with ratio ``r``.
    """

    name = "dpm++sde"
    order = 2
    evals_per_step = 2
    paper = LU_PP + " (stochastic singlestep variant, as in Crowson's k-diffusion)"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        super().__init__(eta, s_noise)
        r = check_finite_float("r", r, 0.0, strict=True)
        if r > 1.0:
            raise ValueError(f"r={r!r} must be in (0, 1]")
        self.r = r

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        j = check_point(table, table.add_lam(p.lam + self.r * h), math.exp(-(p.lam + self.r * h)), "dpm++sde")
        m = table[j]
        fac = 0.5 / self.r
        d1, u1 = ancestral_step(p.s, m.s, self.eta)
        d2, u2 = ancestral_step(p.s, q.s, self.eta)
        k2 = d2 / p.s
        ca = cb = 0.0
        draws = ()
        if self.stochastic:
            # the increment over (s, s_next) from the disjoint ones over (s, s_r) and (s_r, s_next)
            tot = math.sqrt(p.s - q.s)
            wa, wb = math.sqrt(p.s - m.s) / tot, math.sqrt(max(m.s - q.s, 0.0)) / tot
            ca, cb = q.alpha * self.s_noise * u2 * wa, q.alpha * self.s_noise * u2 * wb
            draws = ((p.s, m.s), (m.s, q.s))
        return PPSDEStep(
            i=i, order=2, evals=2, y_in=1.0 / p.alpha, j=j, a_mid=m.alpha, k1=d1 / p.s, c1=self.s_noise * u1,
            cx=q.alpha * k2 / p.alpha, w=(q.alpha * (1.0 - k2) * (1.0 - fac), q.alpha * (1.0 - k2) * fac), ca=ca, cb=cb,
            draws=draws,
        )

    def step(self, x, hist, st, noise=None):
        d = yield st.i, x
        y = x * st.y_in
        y2 = torch.add(y * st.k1, d, alpha=1.0 - st.k1)
        na = None
        if st.draws:
            na = noise()
            y2.add_(na, alpha=st.c1)
        d2 = yield st.j, y2 * st.a_mid
        out = _lin(x, st.cx, zip(st.w, (d, d2)))
        if st.draws:
            out.add_(na, alpha=st.ca).add_(noise(), alpha=st.cb)
        return out, hist, d


class DPMSolverPP3MSDE(_Ancestral):
    """SDE-DPM-Solver++(3M), k-diffusion's ``sample_dpmpp_3m_sde``: the exact linear part of the reverse SDE family
    (``eta``), third-order multistep ``x0_hat`` terms, one evaluation per step.

    ``x_next = (sigma_next/sigma) e^{-eta h} x + alpha_next [(1 - e^{-H}) D + H phi_2(-H) D1 + H phi_3(-H) D2]
    + sigma_next sqrt(1 - e^{-2 eta h}) s_noise z`` with ``H = (1 + eta) h`` and, from the last three ``x0_hat``,
    ``D1 ~ h x0'`` and ``D2 ~ h^2 x0''/2`` (DPM-Solver++(3M)'s divided differences). The ``D2`` weight is
    k-diffusion's ``H phi_3(-H)``; the Taylor expansion of the exact integral has ``2 H phi_3(-H)`` (pfode's
    ``dpm++3m``), so with ``eta = 0`` this is a deterministic multistep solver of measured global order 2, not 3.
    Warm-up: first order, then second order.
    """

    name = "dpm++3m-sde"
    order = 2
    evals_per_step = 1
    paper = LU_PP + " (3M in its SDE form, as in Crowson's k-diffusion)"

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        he = (1.0 + self.eta) * h
        a = q.alpha
        e = -math.expm1(-he)
        p2, p3 = he * phi(2, -he), -he * phi(3, -he)  # k-diffusion's phi_2 = expm1(-H)/H + 1, phi_3 = phi_2/H - 1/2
        if i == 0:
            w, order = (a * e,), 1
        elif i == 1:
            r = (p.lam - table[i - 1].lam) / h
            w, order = (a * (e + p2 / r), -a * p2 / r), 2
        else:
            r0 = (p.lam - table[i - 1].lam) / h
            r1 = (table[i - 1].lam - table[i - 2].lam) / h
            g = r0 / (r0 + r1)
            # phi_2 D1 - phi_3 D2 with D1 = (1 + g) d10 - g d11, D2 = (d10 - d11)/(r0 + r1)
            c10 = p2 * (1.0 + g) - p3 / (r0 + r1)
            c11 = -p2 * g + p3 / (r0 + r1)
            w, order = (a * (e + c10 / r0), a * (-c10 / r0 + c11 / r1), -a * c11 / r1), 3
        cz = 0.0
        if self.stochastic:
            cz = q.sigma * math.sqrt(-math.expm1(-2.0 * self.eta * h)) * self.s_noise
        return NoisyLinearStep(
            i=i, order=order, history=len(w) - 1, cx=q.sigma / p.sigma * math.exp(-self.eta * h), w=w, cz=cz,
            draws=((p.s, q.s),) if cz else (),
        )

    def update(self, x, hist, st, d, noise=None):
        ds = ((d,) + (hist or ()))[:3]
        out = _lin(x, st.cx, zip(st.w, ds))
        if st.cz:
            out.add_(noise(), alpha=st.cz)
        return out, ds[:2]


register("euler-ancestral", EulerAncestral)
register("dpm-2-ancestral", DPM2Ancestral)
register("dpm++2s-ancestral", DPMSolverPP2SAncestral)
register("dpm++sde", DPMSolverPPSDE)
register("dpm++3m-sde", DPMSolverPP3MSDE)
