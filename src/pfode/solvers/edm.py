"""Samplers written on Karras et al.'s ODE in ``s``: EDM's stochastic churn with Euler, Heun or DPM-2 steps, and
linear multistep (LMS).

Every path is the VE process ``y = x0 + s eps`` in ``y = x / alpha``, ``s = sigma / alpha`` (k-diffusion's ``x``
and ``sigma``), whose probability-flow ODE is ``dy/ds = (y - x0_hat) / s``. The steps here are written in
``(y, s)`` and map back with ``alpha`` at the points they evaluate, so they serve every path and prediction type.

Noise: a step lists in ``draws`` the interval ``(s_from, s_to)`` of each ``noise()`` it calls, in call order;
``noise()`` returns a standard normal tensor shaped like the state (see :mod:`pfode.solvers.ancestral`). Churn's
noise is fresh noise (independent of everything before, as EDM's), listed as the interval ``(s, s_hat)`` above the
step's start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_finite_float
from .base import Solver, Step, Table, register
from .exponential import _AdamsInS

__all__ = ["EDMSampler", "LMS", "SigmaStep", "sigma_step", "check_point"]

KARRAS = "Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models, NeurIPS 2022"


@dataclass(frozen=True, kw_only=True)
class SigmaStep(Step):
    """A step of at most two evaluations in ``(y, s)``, with optional churn before it and noise after it.

    With ``y = x * y_in``: churn ``y_hat = y + c_hat z`` (``c_hat = 0``: none); ``D = x0_hat(a_hat y_hat)`` at point
    ``j_hat`` (``s_hat``); if ``j2 >= 0`` a second stage ``y2 = y_hat + a1 (y_hat - D)``, ``D2 = x0_hat(a2 y2)`` at
    point ``j2``; then ``x_next = y_out (y_hat + b1 (y_hat - D) + b2 (y2 - D2)) + cz z'``. ``draws`` lists the noise
    intervals of the ``noise()`` calls (churn first).
    """

    y_in: float
    j_hat: int
    a_hat: float
    s_hat: float
    c_hat: float = 0.0
    a1: float = 0.0
    j2: int = -1
    a2: float = 1.0
    b1: float = 0.0
    b2: float = 0.0
    y_out: float = 1.0
    cz: float = 0.0
    draws: tuple[tuple[float, float], ...] = ()


def sigma_step(x, hist, st: SigmaStep, noise):
    """The step program of a :class:`SigmaStep`."""
    y = x * st.y_in
    if st.c_hat:
        y = torch.add(y, noise(), alpha=st.c_hat)
        d = yield st.j_hat, y * st.a_hat
    else:
        d = yield st.j_hat, x
    e = y - d
    out = torch.add(y, e, alpha=st.b1)
    if st.j2 >= 0:
        y2 = torch.add(y, e, alpha=st.a1)
        d2 = yield st.j2, y2 * st.a2
        out.add_(y2 - d2, alpha=st.b2)
    out = out * st.y_out
    if st.cz:
        out.add_(noise(), alpha=st.cz)
    return out, hist, d


def check_point(table: Table, k: int, s: float, what: str) -> int:
    """``k``, after checking that point ``k`` of ``table`` sits at ``sigma/alpha = s`` inside the path's range."""
    pt = table[k]
    path = table.path
    tol = 1e-9 * (1.0 + abs(pt.t))  # round-off at the ends of the range
    inside = path.t_lo - tol <= pt.t <= path.t_hi + tol
    ok = math.isfinite(pt.t) and inside and pt.alpha > 0 and abs(pt.s - s) <= 1e-9 * s
    if not ok:
        raise ValueError(
            f"{what} needs the noise level sigma/alpha={s:g}, which the path {type(path).__name__} does not reach "
            f"(its time range is [{path.t_lo:g}, {path.t_hi:g}])"
        )
    return k


def _two_stage(table: Table, i: int, method: str, s_hat: float, j_hat: int) -> dict:
    """Coefficients of an Euler, Heun or DPM-2 step from ``s_hat`` (point ``j_hat``) to grid point ``i + 1``."""
    q = table[i + 1]
    if method == "euler" or q.zero:  # Euler; to zero noise it returns x0_hat (k-diffusion's last step)
        return dict(b1=(q.s - s_hat) / s_hat, y_out=q.alpha)
    if method == "heun":  # Karras et al., Algorithm 1/2: trapezoid with an Euler predictor
        a1 = (q.s - s_hat) / s_hat
        return dict(
            a1=a1, j2=i + 1, a2=q.alpha, b1=0.5 * a1, b2=0.5 * (q.s - s_hat) / q.s, y_out=q.alpha, order=2, evals=2
        )
    # DPM-2: the midpoint rule with the midpoint at the geometric mean of the noise levels
    j = check_point(table, table.add_s(math.sqrt(s_hat * q.s)), math.sqrt(s_hat * q.s), "DPM-2")
    m = table[j]
    return dict(a1=(m.s - s_hat) / s_hat, j2=j, a2=m.alpha, b2=(q.s - s_hat) / m.s, y_out=q.alpha, order=2, evals=2)


