"""Momentum for multistep samplers: Polyak's heavy ball (HB) and the generalized heavy ball (GHVB).

Wizadwongsa et al. trace the divergence artifacts of high-order multistep samplers at few steps and large
guidance scales to their small regions of absolute stability, and enlarge those regions with momentum.

Each multistep solver of :mod:`pfode.solvers.exponential` advances a step as an Euler-like update of a linear
coordinate with its own slope estimate ``S_i = sum_j w_j D_{i-j}`` (weights summing to one):

* data prediction (DPM-Solver++ multistep, UniPC): ``x_{i+1} / sigma_{i+1} = x_i / sigma_i + (e^{lam_{i+1}} -
  e^{lam_i}) S_i`` with ``D = x0_hat``, i.e. ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) S_i``;
* noise prediction (iPNDM/PLMS, DEIS): ``x_{i+1} / alpha_{i+1} = x_i / alpha_i + (s_{i+1} - s_i) S_i`` with
  ``D = eps_hat`` and ``s = sigma / alpha``.

**HB** (the paper's "PLMS / DPM-Solver++ / UniPC with HB") replaces the slope by a velocity, an exponential
moving average of the slopes: ``v_{i+1} = (1 - beta) v_i + beta S_i`` and the step uses ``v_{i+1}`` in place of
``S_i``. ``beta = 1`` is the base solver exactly; for ``beta < 1`` the velocity lags the slope by ``O(h)`` and the
method is first order (the paper proves first-order convergence). The velocity starts as the first step's slope
(``v_1 = S_0``: the first step has no momentum). UniPC's corrector re-does the step with the corrector's slope
from the same velocity, so the corrected states follow the HB recursion with UniC slopes.

**GHVB** (generalized heavy ball) keeps a high order: on ``dy/ds = eps_hat`` (``y = x / alpha``) the velocity is
the moving average of the evaluations, ``v_{i+1} = (1 - beta) v_i + beta eps_i`` (``v_1 = eps_0``), and the step
is an Adams-Bashforth-like combination of the last ``k`` velocities,
``y_{i+1} = y_i + (s_{i+1} - s_i) sum_j gamma_j v_{i+1-j}``. On a uniform grid, once the start-up transient
``(1 - beta)^i`` has died out, the ``gamma_j`` are the paper's constants, e.g. for ``k = 2``
``gamma = ((2 + beta), -(2 - beta)) / (2 beta)``; ``beta = 1`` is Adams-Bashforth of order ``k`` (PLMS/iPNDM).
Here the ``gamma_j`` are solved on the host for any grid: each ``v_m`` is an exact combination of
``eps_0 .. eps_{m-1}``, and ``gamma`` makes ``sum_j gamma_j v_{i+1-j}`` reproduce the mean slope
``(y(s_{i+1}) - y(s_i)) / (s_{i+1} - s_i)`` for every ``eps`` polynomial of degree ``< k`` in the step variable
(``s``, as in the paper, or ``lam``). This is order ``k`` for every ``beta`` in ``(0, 1]`` on any grid, and
identical to iPNDM of order ``k`` at ``beta = 1``. The paper's "GHVB r" is :meth:`GHVB.from_number`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_choice
from .base import Solver, Step, Table, get, register
from .exponential import DPMSolverPPMultistep, EpsStep, UniPC, _AdamsInS, _lin, _Multistep, _up

__all__ = ["HeavyBall", "heavy_ball", "GHVB", "PAPER"]

PAPER = (
    "Wizadwongsa, Chinchuthakun, Khungurn, Raj & Suwajanakorn, Diffusion Sampling with Momentum for Mitigating "
    "Divergence Artifacts, ICLR 2024 (arXiv:2307.11118)"
)


def check_beta(beta) -> float:
    """The momentum parameter ``beta`` in ``(0, 1]`` (``1`` = no momentum)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a real number in (0, 1] (1 = no momentum), got {beta!r}")
    if not (math.isfinite(beta) and 0.0 < beta <= 1.0):
        raise ValueError(f"beta={beta!r} must be in (0, 1] (1 = no momentum, smaller = more damping)")
    return float(beta)


