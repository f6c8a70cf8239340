"""A multistep exponential integrator whose update rule is chosen per step (the solver of tuned recipes).

After "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models" (Liu et al.,
2023): each step picks its own order, prediction space and corrector. With ``y = x / alpha`` the PF-ODE
is ``dy/dlam = x0_hat - y``; over a step ``h = lam_next - lam`` its exact solution is, in the two spaces,

* data (``x0``): ``x_next = (sigma_next/sigma) x + alpha_next int_0^h e^{-(h-u)} x0_hat(lam + u) du``;
* noise (``eps``): ``x_next = (alpha_next/alpha) x - sigma_next int_0^h e^{h-u} eps_hat(lam + u) du``.

A step of order ``k`` replaces ``x0_hat`` (or ``eps_hat``) by the polynomial in ``lam`` through the last
``k`` evaluations and integrates it exactly (the Lagrange weights are integrated by Gauss-Legendre
quadrature in float64 on the host, exact to round-off). With ``corrector`` on, the evaluation at the
predicted next state is reused to redo the step with one more node (``k + 1``; the UniC idea, Zhao et
al., 2023), at no extra evaluation: the next step starts from the corrected state. ``eps_hat`` of an
evaluation is taken at the state where the network was called.

The order of a run is that of its lowest-order steps (first-order warm-up: a step's order is at most the
number of evaluations so far); with a constant rule of order ``k``, global order ``k``, and ``k + 1``
with the corrector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_choice, check_int
from .base import Solver, Step, Table, register
from .exponential import _lin
from .fused import lin

__all__ = ["Rule", "USF", "SPACES", "MAX_ORDER"]

SPACES = ("x0", "eps")
MAX_ORDER = 4
_GX, _GW = np.polynomial.legendre.leggauss(32)
_GU = 0.5 * (_GX + 1.0)
_GW = 0.5 * _GW


@dataclass(frozen=True)
class Rule:
    """The update rule of one step: ``order`` (1-4, lowered to the evaluations available), ``space``
    (``"x0"`` or ``"eps"``: which prediction the polynomial interpolates) and ``corrector`` (redo the step
    with the next evaluation, free)."""

    order: int = 2
    space: str = "x0"
    corrector: bool = False

    def __post_init__(self):
        check_int("order", self.order, 1)
        if self.order > MAX_ORDER:
            raise ValueError(f"order={self.order} must be at most {MAX_ORDER}")
        check_choice("space", self.space, SPACES)
        if not isinstance(self.corrector, bool):
            raise TypeError(f"corrector must be True or False, got {self.corrector!r}")

    def to_dict(self) -> dict:
        return {"order": self.order, "space": self.space, "corrector": self.corrector}

    @classmethod
    def from_dict(cls, d) -> Rule:
        if not isinstance(d, dict):
            raise TypeError(f"a step rule must be a dict with order, space, corrector; got {type(d).__name__}")
        extra = set(d) - {"order", "space", "corrector"}
        if extra:
            raise ValueError(f"step rule has unknown fields {sorted(extra)}; allowed: order, space, corrector")
        return cls(**d)


def _weights(lams: list[float], lam0: float, lam1: float, space: str) -> list[float]:
    """``int e^{-(lam1 - lam)} l_j(lam) dlam`` (x0) or ``int e^{lam1 - lam}... `` (eps) over ``[lam0, lam1]``
    for the Lagrange basis ``l_j`` on ``lams``, scaled so that the step reads ``x_next = c x + a1 sum_j w_j D_j``
    with ``a1 = alpha_next`` (x0) or ``-sigma_next`` (eps)."""
    h = lam1 - lam0
    u = _GU
    kern = np.exp(-h * (1.0 - u)) if space == "x0" else np.exp(h * (1.0 - u))
    nodes = [(v - lam0) / h for v in lams]
    out = []
    for j, uj in enumerate(nodes):
        basis = np.ones_like(u)
        for m, um in enumerate(nodes):
            if m != j:
                basis = basis * (u - um) / (uj - um)
        out.append(float(h * np.sum(_GW * kern * basis)))
    return out


@dataclass(frozen=True, kw_only=True)
class USFStep(Step):
    """One planned step: ``x_next = cx x + sum_j (wd[j] D_j + wx[j] X_j)`` over the evaluations
    ``(X_j, D_j)`` newest first (``X_j``: the state where ``D_j = x0_hat`` was evaluated), and the corrector
    of the previous step ``(cx, wd, wx)`` applied to the previous step's start over the same evaluations."""

    cx: float
    wd: tuple[float, ...]
    wx: tuple[float, ...]
    corr: tuple | None = None


