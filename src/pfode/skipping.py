"""Step skipping: SADA's stability-guided replacement of network evaluations (Jiang et al., ICML 2025).

SADA watches the sampler's own gradient information along the trajectory and, where it says the
trajectory is locally stable, replaces the next network evaluation by an extrapolation. Written in the
coordinates every path shares (``y = x / alpha``, ``s = sigma / alpha``, PF-ODE ``dy/ds = eps_hat``), at grid
point ``k`` reached by the solver's step from ``k - 1``:

* the gradients are the ``eps_hat`` of the last three points, ``e_{k-1}, e_{k-2}, e_{k-3}``;
* an independent multistep prediction of the state: the three-point Adams-Bashforth step in ``s``,
  ``y~_k = y_{k-1} + sum_j w_j e_{k-1-j}`` (weights exact for ``eps_hat`` quadratic in ``s`` on the actual grid);
* the criterion correlates the solver's deviation from that prediction with the second difference of the
  gradient: ``c_k = <y_k - y~_k, D2 e> / (||y_k - y~_k|| ||D2 e||)`` with ``D2 e = e_{k-1} - 2 e_{k-2} + e_{k-3}``,
  over the whole batch. ``c_k <= threshold`` (the paper's sign test at the default ``threshold = 0``: the local
  error and the change of curvature point against each other, so errors are damped) marks the trajectory
  stable there;
* a skipped evaluation is replaced by the paper's extrapolation on the trajectory: the last gradient at the
  predicted state, ``x0_hat_k = y~_k - s_k e_{k-1}``; its implied ``eps_hat`` enters the history.

Skips are allowed only inside the acceleration window ``[start, end)`` (fractions of the steps) and at most
``max_consecutive`` in a row; defaults are those of the paper's released configuration (50 steps, window
steps 10-47, at most 4 consecutive skips). The released code's own predictor uses fixed uniform-step weights
``(5/8, 3/4, -3/8)`` in its scheduler's time; transcribed to ``dy/ds`` it reads "stable" at nearly every step
for every solver, so the exact three-point Adams-Bashforth step (an estimate of the solver's local error
for solvers of order below 3) is used instead. The decision is one scalar read on the host per step (the
network call is either made or not), the only host-device sync in a skipping run.

Supported: every deterministic fixed-step solver whose steps each evaluate the network once, at the step's
start (DDIM, DPM-Solver++(2M/3M), UniPC, DEIS, iPNDM, EVODiff, Euler, ...): then the evaluations are the
trajectory. Multi-stage solvers (Heun, RK4, DPM-Solver-2/3, ...) evaluate off the trajectory and are refused.
SADA's token-wise form (caching attention tokens inside a transformer) needs the network's internals and is
not offered: pfode sees only the network's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_int

__all__ = ["SADA", "resolve_skip", "check_supported", "SkippingEvaluator", "SKIPS"]

#: names accepted by ``skip=``
SKIPS = ("sada",)

SADA_PAPER = "Jiang et al., SADA: Stability-guided Adaptive Diffusion Acceleration, ICML 2025"


@dataclass(frozen=True)
class SADA:
    """SADA's step-wise skipping policy (Jiang et al., ICML 2025); pass as ``skip=`` to :func:`pfode.sample`.

    Args:
        threshold: skip where the stability correlation ``c_k`` (in ``[-1, 1]``, see :mod:`pfode.skipping`) is
            at most this (default 0, the paper's sign test); ``-math.inf`` never skips, 1 skips wherever allowed.
        max_consecutive: at most this many skips in a row (default 4, the paper's ``max_interval``).
        start, end: the acceleration window as fractions of the steps: step ``k`` may be skipped when
            ``round(start n) <= k < round(end n)`` (defaults 0.2 and 0.94, the paper's steps 10-47 of 50).
    """

    threshold: float = 0.0
    max_consecutive: int = 4
    start: float = 0.2
    end: float = 0.94

    paper = SADA_PAPER

    def __post_init__(self):
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or t > 1:
            raise ValueError(f"threshold={t!r} must be a number <= 1 (-math.inf never skips)")
        check_int("max_consecutive", self.max_consecutive, 1)
        for name in ("start", "end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} must be a fraction of the steps in [0, 1]")
        if self.start >= self.end:
            raise ValueError(f"start={self.start!r} must be below end={self.end!r}")

    def window(self, n: int) -> tuple[int, int]:
        """The steps ``[lo, hi)`` of an ``n``-step run where skipping is allowed."""
        return round(self.start * n), round(self.end * n)


def resolve_skip(skip) -> SADA | None:
    """``skip=`` as a policy: ``None``, ``"sada"`` (default options) or a :class:`SADA`."""
    if skip is None or isinstance(skip, SADA):
        return skip
    if isinstance(skip, str):
        if skip not in SKIPS:
            raise ValueError(f"skip={skip!r} is unknown; valid values: {', '.join(SKIPS)} (or a pfode.skipping.SADA)")
        return SADA()
    raise TypeError(f"skip must be None, 'sada' or a pfode.skipping.SADA, got {type(skip).__name__}")


def check_supported(policy: SADA, solver, plan) -> None:
    """Raise ``ValueError`` naming the solver and ``skip`` unless every step of ``plan`` evaluates once, at its
    start, without noise."""
    name = getattr(solver, "name", type(solver).__name__)
    if solver.adaptive or plan is None:
        raise ValueError(f"skip='sada' needs a fixed-step solver; solver {name!r} chooses its own steps")
    if solver.stochastic:
        raise ValueError(f"skip='sada' needs a deterministic (ODE) solver; solver {name!r} draws noise")
    multi = [st.evals for st in plan if st.evals != 1]
    if multi:
        raise ValueError(
            f"skip='sada' needs a solver that evaluates the network once per step, at the step's start (e.g. "
            f"'dpm++2m', 'unipc', 'ddim', 'evodiff', 'euler'); solver {name!r} spends {max(multi)} evaluations per step"
        )


def _ab3_weights(s_new: float, nodes: tuple[float, float, float]) -> tuple[float, float, float]:
    """``w_j = int_{nodes[0]}^{s_new} L_j(s) ds`` for the Lagrange basis on ``nodes`` (exact, float64)."""
    h = s_new - nodes[0]
    u = [(v - nodes[0]) / h for v in nodes]  # the step is [0, 1] in u
    out = []
    for j in range(3):
        others = [u[m] for m in range(3) if m != j]
        coef = np.polynomial.polynomial.polyfromroots(others) / np.prod([u[j] - o for o in others])
        integ = np.polynomial.polynomial.polyint(coef)
        out.append(h * float(np.polynomial.polynomial.polyval(1.0, integ)))
    return out[0], out[1], out[2]


class SkippingEvaluator:
    """An :class:`~pfode.solvers.base.Evaluator` wrapped with a :class:`SADA` policy: ``ev(x, k) -> x0_hat``, making
    the network call or replacing it. ``count`` counts the calls made; ``skipped`` lists the grid steps whose
    evaluation was replaced; ``stability`` maps each step where the criterion was read to ``c_k``.

    A fresh one is made per sampling call (it holds the trajectory's recent gradients).
    """

    def __init__(self, ev, table, policy: SADA, n_steps: int):
        self.ev, self.table, self.policy = ev, table, policy
        self.lo, self.hi = policy.window(n_steps)
        self.skipped: list[int] = []
        self.stability: dict[int, float] = {}
        self._hist: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (k, y_k, eps_k), newest last
        self._run = 0
        self._weights: dict[int, tuple[float, float, float]] = {}

    @property
    def count(self) -> int:
        return self.ev.count

    def _point(self, k: int):
        """``(alpha, sigma, s)`` at point ``k`` if it is a grid point with ``alpha, sigma > 0``, else ``None``."""
        if k > self.table.n_steps:
            return None  # an intermediate point: not on the trajectory
        p = self.table[k]
        if not (p.alpha > 0 and p.sigma > 0 and math.isfinite(p.s)):
            return None
        return p.alpha, p.sigma, p.s

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        pt = self._point(k)
        if pt is None:
            self._hist.clear()
            self._run = 0
            return self.ev(x, k)
        alpha, sigma, s = pt
        if self._hist and self._hist[-1][0] != k - 1:
            self._hist.clear()  # not the next point of the trajectory: start over
        wide = torch.promote_types(x.dtype, torch.float32)
        y = x.to(wide) / alpha
        if len(self._hist) == 3 and self.lo <= k < self.hi and self._run < self.policy.max_consecutive:
            (_, _, e3), (_, _, e2), (_, y1, e1) = self._hist
            w = self._weights.get(k)
            if w is None:
                w = self._weights[k] = _ab3_weights(s, tuple(self.table[k - j].s for j in (1, 2, 3)))
            y_pred = y1 + w[0] * e1 + w[1] * e2 + w[2] * e3
            r = y - y_pred
            d2 = e1 - 2.0 * e2 + e3
            den = (r.norm() * d2.norm()).clamp_min(torch.finfo(wide).tiny)
            c = float((r * d2).sum() / den)  # the one host read of a skipping step
            self.stability[k] = c
            if c <= self.policy.threshold:
                d = y_pred - s * e1  # x0_hat extrapolated: the last gradient at the predicted state
                self.skipped.append(k)
                self._run += 1
                self._push(k, y, (y - d) / s)
                return d.to(x.dtype)
        d = self.ev(x, k)
        self._run = 0
        self._push(k, y, (y - d.to(wide)) / s)
        return d

    def _push(self, k, y, e):
        self._hist.append((k, y, e))
        del self._hist[:-3]
