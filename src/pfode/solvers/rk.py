"""Explicit Runge-Kutta solvers (Euler, Heun, midpoint, RK4) in ``s = sigma/alpha`` or in path time.

``variable="s"`` (default) integrates ``dy/ds = eps_hat`` with ``y = x / alpha`` -- the ODE every
path shares, as EDM recommends; it is smooth whatever the path's time labelling (even the
piecewise-linear DDPM table), and Euler there equals DDIM. ``variable="t"`` integrates
``dx/dt = alpha' x0_hat + sigma' eps_hat`` in the path's own time, the flow-matching convention; it
can start at pure noise (``alpha = 0``, e.g. ``t = 1`` on :class:`~pfode.paths.Linear`), and on a grid
that ends at zero noise where ``dx/dt`` is regular (Linear, Trig, EDM) its last step is a full step, as
flow-matching samplers take it: stages inside the step evaluate at ``sigma > 0``, and a stage at the end
point (Heun, RK4) receives ``dx/dt`` there from an eps, v or velocity prediction (otherwise, and wherever
the ODE is singular at zero noise, the last step is the denoising step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice
from ..engine import EULER, HEUN, MIDPOINT, Tableau, rk_stages
from ..engine import RK4 as RK4_TABLEAU
from .base import Solver, Step, Table, register
from .fused import lin

__all__ = ["RK", "Euler", "Heun", "Midpoint", "RK4"]


@dataclass(frozen=True, kw_only=True)
class RKStep(Step):
    """One Runge-Kutta step: its size ``h`` in the variable, the point of each stage, and per stage
    ``(p, q)``: in ``s``, ``x_k = p y_k`` and ``K_k = (y_k - D_k) q``; in ``t``,
    ``K_k = p x_k + q D_k`` (``p = sigma'/sigma``, ``q = alpha' - sigma' alpha / sigma``), or ``None`` for a
    stage at zero noise, whose evaluation is ``K_k = dx/dt`` itself. ``y_in``/``y_out`` scale ``x`` to
    ``y = x / alpha`` and back."""

    h: float
    idx: tuple[int, ...]
    coef: tuple[tuple[float, float] | None, ...]
    y_in: float = 1.0
    y_out: float = 1.0


class RK(Solver):
    """An explicit Runge-Kutta method given by its :class:`~pfode.engine.Tableau`; ``stages`` evaluations per step.

    ``variable="s"`` integrates ``dy/ds = (y - x0_hat) / s`` with ``y = x / alpha``; ``"t"`` integrates
    ``dx/dt`` in path time. The stepping itself is :func:`pfode.engine.rk_stages`.
    """

    paper = "Butcher, Numerical Methods for Ordinary Differential Equations (2016)"

    def __init__(self, tableau: Tableau, variable: str = "s", name: str | None = None, paper: str | None = None):
        if not isinstance(tableau, Tableau):
            raise TypeError(f"tableau must be a pfode.engine.Tableau, got {type(tableau).__name__}")
        self.tableau = tableau
        self.order = tableau.order
        self.name = name or tableau.name
        self.evals_per_step = tableau.stages
        self.variable = check_choice("variable", variable, ("s", "t"))
        self.needs_finite_lam = self.variable == "s"
        if paper:
            self.paper = paper

    def steps_to_zero(self, table: Table, i: int) -> bool:
        """In ``t``, a full step to zero noise where the ODE is regular there and every stage can be evaluated."""
        if self.variable != "t" or not table[i + 1].regular:
            return False
        return table.velocity_at_zero or all(c < 1.0 for c in self.tableau.c)

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p, q = table[i], table[i + 1]
        idx = []
        for c in self.tableau.c:
            if c == 0.0:
                idx.append(i)
            elif c == 1.0:
                idx.append(i + 1)
            elif self.variable == "s":
                idx.append(table.add_s(p.s + c * (q.s - p.s)))
            else:
                idx.append(table.add_t(p.t + c * (q.t - p.t)))
        pts = [table[k] for k in idx]
        if self.variable == "s":
            coef = tuple((pt.alpha, 1.0 / pt.s) for pt in pts)
            return RKStep(i=i, order=self.order, evals=self.evals_per_step, h=q.s - p.s, idx=tuple(idx), coef=coef,
                          y_in=1.0 / p.alpha, y_out=q.alpha)
        coef = tuple(
            None if pt.zero else (pt.d_sigma / pt.sigma, pt.d_alpha - pt.d_sigma * pt.alpha / pt.sigma) for pt in pts
        )
        return RKStep(i=i, order=self.order, evals=self.evals_per_step, h=q.t - p.t, idx=tuple(idx), coef=coef)

    def step(self, x, hist, st, noise=None):
        in_s = self.variable == "s"
        y = x * st.y_in if in_s else x
        stages = rk_stages(self.tableau, [y], [st.h])
        d0 = None
        try:
            k, (yk,) = next(stages)
            while True:
                ck = st.coef[k]
                if in_s:
                    pk, qk = ck
                    xk = x if k == 0 else (yk * pk if pk != 1.0 else yk)
                    d = yield st.idx[k], xk
                    kk = torch.sub(yk, d).mul_(qk)
                else:
                    d = yield st.idx[k], yk
                    kk = d if ck is None else torch.add(yk * ck[0], d, alpha=ck[1])
                if k == 0:
                    d0 = d
                k, (yk,) = stages.send([kk])
        except StopIteration as stop:
            (y,), _ = stop.value
        return (y * st.y_out if in_s else y), hist, d0

    def fuse_step(self, b, st, hist):
        # stage k's derivative: in s, eps_hat (dy/ds); in t, dx/dt; every stage input a combination of the state
        # and the earlier stages' inputs and outputs
        tab, in_s = self.tableau, self.variable == "s"
        y = {b.x: st.y_in if in_s else 1.0}
        ks: list[dict] = []
        for k in range(tab.stages):
            if k == 0:
                xr = b.x
            else:
                yk = lin((1.0, y), *[(st.h * a, kj) for a, kj in zip(tab.a[k], ks)])
                xr = b.comb(lin((st.coef[k][0], yk)) if in_s else yk)
            out = b.eval(st.idx[k], xr)
            ks.append(b.eps(st.idx[k], xr, out) if in_s else b.vel(st.idx[k], xr, out))
        y_next = lin((1.0, y), *[(st.h * w, kj) for w, kj in zip(tab.b, ks)])
        return (lin((st.y_out, y_next)) if in_s else y_next), hist


def Euler(variable: str = "s") -> RK:
    """Euler's method, first order, 1 evaluation per step (in ``s`` it is DDIM)."""
    return RK(EULER, variable)


def Heun(variable: str = "s") -> RK:
    """Heun's second-order method as in EDM (Karras et al., 2022), 2 evaluations per step.

    The step to zero noise is Euler's (one evaluation), as in EDM.
    """
    return RK(HEUN, variable, paper="Karras et al., Elucidating the Design Space of Diffusion-Based Generative "
              "Models, NeurIPS 2022")


def Midpoint(variable: str = "s") -> RK:
    """Explicit midpoint method, second order, 2 evaluations per step."""
    return RK(MIDPOINT, variable)


def RK4(variable: str = "s") -> RK:
    """Classic fourth-order Runge-Kutta, 4 evaluations per step."""
    return RK(RK4_TABLEAU, variable)


register("euler", Euler)
register("heun", Heun)
register("midpoint", Midpoint)
register("rk4", RK4)
