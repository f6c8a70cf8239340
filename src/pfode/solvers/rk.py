"""Explicit Runge-Kutta solvers (Euler, Heun, midpoint, RK4) in ``s = sigma/alpha`` or in path time.

``variable="s"`` (default) integrates ``dy/ds = eps_hat`` with ``y = x / alpha`` -- the ODE every
path shares, as EDM recommends; it is smooth whatever the path's time labelling (even the
piecewise-linear DDPM table), and Euler there equals DDIM. ``variable="t"`` integrates
``dx/dt = alpha' x0_hat + sigma' eps_hat`` in the path's own time, the flow-matching convention; it
can start at pure noise (``alpha = 0``, e.g. ``t = 1`` on :class:`~pfode.paths.Linear`).
"""

from __future__ import annotations

import torch

from .._checks import check_choice
from .base import Solver, Step, Table, register

__all__ = ["RK", "Euler", "Heun", "Midpoint", "RK4"]


class RK(Solver):
    """An explicit Runge-Kutta method given by its Butcher tableau ``(c, a, b)``; ``len(b)`` evaluations per step."""

    paper = "Butcher, Numerical Methods for Ordinary Differential Equations (2016)"

    def __init__(self, c, a, b, order: int, name: str, variable: str = "s"):
        self.c, self.a, self.b = list(c), [list(r) for r in a], list(b)
        self.order = order
        self.name = name
        self.evals_per_step = len(self.b)
        self.variable = check_choice("variable", variable, ("s", "t"))
        self.needs_finite_lam = self.variable == "s"

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p, q = table[i], table[i + 1]
        idx = []
        for c in self.c:
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
            # stage k: x_k = alpha_k y_k, K_k = (y_k - D_k) / s_k
            info = {"h": q.s - p.s, "a": [pt.alpha for pt in pts], "inv_s": [1.0 / pt.s for pt in pts]}
            info.update(y_in=1.0 / p.alpha, y_out=q.alpha)
        else:
            # F = dx/dt = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) D
            info = {
                "h": q.t - p.t,
                "fx": [pt.d_sigma / pt.sigma for pt in pts],
                "fd": [pt.d_alpha - pt.d_sigma * pt.alpha / pt.sigma for pt in pts],
            }
        info["idx"] = idx
        return Step(i, self.order, len(self.b), data=info)

    def step(self, ev, x, hist, st, table, noise=None):
        if st.zero:
            return self.zero_step(ev, x, hist, st, table)
        c = st.data
        h = c["h"]
        ks = []
        d0 = None
        y = x * c["y_in"] if self.variable == "s" else x
        for k, row in enumerate(self.a):
            yk = y
            for w, kj in zip(row, ks):
                if w != 0.0:
                    yk = torch.add(yk, kj, alpha=h * w)
            if self.variable == "s":
                xk = x if k == 0 else (yk * c["a"][k] if c["a"][k] != 1.0 else yk)
                d = ev(xk, c["idx"][k])
                ks.append(torch.sub(yk, d).mul_(c["inv_s"][k]))
            else:
                d = ev(yk, c["idx"][k])
                ks.append(torch.add(yk * c["fx"][k], d, alpha=c["fd"][k]))
            if k == 0:
                d0 = d
        for w, kj in zip(self.b, ks):
            if w != 0.0:
                y = torch.add(y, kj, alpha=h * w)
        if self.variable == "s":
            y = y * c["y_out"]
        return y, hist, d0


def Euler(variable: str = "s") -> RK:
    """Euler's method, first order, 1 evaluation per step (in ``s`` it is DDIM)."""
    return RK([0.0], [[]], [1.0], 1, "euler", variable)


def Heun(variable: str = "s") -> RK:
    """Heun's second-order method as in EDM (Karras et al., 2022), 2 evaluations per step.

    The step to zero noise is Euler's (one evaluation), as in EDM.
    """
    r = RK([0.0, 1.0], [[], [1.0]], [0.5, 0.5], 2, "heun", variable)
    r.paper = "Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models, NeurIPS 2022"
    return r


def Midpoint(variable: str = "s") -> RK:
    """Explicit midpoint method, second order, 2 evaluations per step."""
    return RK([0.0, 0.5], [[], [0.5]], [0.0, 1.0], 2, "midpoint", variable)


def RK4(variable: str = "s") -> RK:
    """Classic fourth-order Runge-Kutta, 4 evaluations per step."""
    return RK(
        [0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], 4, "rk4", variable
    )


register("euler", Euler)
register("heun", Heun)
register("midpoint", Midpoint)
register("rk4", RK4)
