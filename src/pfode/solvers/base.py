"""What every solver shares: points of a schedule, step plans, the evaluator and the registry.

A solver never sees a path or a prediction type. It sees :class:`Point` s (``t, alpha, sigma,
lam`` and derivatives, as host floats computed once per grid in float64). ``plan`` turns a schedule
into frozen per-step coefficients on the host; ``step`` is a step program (a generator) that applies
one of them with tensor ops only: it yields ``(k, x)`` where it needs ``x0_hat`` at point ``k``, and
takes and returns its history explicitly, so one solver object serves any number of calls, batch
sizes and threads, and any driver (:func:`pfode.engine.drive` with an :class:`Evaluator`, the
diffusers scheduler one evaluation at a time, the adjoint's recomputation) runs the same code.

A step whose end has ``sigma = 0`` is the denoising step ``x_next = alpha_next * x0_hat(x)`` (first
order, one evaluation): it is where a ``lam``-based update would divide by zero. The exception is a solver
stepping in path time (``variable="t"``) to a grid point where the ODE ``dx/dt`` is regular (the path's
derivatives are finite there, as on Linear, Trig and EDM): :meth:`Solver.steps_to_zero` lets it take a
full step, whose stages evaluate at ``sigma > 0`` or, where the prediction determines ``dx/dt`` at zero
noise (:data:`pfode.predictions.VELOCITY_AT_ZERO`), receive ``dx/dt`` itself at the end point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import as_f64
from ..engine import drive
from ..predictions import fold
from .fused import Conversions

__all__ = [
    "Point",
    "Table",
    "Step",
    "StepProgram",
    "SolverBase",
    "Solver",
    "AdaptiveSolver",
    "Evaluator",
    "run",
    "register",
    "available",
    "get",
    "describe",
]


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

    @property
    def regular(self) -> bool:
        """Whether the path's ODE in ``t`` is regular here: finite derivatives with ``sigma`` increasing (a
        virtual zero-noise end point has none)."""
        return math.isfinite(self.d_alpha) and math.isfinite(self.d_sigma) and self.d_sigma > 0


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
        velocity_at_zero: whether the evaluator returns ``dx/dt`` at a zero-noise point of the grid (the
            denoiser's prediction determines it there, :data:`pfode.predictions.VELOCITY_AT_ZERO`), so that a
            stage may evaluate at that point.
    """

    def __init__(self, path, times: torch.Tensor, zero_end: bool, velocity_at_zero: bool = False):
        self.path = path
        self.velocity_at_zero = bool(velocity_at_zero)
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


@dataclass(frozen=True, kw_only=True)
class Step:
    """The host plan of one step from grid point ``i`` to ``i + 1`` (frozen; solvers subclass it with
    their coefficients).

    ``order``: the step's order of accuracy; ``evals``: network evaluations it spends; ``history``: how
    many values of earlier steps it reads (0 for a single-step update); ``zero``: the denoising step
    to ``sigma = 0``, ``x_next = alpha_next * x0_hat(x)`` (``alpha`` holds ``alpha_next``).
    """

    i: int
    order: int = 1
    evals: int = 1
    history: int = 0
    zero: bool = False
    alpha: float = 1.0


#: A step program: yields ``(point index, state)`` for every evaluation, receives ``x0_hat`` there, and
#: returns ``(x_next, history, x0_hat at the step's start)``.
StepProgram = Generator[tuple[int, torch.Tensor], torch.Tensor, tuple[torch.Tensor, Any, torch.Tensor]]


class SolverBase:
    """What every solver declares: ``name``, ``order`` (the global order of accuracy, as certified by the
    measured convergence order in ``tests/test_solvers.py``), ``evals_per_step``, ``paper``, and its
    capabilities ``stochastic`` (draws noise), ``adaptive`` (chooses its own steps: an
    :class:`AdaptiveSolver`) and ``multistep`` (some step reads values of earlier steps).
    """

    name: str = "solver"
    order: int = 1
    evals_per_step: int = 1
    paper: str = ""
    stochastic: bool = False
    adaptive: bool = False
    multistep: bool = False
    #: whether the solver integrates in lam (needs alpha > 0 and sigma > 0 at step starts)
    needs_finite_lam: bool = True
    #: whether its steps can be folded (:meth:`Solver.fuse_step`); adaptive solvers' cannot
    fusable: bool = False

    def describe(self) -> dict:
        keys = ("name", "order", "evals_per_step", "stochastic", "adaptive", "multistep", "paper")
        return {k: getattr(self, k) for k in keys}

    def __repr__(self):
        return f"{type(self).__name__}(order={self.order})"