class EDMSampler(Solver):
    """Karras et al.'s Algorithm 2: Euler, Heun or DPM-2 steps in ``s``, with optional stochastic churn.

    At a grid point with ``s_tmin <= s <= s_tmax`` churn raises the noise level to ``s_hat = s (1 + gamma)``,
    ``gamma = min(s_churn / n, sqrt(2) - 1)`` (``n``: steps of the grid, the final step to zero noise included), by
    adding ``s_noise sqrt(s_hat^2 - s^2)`` times fresh noise to ``y``; the step then runs from ``s_hat``. Without
    churn (``s_churn = 0``, the default) it is the deterministic sampler.

    Methods: ``"euler"`` (order 1, one evaluation per step), ``"heun"`` (order 2, two; Euler's step to zero noise)
    and ``"dpm-2"`` (order 2, two: k-diffusion's DPM-2, the midpoint rule in ``s`` with the midpoint at
    ``sqrt(s_hat s_next)``, after DPM-Solver-2; Euler's step to zero noise). Registered as ``"dpm-2"``; pfode's
    ``"dpm2"`` is DPM-Solver-2 itself (Lu et al.), a different method.
    """

    paper = KARRAS

    def __init__(
        self,
        method: str = "dpm-2",
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
    ):
        self.method = check_choice("method", method, ("euler", "heun", "dpm-2"))
        self.s_churn = check_finite_float("s_churn", s_churn, 0.0)
        for k, v in (("s_tmin", s_tmin), ("s_tmax", s_tmax)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{k}={v!r} must be a number (inf allowed)")
        self.s_tmin, self.s_tmax = float(s_tmin), float(s_tmax)
        self.s_noise = check_finite_float("s_noise", s_noise, 0.0)
        self.order = 1 if method == "euler" else 2
        self.evals_per_step = 1 if method == "euler" else 2
        self.name = method
        self.stochastic = self.s_churn > 0 and self.s_noise > 0
        if method == "dpm-2":
            self.paper = (
                KARRAS + " (Algorithm 2 with DPM-Solver-2-style midpoint steps, after Lu et al., DPM-Solver, NeurIPS "
                "2022; as in Crowson's k-diffusion)"
            )

    def gamma(self, s: float, n: int) -> float:
        """The churn ``gamma`` at noise level ``s`` on a grid of ``n`` steps."""
        if self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax:
            return min(self.s_churn / n, math.sqrt(2.0) - 1.0)
        return 0.0

    def steps_to_zero(self, table: Table, i: int) -> bool:
        # with churn at the last grid point the step to zero noise evaluates at s_hat (k-diffusion does)
        return self.gamma(table[i].s, table.n_steps) > 0

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p = table[i]
        g = self.gamma(p.s, n)
        s_hat, j_hat, c_hat, draws = p.s, i, 0.0, ()
        if g > 0:
            s_hat = p.s * (1.0 + g)
            j_hat = check_point(table, table.add_s(s_hat), s_hat, "churn")
            s_hat = table[j_hat].s
            c_hat = self.s_noise * math.sqrt(max(s_hat * s_hat - p.s * p.s, 0.0))
            draws = ((p.s, s_hat),) if c_hat else ()
        coef = dict(order=1, evals=1)
        coef.update(_two_stage(table, i, self.method, s_hat, j_hat))
        return SigmaStep(
            i=i, y_in=1.0 / p.alpha, j_hat=j_hat, a_hat=table[j_hat].alpha, s_hat=s_hat, c_hat=c_hat, draws=draws,
            **coef,
        )

    def step(self, x, hist, st, noise=None):
        return (yield from sigma_step(x, hist, st, noise))


class LMS(_AdamsInS):
    """Linear multistep (Adams-Bashforth with variable steps) on ``dy/ds = eps_hat``, orders 1-4, one evaluation
    per step.

    ``eps_hat`` is extrapolated by the polynomial in ``s`` through the last ``order`` values and integrated exactly
    (lower orders while the history fills up). Unlike pfode's other solvers its step to zero noise is a full
    multistep step (the polynomial integrated down to ``s = 0``), as in k-diffusion's ``sample_lms``; with a single
    value it is the denoising step. This is iPNDM's variable-step update in ``s``, without lower-order final steps.
    """

    name = "lms"
    evals_per_step = 1
    paper = (
        "Karras et al., NeurIPS 2022 (the ODE in sigma) with Adams-Bashforth linear multistep steps (Hairer, Norsett "
        "& Wanner, Solving Ordinary Differential Equations I, III.5), as in Crowson's k-diffusion"
    )

    def __init__(self, order: int = 4):
        super().__init__(order, 4, lower_order_final=False)
        self.variable = "s"

    def steps_to_zero(self, table: Table, i: int) -> bool:
        return True


register("dpm-2", EDMSampler, method="dpm-2")
register("lms", LMS)
