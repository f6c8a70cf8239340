"""Folded steps: each step of a fixed-step solver as the fewest tensor operations its algebra allows.

A solver step is linear in its tensors with host-float coefficients: the state ``x``, the network outputs
``out`` of its evaluations, the values it keeps from earlier steps and (for stochastic steps) noise. The
prediction's conversion ``x0_hat = px x + po out`` (and ``eps_hat``, ``dx/dt`` likewise) is linear too, so
it need not be materialised: a :class:`Builder` composes a step symbolically, on the host and once per grid,
as linear combinations ``{register: coefficient}``, merges the terms of each tensor (the state enters both
the state term and ``x0_hat``), drops zero coefficients (an eps network's ``eps_hat`` is its output) and
emits a short program of three instructions:

* ``COMB``: ``c_0 r_0 + c_1 r_1 + ...`` as one ``torch.add(..., alpha=)`` chain (``x * c_0`` first, unless
  some coefficient is 1), in place on the fresh result;
* ``EVAL``: the network at a point of the table on a register;
* ``NOISE``: the solver's next standard-normal draw.

Values kept for later steps are stored scaled by their largest coefficient (one ``add`` instead of a multiply
and an add) and the scale is folded into the coefficients of the step that reads them.

:meth:`pfode.solvers.Solver.fuse_step` writes a solver's step with the builder; :func:`fuse` builds the
folded plan of a whole grid and :func:`execute` runs it. The unfolded steps (:meth:`Solver.update`,
:meth:`Solver.step`) stay the reference: the diffusers scheduler, the adjoint and callbacks drive them, and
``tests/test_solvers_fused.py`` checks that both agree to 1e-12 in float64 for every solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..predictions import get_prediction, velocity, velocity_at_zero

__all__ = ["Builder", "FusedStep", "Conversions", "lin", "fuse", "execute", "COMB", "EVAL", "NOISE"]

COMB, EVAL, NOISE = 0, 1, 2


def lin(*pairs) -> dict:
    """``sum c * terms`` of ``(c, {register: coefficient})`` pairs, merged by register (zeros dropped)."""
    out: dict = {}
    for c, terms in pairs:
        if c == 0.0:
            continue
        for r, v in terms.items():
            out[r] = out.get(r, 0.0) + c * v
    return {r: v for r, v in out.items() if v != 0.0}


class Conversions:
    """Per point of a :class:`~pfode.solvers.base.Table`, the host coefficients that turn a network output
    ``out`` at state ``x`` into ``x0_hat``, ``eps_hat`` and ``dx/dt`` (``nan`` where undetermined)."""

    def __init__(self, prediction, table):
        pred = get_prediction(prediction)
        nan2 = (math.nan, math.nan)
        self.x0, self.eps, self.vel = [], [], []
        for p in table.points:
            if p.zero:  # dx/dt where the prediction determines it (see Table), else never evaluated
                self.x0.append(nan2)
                self.eps.append(nan2)
                known = table.velocity_at_zero and p.regular
                self.vel.append(velocity_at_zero(pred, p) if known else nan2)
                continue
            c = (p.alpha, p.sigma, p.d_alpha, p.d_sigma)
            x0, eps = _coefficients(pred.to_x0, c), _coefficients(pred.to_eps, c)
            self.x0.append(x0)
            self.eps.append(eps)
            regular = math.isfinite(p.d_alpha) and math.isfinite(p.d_sigma)
            self.vel.append(velocity(p, x0, eps) if regular else nan2)


def _coefficients(conv, c) -> tuple[float, float]:
    try:
        a, b = conv(*c)
    except ZeroDivisionError:  # e.g. eps at alpha = 0: x0_hat is undetermined (non-finite if evaluated)
        return (math.nan, math.nan)
    return float(a), float(b)


@dataclass(frozen=True)
class FusedStep:
    """The folded program of one step: instructions appending registers to ``[x, *history]``, the register of
    the new state and those kept for the next step."""

    ops: tuple
    x_out: int
    hist_out: tuple[int, ...]
    evals: int


class Builder:
    """Composes one folded step. Registers ``0`` (the state) and ``1..n_hist`` (kept values) exist at the start;
    :meth:`eval`, :meth:`comb` and :meth:`noise` append instructions and return the new register."""

    def __init__(self, conv: Conversions, n_hist: int):
        self.conv = conv
        self.ops: list = []
        self.n = 1 + n_hist
        self.x = 0
        self.evals = 0

    def _new(self, op) -> int:
        self.ops.append(op)
        self.n += 1
        return self.n - 1

    def eval(self, k: int, reg: int) -> int:
        """The network's output at point ``k`` on register ``reg``."""
        self.evals += 1
        return self._new((EVAL, k, reg))

    def noise(self) -> int:
        """The next standard-normal draw."""
        return self._new((NOISE,))

    def comb(self, terms: dict) -> int:
        """A register holding ``sum c r`` (no instruction for a single term with coefficient 1)."""
        items = [(r, c) for r, c in terms.items() if c != 0.0]
        if not items:
            raise ValueError("a folded combination has no terms")
        if len(items) == 1 and items[0][1] == 1.0:
            return items[0][0]
        for j, (_, c) in enumerate(items):
            if c == 1.0:  # start from the tensor itself: one multiply fewer
                items.insert(0, items.pop(j))
                break
        return self._new((COMB, tuple(items)))

    def keep(self, terms: dict) -> dict:
        """Materialise ``terms`` for a later step as one register scaled by the largest coefficient; returns the
        value as ``{register: scale}``."""
        terms = {r: c for r, c in terms.items() if c != 0.0}
        if len(terms) == 1:
            return dict(terms)
        lead = max(terms.values(), key=abs)
        return {self.comb({r: c / lead for r, c in terms.items()}): lead}

    # the prediction's conversions at point k of a network output `out` on state register `xr`
    def x0(self, k: int, xr: int, out: int) -> dict:
        return lin((self.conv.x0[k][0], {xr: 1.0}), (self.conv.x0[k][1], {out: 1.0}))

    def eps(self, k: int, xr: int, out: int) -> dict:
        return lin((self.conv.eps[k][0], {xr: 1.0}), (self.conv.eps[k][1], {out: 1.0}))

    def vel(self, k: int, xr: int, out: int) -> dict:
        return lin((self.conv.vel[k][0], {xr: 1.0}), (self.conv.vel[k][1], {out: 1.0}))