def _mix(w, ds):
    """``sum_j w[j] ds[j]`` in one fresh tensor."""
    return _lin(ds[0], w[0], zip(w[1:], ds[1:]))


def _ema(slope, v, m: float):
    """``m v + (1 - m) slope`` (the slope itself when ``m = 0``)."""
    return torch.lerp(slope, v, m) if m else slope


# -- heavy ball ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class HBStep(Step):
    """``x_next = cx x + cv v_next``, ``v_next = m v + (1 - m) sum_j w[j] D_{i-j}`` (``m = 1 - beta``, 0 on the
    first step). ``a, s``: ``alpha, sigma`` at the start (noise-prediction bases rebuild ``eps_hat``); ``corrector``
    (UniPC): ``(cx, cv, w, w_new, m)`` of the previous step, re-done with the new evaluation."""

    cx: float
    cv: float
    w: tuple[float, ...]
    m: float = 0.0
    a: float = 1.0
    s: float = 1.0
    corrector: tuple = ()


class HeavyBall(Solver):
    """Polyak's heavy-ball momentum on a multistep solver (Wizadwongsa et al., 2023), one evaluation per step.

    ``v_{i+1} = (1 - beta) v_i + beta S_i`` replaces the base solver's slope ``S_i`` (see the module docs). Use
    :func:`heavy_ball` (or the names ``"dpm++2m-hb"``, ``"unipc-hb"``, ``"ipndm-hb"``) to build one.

    Args:
        base: a :class:`DPMSolverPPMultistep`, :class:`UniPC`, :class:`IPNDM` or :class:`DEIS` object.
        beta: momentum parameter in ``(0, 1]``; ``1`` is the base solver exactly. Smaller values average over
            more past slopes: with constant steps the region of absolute stability grows (the paper's analysis; for
            Euler the real interval is ``[2 - 4/beta, 0]``), but on a variable grid a difference carried by the
            velocity is scaled by ``(1 - beta) h_i / h_{i-1}`` in the next step, which exceeds 1 where steps grow
            fast (e.g. ``e^lam`` on a few-step logsnr grid), and the lag costs accuracy: 0.8 (default) to 0.9 is
            the paper's range (see ``benchmarks/momentum_guidance.py``).

    Order: the base solver's at ``beta = 1``, else 1.
    """

    evals_per_step = 1

    def __init__(self, base: Solver, beta: float = 0.8):
        self.beta = check_beta(beta)
        if isinstance(base, UniPC):
            self.kind = "unipc"
        elif isinstance(base, DPMSolverPPMultistep):
            self.kind = "data"
        elif isinstance(base, _AdamsInS):
            self.kind = "eps"
        else:
            raise ValueError(
                f"base={getattr(base, 'name', base)!r}: heavy-ball momentum applies to the multistep solvers "
                "dpm++2m, dpm++3m, unipc, ipndm and deis"
            )
        self.base = base
        self.name = f"{base.name}-hb"
        self.order = base.order if self.beta == 1.0 else 1
        self.paper = f"{PAPER}, heavy ball; base: {base.paper}"

    def _m(self, i: int) -> float:
        return 0.0 if i == 0 else 1.0 - self.beta

    def _cv(self, table: Table, i: int) -> float:
        """The factor of the slope in ``x_{i+1}``: ``alpha_{i+1} (1 - e^{-h})`` or ``alpha_{i+1} (s_{i+1} - s_i)``."""
        p, q = table[i], table[i + 1]
        if self.kind == "eps":
            return q.alpha * (q.s - p.s)
        return -q.alpha * math.expm1(p.lam - q.lam)

    def plan_step(self, table, i, n):
        st = self.base.plan_step(table, i, n)
        m, cv = self._m(i), self._cv(table, i)
        corr = ()
        if getattr(st, "corrector", ()):
            ccx, cw, cnew = st.corrector
            ccv = self._cv(table, i - 1)
            corr = (ccx, ccv, tuple(v / ccv for v in cw), cnew / ccv, self._m(i - 1))
        return HBStep(
            i=i,
            order=st.order if m == 0 else 1,
            history=max(st.history, 1 if m else 0),
            cx=st.cx,
            cv=cv,
            w=tuple(v / cv for v in st.w),
            m=m,
            a=getattr(st, "a", 1.0),
            s=getattr(st, "s", 1.0),
            corrector=corr,
        )

    def update(self, x, hist, st, d, noise=None):
        if self.kind == "data":
            ds, v = hist if hist is not None else ((), None)
            ds = (d,) + ds
            v = _ema(_mix(st.w, ds), v, st.m)
            return torch.add(x * st.cx, v, alpha=st.cv), (ds[: self.base.order - 1], v)
        if self.kind == "eps":
            es, v = hist if hist is not None else ((), None)
            xc = _up(x)  # eps_hat = (x - alpha x0_hat) / sigma in float32 for half states, as the base does
            es = (torch.add(xc, _up(d), alpha=-st.a).mul_(1.0 / st.s),) + es
            v = _ema(_mix(st.w, es), v, st.m)
            return torch.add(xc * st.cx, v, alpha=st.cv).to(x.dtype), (es[: self.base.order - 1], v)
        # UniPC: hist = (corrected x_i, x0_hat history, velocity entering the previous step (with the corrector) or
        # the predictor's velocity (without))
        prev_x, ds, v = hist if hist is not None else (None, (), None)
        if st.corrector:  # re-do the previous step with the corrector's slope, from the same velocity
            ccx, ccv, cw, cnew, cm = st.corrector
            v = _ema(_lin(d, cnew, zip(cw, ds)), v, cm)
            x = torch.add(prev_x * ccx, v, alpha=ccv)
        ds = ((d,) + ds)[: self.base.predictor_order]
        vp = _ema(_mix(st.w, ds), v, st.m)
        return torch.add(x * st.cx, vp, alpha=st.cv), (x, ds, v if self.base.corrector else vp)