def _combination(table: Table, i: int, nxt: int, nodes: list[int], space: str):
    """``(cx, wd, wx)`` of the step from point ``i`` to ``nxt`` interpolating at grid ``nodes`` (indices)."""
    p, q = table[i], table[nxt]
    w = _weights([table[k].lam for k in nodes], p.lam, q.lam, space)
    if space == "x0":
        return q.sigma / p.sigma, tuple(q.alpha * v for v in w), tuple(0.0 for _ in w)
    # eps_j = (X_j - alpha_j D_j) / sigma_j, weight -sigma_next w_j
    wd = tuple(q.sigma * v * table[k].alpha / table[k].sigma for v, k in zip(w, nodes))
    wx = tuple(-q.sigma * v / table[k].sigma for v, k in zip(w, nodes))
    return q.alpha / p.alpha, wd, wx


class USF(Solver):
    """Per-step multistep exponential integrator (see the module docs): one evaluation per step.

    Args:
        order, space, corrector: the rule of every step (when ``rules`` is not given).
        rules: one :class:`Rule` (or dict) per step of the grid; a step to zero noise is always the
            denoising step and needs no rule.
        lower_order_final: with a constant rule, lower the order of the last steps on grids of fewer than
            15 steps (as DPM-Solver++).

    Order: ``order`` (``order + 1`` with the corrector) for a constant rule. Paper: Liu et al., 2023.
    """

    name = "usf"
    evals_per_step = 1
    paper = (
        "Liu et al., A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models, ICLR 2024; "
        "Zhao et al., UniPC, NeurIPS 2023 (corrector)"
    )

    def __init__(
        self, order: int = 2, space: str = "x0", corrector: bool = False, rules=None, lower_order_final: bool = True
    ):
        if rules is not None:
            if isinstance(rules, (str, bytes)) or not hasattr(rules, "__len__"):
                raise TypeError("rules must be a list of Rule (or dicts with order, space, corrector)")
            rules = tuple(r if isinstance(r, Rule) else Rule.from_dict(r) for r in rules)
            if not rules:
                raise ValueError("rules must not be empty")
            self.order = min(r.order + (1 if r.corrector else 0) for r in rules)
        else:
            base = Rule(order, space, corrector)
            self.order = order + (1 if corrector else 0)
        self.rules = rules
        self._base = None if rules is not None else base
        self.lower_order_final = bool(lower_order_final) and rules is None
        self._keep = max(r.order for r in (rules or (base,))) + 1  # evaluations a later step may read

    def rule(self, i: int, n: int) -> Rule:
        """The rule of step ``i`` of ``n`` (``n``: steps before any final step to zero noise)."""
        if self.rules is not None:
            if len(self.rules) < n:
                raise ValueError(f"rules has {len(self.rules)} entries but the grid has {n} steps")
            return self.rules[i]
        r = self._base
        if self.lower_order_final and n < 15:
            if i == n - 1:
                return Rule(1, r.space, r.corrector)
            if i == n - 2:
                return Rule(min(r.order, 2), r.space, r.corrector)
        return r

    def _rule_order(self, i: int, n: int) -> tuple[Rule, int]:
        r = self.rule(i, n)
        return r, min(r.order, i + 1)

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        n = n - 1 if table[n].zero else n
        r, k = self._rule_order(i, n)
        cx, wd, wx = _combination(table, i, i + 1, list(range(i, i - k, -1)), r.space)
        corr = None
        if i > 0:
            rp, kp = self._rule_order(i - 1, n)
            if rp.corrector:  # redo step i - 1 with its nodes plus point i
                corr = _combination(table, i - 1, i, [i] + list(range(i - 1, i - 1 - kp, -1)), rp.space)
        history = max(k - 1, len(corr[1]) - 1 if corr else 0)
        return USFStep(i=i, order=k + (1 if r.corrector else 0), history=history, cx=cx, wd=wd, wx=wx, corr=corr)

    def update(self, x, hist, st: USFStep, d, noise=None):
        start, evals = hist if hist else (None, ())
        evals = ((x, d),) + evals
        if st.corr is not None:
            ccx, cwd, cwx = st.corr
            x = _lin(start, ccx, _terms(cwd, cwx, evals))
        x_next = _lin(x, st.cx, _terms(st.wd, st.wx, evals))
        return x_next, (x, evals[: self._keep])

    def fuse_step(self, b, st, hist):
        # kept values, flat: the corrected start, then (X_j, D_j) pairs newest first
        start = hist[0] if hist else None
        pairs = [(hist[j], hist[j + 1]) for j in range(1, len(hist), 2)]
        evals = [({b.x: 1.0}, b.x0(st.i, b.x, b.eval(st.i, b.x)))] + pairs
        x = {b.x: 1.0}
        if st.corr is not None:
            ccx, cwd, cwx = st.corr
            x = {b.comb(lin((ccx, start), *_terms(cwd, cwx, evals))): 1.0}
        x_next = lin((st.cx, x), *_terms(st.wd, st.wx, evals))
        return x_next, (x,) + tuple(v for pair in evals[: self._keep] for v in pair)


def _terms(wd, wx, evals):
    for j, (a, b) in enumerate(zip(wd, wx)):
        xj, dj = evals[j]
        if a:
            yield a, dj
        if b:
            yield b, xj


register("usf", USF)