def _zero_step(b: Builder, st) -> dict:
    out = b.eval(st.i, b.x)
    return lin((st.alpha, b.x0(st.i, b.x, out)))


def fuse(solver, plan: list, table, prediction) -> list[FusedStep] | None:
    """The folded plan of ``plan`` (``None`` if ``solver`` has no :meth:`~pfode.solvers.Solver.fuse_step`)."""
    if not getattr(solver, "fusable", False):
        return None
    conv = Conversions(prediction, table)
    out: list[FusedStep] = []
    hist: tuple = ()
    # whether a later step reads kept values (a step that reads none still passes them on)
    later = [False] * len(plan)
    for n in range(len(plan) - 2, -1, -1):
        nxt = plan[n + 1]
        later[n] = later[n + 1] or (not nxt.zero and nxt.history > 0)
    for n, st in enumerate(plan):
        b = Builder(conv, len(hist))
        if st.zero:
            x_terms, new_hist = _zero_step(b, st), hist
        else:
            # history at the step's start: slot j is register 1 + j, scaled as the previous step stored it
            start = tuple({1 + j: scale} for j, scale in enumerate(hist))
            x_terms, new_hist = solver.fuse_step(b, st, start)
        x_reg = b.comb(x_terms)
        kept = [b.keep(v) for v in new_hist] if later[n] else []
        hist = tuple(next(iter(v.values())) for v in kept)
        regs = tuple(next(iter(v)) for v in kept)
        out.append(FusedStep(tuple(b.ops), x_reg, regs, b.evals))
    return out


def _comb(regs: list, terms: tuple) -> torch.Tensor:
    (r0, c0), rest = terms[0], terms[1:]
    if not rest:
        return regs[r0] * c0
    r1, c1 = rest[0]
    out = torch.add(regs[r0] if c0 == 1.0 else regs[r0] * c0, regs[r1], alpha=c1)
    for r, c in rest[1:]:
        out.add_(regs[r], alpha=c)
    return out


def execute(fplan: list[FusedStep], x: torch.Tensor, raw, noise=None) -> torch.Tensor:
    """Run a folded plan from ``x``; ``raw(x, k)`` is the network's output at point ``k``, ``noise()`` the
    stochastic solvers' draw."""
    hist: tuple = ()
    for fs in fplan:
        regs = [x, *hist]
        for op in fs.ops:
            if op[0] == COMB:
                regs.append(_comb(regs, op[1]))
            elif op[0] == EVAL:
                regs.append(raw(regs[op[2]], op[1]))
            else:
                regs.append(noise())
        x = regs[fs.x_out]
        hist = tuple(regs[r] for r in fs.hist_out)
    return x