def heavy_ball(base: str | Solver = "dpm++2m", beta: float = 0.8, **options) -> HeavyBall:
    """Heavy-ball momentum on ``base`` (a name with its ``options``, e.g. ``heavy_ball("unipc", 0.9, variant="bh1")``,
    or a solver object)."""
    b = get(base, **options)
    return HeavyBall(b, beta)


# -- generalized heavy ball ----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GHVBStep(EpsStep):
    """GHVB: ``v_next = m v + (1 - m) eps_hat``, ``x_next = cx x + sum_j w[j] v_{i+1-j}`` (``m = 1 - beta``)."""

    m: float = 0.0


_GAUSS = np.polynomial.legendre.leggauss(32)


class GHVB(_Multistep):
    """Generalized heavy ball (Wizadwongsa et al., 2023): momentum that keeps order ``k``, one evaluation per step.

    ``v_{i+1} = (1 - beta) v_i + beta eps_i``, ``y_{i+1} = y_i + (s_{i+1} - s_i) sum_{j<k} gamma_j v_{i+1-j}`` on
    ``dy/ds = eps_hat`` with ``gamma`` solved per step (see the module docs). Lower-order warm-up (the first ``k``
    steps are exactly iPNDM's).

    Args:
        order: ``k`` in 1..4 (the global order, for every ``beta``).
        beta: momentum parameter in ``(0, 1]``; ``1`` is iPNDM (variable-step Adams-Bashforth, PLMS) of order ``k``.
        variable: ``"s"`` (``sigma/alpha``, the paper's) or ``"lam"``: the variable in which ``eps_hat`` is taken
            to be polynomial.
        lower_order_final: last step first order, the one before at most second, on grids of fewer than 15 steps.
    """

    name = "ghvb"
    evals_per_step = 1
    paper = f"{PAPER}, generalized heavy ball"

    def __init__(self, order: int = 4, beta: float = 0.8, variable: str = "s", lower_order_final: bool = False):
        super().__init__(order, 4, lower_order_final)
        self.beta = check_beta(beta)
        self.variable = check_choice("variable", variable, ("s", "lam"))

    @classmethod
    def from_number(cls, number: float, **options) -> GHVB:
        """The paper's "GHVB r": order ``ceil(r)`` and ``beta = r - ceil(r) + 1`` (3.8: order 4, beta 0.8; 4.0: order
        4, beta 1), ``r`` in ``(0, 4]``."""
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not (0.0 < number <= 4.0):
            raise ValueError(f"number={number!r} must be in (0, 4] (order ceil(number), beta = fractional part)")
        k = max(1, math.ceil(number))
        return cls(order=k, beta=float(number) - (k - 1), **options)

    def _coord(self, pt) -> float:
        return pt.s if self.variable == "s" else pt.lam

    def gammas(self, table: Table, i: int, k: int) -> np.ndarray:
        """``gamma`` (``[k]``) of the step from grid point ``i``: ``sum_j gamma_j v_{i+1-j}`` is the mean slope of the
        step for ``eps`` polynomial of degree ``< k`` in the step variable, given how every ``v_m`` mixes ``eps``."""
        c = np.array([self._coord(table[j]) for j in range(i + 2)])
        width = c[i + 1] - c[i]
        u = (c[: i + 1] - c[i]) / width  # history nodes in units of the step
        b = self.beta
        fact = np.array([math.factorial(q) for q in range(k)], dtype=np.float64)
        mom = np.empty((k, k))
        for col in range(k):
            mm = i + 1 - col  # v_mm = (1-b)^(mm-1) eps_0 + sum_{1 <= j < mm} b (1-b)^(mm-1-j) eps_j
            a = b * (1.0 - b) ** (mm - 1 - np.arange(mm))
            a[0] = (1.0 - b) ** (mm - 1)
            mom[:, col] = [float(np.sum(a * u[:mm] ** q)) / fact[q] for q in range(k)]
        # the mean slope of eps = u^q/q!: (1/ds) int_0^1 u^q/q! s'(u) du
        if self.variable == "s":
            target = 1.0 / (fact * np.arange(1, k + 1))
        else:  # s = e^{-lam}: (1/ds) int u^q/q! ds = H/(1 - e^{-H}) int_0^1 u^q/q! e^{-H u} du
            x, wq = _GAUSS
            uq = 0.5 * (x + 1.0)
            ker = 0.5 * wq * np.exp(-width * uq) * (width / -math.expm1(-width))
            target = np.array([float(np.sum(ker * uq**q)) / fact[q] for q in range(k)])
        return np.linalg.solve(mom, target)

    def plan_step(self, table, i, n):
        k = self._order_at(table, i, n)
        p, q = table[i], table[i + 1]
        cv = q.alpha * (q.s - p.s)
        m = 0.0 if i == 0 else 1.0 - self.beta
        w = tuple(cv * float(g) for g in self.gammas(table, i, k))
        return GHVBStep(
            i=i, order=k, history=max(k - 1, 1 if m else 0), cx=q.alpha / p.alpha, w=w, a=p.alpha, s=p.sigma, m=m
        )

    def update(self, x, hist, st, d, noise=None):
        xc = _up(x)  # eps_hat and the velocities in float32 for half states, as iPNDM
        e = torch.add(xc, _up(d), alpha=-st.a).mul_(1.0 / st.s)
        v = _ema(e, hist[0] if st.m else None, st.m)
        hist = self._push(hist, v, self.order)
        return _lin(xc, st.cx, zip(st.w, hist)).to(x.dtype), hist


register("dpm++2m-hb", heavy_ball, base="dpm++2m")
register("unipc-hb", heavy_ball, base="unipc")
register("ipndm-hb", heavy_ball, base="ipndm")
register("ghvb", GHVB)
