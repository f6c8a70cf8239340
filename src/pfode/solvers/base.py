"""What every solver shares: points of a schedule, step plans, the evaluator and the registry.

A solver never sees a path or a prediction type. It sees :class:`Point` s (``t, alpha, sigma,
lam`` and derivatives, as host floats computed once per grid in float64) and an evaluator
``ev(x, k) -> x0_hat`` for point ``k``. ``plan`` turns a schedule into per-step coefficients on the
host; ``step`` applies one of them with tensor ops only, taking and returning its history
explicitly, so one solver object serves any number of calls, batch sizes and threads.

A step whose end has ``sigma = 0`` is always the denoising step ``x_next = alpha_next * x0_hat(x)``
(first order, one evaluation): it is where a ``lam``-based update would divide by zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import as_f64

__all__ = ["Point", "Table", "Step", "Solver", "register", "available", "get", "describe"]


@dataclass(frozen=True)
class Point:
    """A time of the schedule with its path coefficients and half log-SNR (host float64)."""

    t: float
    alpha: float
    sigma: float
    d_alpha: float
    d_sigma: float
    lam: float

    @property
    def s(self) -> float:
        """``sigma / alpha``."""
        return math.inf if self.alpha == 0 else self.sigma / self.alpha

    @property
    def zero(self) -> bool:
        return self.sigma == 0.0


def _points(path, t: torch.Tensor) -> list[Point]:
    t = as_f64(t).cpu()
    cols = [v.tolist() for v in path.coefficients(t)]
    out = []
    for ti, a, s, da, ds in zip(t.tolist(), *cols):
        lam = math.inf if s == 0 else (-math.inf if a == 0 else math.log(a) - math.log(s))
        out.append(Point(ti, a, s, da, ds, lam))
    return out


class Table:
    """The points of one sampling call: the grid first, then intermediate points solvers add.

    Args:
        path: the path (for intermediate times).
        times: grid times (float64, decreasing).
        zero_end: append the virtual zero-noise point (``alpha = 1, sigma = 0``) after the grid.
    """

    def __init__(self, path, times: torch.Tensor, zero_end: bool):
        self.path = path
        self.points: list[Point] = _points(path, times)
        self.n_steps = len(self.points) - 1
        if zero_end:
            self.append_zero()

    def append_zero(self):
        """Append the zero-noise end point (``alpha = 1``, ``sigma = 0``) as the last grid point."""
        if len(self.points) != self.n_steps + 1:
            raise RuntimeError("append_zero must come before intermediate points are added")
        self.points.append(Point(float(self.path.t_lo), 1.0, 0.0, 0.0, 0.0, math.inf))
        self.n_steps += 1

    def __getitem__(self, k: int) -> Point:
        return self.points[k]

    def __len__(self) -> int:
        return len(self.points)

    def add_lam(self, lam: float) -> int:
        """Register the point at half log-SNR ``lam``; return its index."""
        return self.add_t(float(self.path.t_of_lam(torch.tensor(lam, dtype=torch.float64))))

    def add_s(self, s: float) -> int:
        """Register the point where ``sigma/alpha = s``; return its index."""
        return self.add_lam(-math.log(s))

    def add_t(self, t: float) -> int:
        """Register the point at path time ``t``; return its index."""
        self.points.extend(_points(self.path, torch.tensor([t], dtype=torch.float64)))
        return len(self.points) - 1


@dataclass
class Step:
    """Host coefficients of one step from grid point ``i`` to ``i + 1``.

    ``evals`` is the number of network evaluations the step spends; ``data`` holds whatever the
    solver precomputed (floats, indices of intermediate points).
    """

    i: int
    order: int
    evals: int
    zero: bool = False
    data: dict[str, Any] = field(default_factory=dict)


class Solver:
    """Base class. Subclasses set ``name``, ``order``, ``evals_per_step``, ``paper`` and implement
    ``plan_step`` and ``step``.

    ``order`` is the global order of accuracy of the method (on fine grids). ``evals_per_step`` is
    the network evaluations one full step costs; a step to zero noise always costs one.
    """

    name: str = "solver"
    order: int = 1
    evals_per_step: int = 1
    paper: str = ""
    stochastic: bool = False
    multistep: bool = False
    #: whether the solver integrates in lam (needs alpha > 0 and sigma > 0 at step starts)
    needs_finite_lam: bool = True

    # -- planning (host, float64) -----------------------------------------------------------
    def plan(self, table: Table) -> list[Step]:
        """Coefficients of every step of ``table`` (computed once per grid, on the host)."""
        out = []
        n = table.n_steps
        for i in range(n):
            p, q = table[i], table[i + 1]
            if p.zero:
                raise ValueError(f"grid reaches zero noise at step {i} (t={p.t:g}) before its end")
            if self.needs_finite_lam and not math.isfinite(p.lam):
                raise ValueError(
                    f"solver {self.name!r} needs alpha > 0 and sigma > 0 at t={p.t:g} (lam={p.lam}); start the "
                    "grid inside the path's range (e.g. t_max < 1 on Linear) or use an RK solver with variable='t'"
                )
            if q.zero:
                out.append(Step(i, 1, 1, zero=True))
            else:
                out.append(self.plan_step(table, i, n))
        return out

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        raise NotImplementedError

    def evals(self, steps: int, zero_end: bool) -> int:
        """Network evaluations for a grid of ``steps`` steps (plus the step to zero noise if ``zero_end``)."""
        return self.evals_per_step * steps + (1 if zero_end else 0)

    def for_nfe(self, nfe: int, zero_end: bool) -> tuple[int, Solver]:
        """Grid steps (and the solver to use) that spend exactly ``nfe`` evaluations, or a clear error."""
        for steps in range(1, nfe + 1):
            if self.evals(steps, zero_end) == nfe:
                return steps, self
        options = sorted({self.evals(k, zero_end) for k in range(1, nfe + 2)})
        near = [v for v in options if abs(v - nfe) <= 2 * self.evals_per_step + 1]
        extra = " plus 1 for the final step to zero noise" if zero_end else ""
        raise ValueError(
            f"solver {self.name!r} spends {self.evals_per_step} evaluation(s) per step{extra}, so nfe={nfe} "
            f"cannot be spent exactly; nearby possible values: {near or options[:3]}"
        )

    # -- stepping (tensor ops only) ---------------------------------------------------------
    def step(self, ev: Evaluator, x: torch.Tensor, hist: Any, st: Step, table: Table):
        """Return ``(x_next, hist, x0_hat_at_start)``."""
        raise NotImplementedError

    def zero_step(self, ev: Evaluator, x, hist, st: Step, table: Table, d: torch.Tensor | None = None):
        """The denoising step to ``sigma = 0``: ``alpha_next * x0_hat(x)``."""
        if d is None:
            d = ev(x, st.i)
        a = table[st.i + 1].alpha
        return (d if a == 1.0 else d * a), hist, d

    def describe(self) -> dict:
        return {
            "name": self.name,
            "order": self.order,
            "evals_per_step": self.evals_per_step,
            "stochastic": self.stochastic,
            "paper": self.paper,
        }

    def __repr__(self):
        return f"{type(self).__name__}(order={self.order})"


class Evaluator:
    """``ev(x, k) -> x0_hat`` at point ``k`` of a :class:`Table`; counts evaluations on the host.

    Network time tensors for every point are built once (one host-to-device copy); the loop only
    indexes a Python list.
    """

    def __init__(self, den, table: Table, x: torch.Tensor, cond: dict | None, times=None):
        self.den, self.table, self.cond = den, table, cond
        self._t_net, self._coef = times if times is not None else self.times(den, table, x)
        self.count = 0

    @staticmethod
    def times(den, table: Table, x: torch.Tensor):
        """Network-time tensors (``[B]`` views, one per point) and host coefficients for ``x``'s batch and device."""
        pts = table.points
        tn = den.time_tensor(torch.tensor([p.t for p in pts], dtype=torch.float64), x)
        return [v.expand(x.shape[0]) for v in tn.unbind(0)], [(p.alpha, p.sigma, p.d_alpha, p.d_sigma) for p in pts]

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        self.count += 1
        return self.den.x0(x, self._t_net[k], *self._coef[k], cond=self.cond)


_REGISTRY: dict[str, tuple[Callable[..., Solver], dict]] = {}


def register(name: str, factory: Callable[..., Solver], **defaults):
    """Register ``factory(**defaults, **options)`` under ``name``."""
    _REGISTRY[name] = (factory, defaults)


def available() -> list[str]:
    """Names of the registered solvers."""
    return sorted(_REGISTRY)


def get(name: str | Solver, **options) -> Solver:
    """Build a solver by name with options, e.g. ``get("unipc", order=3, variant="bh2")``."""
    if isinstance(name, Solver):
        if options:
            raise ValueError("options can only be given with a solver name, not a solver object")
        return name
    if not isinstance(name, str):
        raise TypeError(f"solver must be a name or a pfode Solver object, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"solver={name!r} is unknown; valid names: {', '.join(available())}")
    factory, defaults = _REGISTRY[name]
    return factory(**{**defaults, **options})


def describe() -> list[dict]:
    """One dict per registered solver: name, order, evaluations per step, stochastic, paper."""
    return [{**get(n).describe(), "name": n} for n in available()]