class Solver(SolverBase):
    """A fixed-step solver (see :class:`SolverBase` for what it declares).

    It implements :meth:`plan_step` (host, float64, once per grid) and :meth:`step`, a *step program*: a
    generator that yields ``(k, x_k)`` for each network evaluation it needs at point ``k`` of the
    :class:`Table`, receives ``x0_hat(x_k)`` and returns ``(x_next, history, x0_hat at the start)``.
    History is a value passed from step to step (never an attribute), so one solver object serves any
    number of calls, batch sizes and threads. A step to zero noise is always the denoising step
    (:meth:`program` runs it; solvers never see it). ``multistep`` is derived from a probe plan.
    """

    @functools.cached_property
    def multistep(self) -> bool:
        """Whether some step of this solver reads values of earlier steps (derived from a probe plan)."""
        from ..paths import EDM

        table = Table(EDM(), torch.tensor([80.0, 20.0, 5.0, 1.0, 0.25], dtype=torch.float64), False)
        return any(st.history > 0 for st in self.plan(table))

    # -- planning (host, float64) -----------------------------------------------------------
    def plan(self, table: Table) -> list[Step]:
        """The frozen steps of ``table`` (computed once per grid, on the host)."""
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
            if q.zero and not self.steps_to_zero(table, i):
                out.append(Step(i=i, zero=True, alpha=q.alpha))
            else:
                out.append(self.plan_step(table, i, n))
        return out

    def steps_to_zero(self, table: Table, i: int) -> bool:
        """Whether the step from point ``i`` to the zero-noise point ``i + 1`` is a full step of this solver
        (default: no, the denoising step)."""
        return False

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
        raise self.nfe_error(nfe, zero_end, f"{self.evals_per_step} evaluation(s)")

    def nfe_error(self, nfe: int, zero_end: bool, per_step: str) -> ValueError:
        """The error for a budget ``nfe`` no grid spends exactly, listing the nearby budgets that work."""
        options = sorted({self.evals(k, zero_end) for k in range(1, nfe + 2)})
        near = [v for v in options if abs(v - nfe) <= 2 * self.evals_per_step + 1]
        extra = " plus 1 for the final step to zero noise" if zero_end else ""
        return ValueError(
            f"solver {self.name!r} spends {per_step} per step{extra}, so nfe={nfe} cannot be spent exactly; "
            f"nearby possible values: {near or options[:3]}"
        )

    # -- stepping (tensor ops only) ---------------------------------------------------------
    def step(self, x: torch.Tensor, hist: Any, st: Step, noise: Callable[[], torch.Tensor] | None) -> StepProgram:
        """The step program of ``st`` (see the class docs); ``noise()`` draws standard normal noise shaped
        like ``x`` (stochastic solvers only). Solvers whose every step evaluates once, at its start,
        implement :meth:`update` instead."""
        d = yield st.i, x
        x_next, hist = self.update(x, hist, st, d, noise)
        return x_next, hist, d

    def update(self, x: torch.Tensor, hist: Any, st: Step, d: torch.Tensor, noise=None) -> tuple[torch.Tensor, Any]:
        """``(x_next, history)`` of a step that evaluates once, at its start (``d = x0_hat(x)``)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither step() nor update()")

    @property
    def single_evaluation(self) -> bool:
        """Whether every step evaluates once, at its start (the solver implements :meth:`update`)."""
        return type(self).update is not Solver.update

    def program(self, x: torch.Tensor, hist: Any, st: Step, noise=None) -> StepProgram:
        """The program of any planned step: the denoising step for a step to zero noise, else :meth:`step`."""
        if st.zero:
            return _zero_step(x, hist, st)
        return self.step(x, hist, st, noise)

    # -- folded steps (pfode.solvers.fused) --------------------------------------------------
    def fuse_step(self, b, st: Step, hist: tuple) -> tuple[dict, tuple]:
        """Step ``st`` written with a :class:`pfode.solvers.fused.Builder` ``b``: the evaluations it spends
        (``b.eval``), as linear combinations ``{register: coefficient}`` of the state (``b.x``), the network
        outputs and ``hist`` (the values the previous step kept, as such combinations). Returns the new state's
        combination and the values to keep, as :meth:`update` and :meth:`step` keep them. Solvers that do not
        implement it run unfolded."""
        raise NotImplementedError

    @property
    def fusable(self) -> bool:
        """Whether this solver's steps can be folded: it implements :meth:`fuse_step` in a class at least as
        derived as the ones that define how its steps are applied (:meth:`update`, :meth:`step`; a subclass that
        changes the update but not the folded step falls back to the unfolded one, one that only plans other
        coefficients does not need to)."""
        cls = type(self)
        owner = _owner(cls, "fuse_step")
        return owner is not Solver and all(issubclass(owner, _owner(cls, m)) for m in ("update", "step"))

    def adjoint_weights(self, r: float | None) -> tuple[float, ...] | None:
        """Weights ``(c_0, c_1, ...)`` with which this solver combines the current and earlier ``x0_hat``
        in a step of ``lam`` whose previous step was ``r`` times as long (``None`` on the first step),
        for the continuous adjoint; ``None`` if the solver is not such an exponential integrator."""
        return None

def _owner(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def _zero_step(x, hist, st: Step) -> StepProgram:
    d = yield st.i, x
    return (d if st.alpha == 1.0 else d * st.alpha), hist, d


class AdaptiveSolver(SolverBase):
    """A solver that chooses its own steps between two times (``adaptive = True``): no plan and no ``nfe``;
    it implements :meth:`solve`."""

    adaptive = True

    def solve(self, den, x: torch.Tensor, t_start: float, t_end: float, cond=None, callback=None):
        """Integrate the PF-ODE of ``den`` from ``t_start`` to ``t_end``; return ``(x, info)``."""
        raise NotImplementedError


class Evaluator:
    """``ev(x, k) -> x0_hat`` at point ``k`` of a :class:`Table`; counts evaluations on the host. At a zero-noise
    point of a table built with ``velocity_at_zero`` it returns ``dx/dt`` instead (``x0_hat`` is ``x`` there).

    Network time tensors for every point are built once (one host-to-device copy); the loop only
    indexes a Python list.
    """

    def __init__(self, den, table: Table, x: torch.Tensor, cond: dict | None, times=None):
        self.den, self.table, self.cond = den, table, cond
        self._t_net, self._coef = times if times is not None else self.times(den, table, x)
        self.count = 0

    @staticmethod
    def times(den, table: Table, x: torch.Tensor):
        """Network-time tensors (``[B]`` views, one per point) for ``x``'s batch and device, and per point the
        host floats ``(px, po)`` with ``x0_hat = px x + po out`` (the prediction's conversion, folded)."""
        pts = table.points
        tn = den.time_tensor(torch.tensor([p.t for p in pts], dtype=torch.float64), x)
        conv = Conversions(den.prediction, table)
        coef = [conv.vel[k] if p.zero else conv.x0[k] for k, p in enumerate(pts)]
        return [v.expand(x.shape[0]) for v in tn.unbind(0)], coef

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        self.count += 1
        return fold(x, *self._coef[k], self.den.raw(x, self._t_net[k], self.cond))


def run(solver: Solver, plan: list[Step], x: torch.Tensor, ev: Evaluator, noise=None, on_step=None, hist=None):
    """The sampling loop: run the step programs of ``plan`` from ``x``, evaluating through ``ev``.

    ``on_step(st, x, hist, x_next, hist_next, x0_hat)`` is called after each step; when it returns a value,
    that value replaces ``hist_next`` (e.g. copies in pooled storage). Returns ``(x, hist)``.
    """
    single = solver.single_evaluation
    for st in plan:
        if st.zero or single:  # one evaluation at the step's start: no program to drive
            d = ev(x, st.i)
            if st.zero:
                x_next, hist_next = (d if st.alpha == 1.0 else d * st.alpha), hist
            else:
                x_next, hist_next = solver.update(x, hist, st, d, noise)
        else:
            x_next, hist_next, d = drive(solver.step(x, hist, st, noise), ev)
        if on_step is not None:
            new = on_step(st, x, hist, x_next, hist_next, d)
            if new is not None:
                hist_next = new
        x, hist = x_next, hist_next
    return x, hist


_REGISTRY: dict[str, tuple[Callable[..., Solver], dict]] = {}


def register(name: str, factory: Callable[..., Solver], **defaults):
    """Register ``factory(**defaults, **options)`` under ``name``."""
    _REGISTRY[name] = (factory, defaults)


def available() -> list[str]:
    """Names of the registered solvers."""
    return sorted(_REGISTRY)


def get(name: str | Solver, **options) -> Solver:
    """Build a solver by name with options, e.g. ``get("unipc", order=3, variant="bh2")``."""
    if isinstance(name, SolverBase):
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
