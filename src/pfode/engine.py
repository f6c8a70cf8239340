"""The integration engine; everything that integrates the probability-flow ODE goes through here.

* :class:`PFODE`: the PF-ODE of a :class:`~pfode.Denoiser` in ``lam``, ``s``, ``t`` or ``theta`` (state
  ``u = k(v) x`` and velocity ``du/dv``; the table is in ``docs/architecture.md``), one network call and
  one conversion to ``(x0_hat, eps_hat)`` per evaluation.
* :class:`Tableau` and :func:`rk_stages`: every explicit Runge-Kutta method, stepped by one generator that
  yields each stage's input and receives its derivatives (sampling solvers, the adaptive solver and the
  augmented likelihood all use it).
* :func:`solve_adaptive` with :class:`IController` or :class:`PIController`, per sample or per batch.
* :func:`drive` runs a step program (fixed-step solvers' steps are programs too, see
  :meth:`pfode.solvers.Solver.step`), answering each request with an evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch

from ._checks import check_choice
from .predictions import Coeffs

__all__ = [
    "VARIABLES",
    "PFODE",
    "Tableau",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "DOPRI5",
    "rk_stages",
    "axpy",
    "IController",
    "PIController",
    "solve_adaptive",
    "drive",
]

VARIABLES = ("lam", "s", "t", "theta")


# -- the PF-ODE in a variable -----------------------------------------------------------------------
class PFODE:
    """The probability-flow ODE of a denoiser in the variable ``variable`` (see the module's table).

    Args:
        den: a :class:`pfode.Denoiser`.
        variable: ``"lam"``, ``"s"``, ``"t"`` or ``"theta"``.
        cond: keyword arguments for the network.

    ``v`` values are float64 tensors (``[B]``, one per sample) or floats.
    """

    def __init__(self, den, variable: str, cond: dict | None = None):
        self.den, self.path, self.cond = den, den.path, cond
        self.variable = check_choice("variable", variable, VARIABLES)

    def t_of(self, v) -> torch.Tensor:
        """Path time at ``v``."""
        v = torch.as_tensor(v, dtype=torch.float64)
        if self.variable == "t":
            return v
        if self.variable == "lam":
            return self.path.t_of_lam(v)
        if self.variable == "s":
            return self.path.t_of_lam(-torch.log(v))
        return self.path.t_of_lam(-torch.log(torch.tan(v)))

    def v_of_t(self, t: float) -> float:
        """``v`` at path time ``t`` (a host float)."""
        a, s = float(self.path.alpha(t)), float(self.path.sigma(t))
        if self.variable == "t":
            return float(t)
        if self.variable == "theta":
            return math.atan2(s, a)
        if self.variable == "s":
            return math.inf if a == 0 else s / a
        return float(self.path.lam(t))

    def scale(self, t: float) -> float:
        """``k`` with ``u = k x`` at path time ``t`` (host float)."""
        if self.variable == "t":
            return 1.0
        a = float(self.path.alpha(t))
        if self.variable == "theta":
            return math.cos(math.atan2(float(self.path.sigma(t)), a)) / a
        return 1.0 / a

    def denoise(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0_hat`` at state ``u`` (of this variable) and per-sample path times ``t`` (``[B]`` float64)."""
        c = Coeffs.at(self.path, t, like=u)
        if self.variable == "t":
            x = u
        elif self.variable == "theta":
            x = u * torch.hypot(c.alpha, c.sigma)
        else:
            x = u * c.alpha
        return self.den.pair_at(x, t, self.cond, c)[0]

    def velocity(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(du/dv, x0_hat)`` at state ``u`` and per-sample ``v`` (``[B]`` float64); differentiable in ``u``."""
        v = torch.as_tensor(v, dtype=torch.float64, device=u.device)
        if v.dim() == 0:
            v = v.expand(u.shape[0])
        t = self.t_of(v)
        c = Coeffs.at(self.path, t, like=u)
        var = self.variable
        if var == "t":
            x0, eps = self.den.pair_at(u, t, self.cond, c)
            return c.d_alpha * x0 + c.d_sigma * eps, x0
        if var == "theta":
            view = (-1,) + (1,) * (u.dim() - 1)
            x0, eps = self.den.pair_at(u * torch.hypot(c.alpha, c.sigma), t, self.cond, c)
            cv, sv = torch.cos(v).reshape(view).to(u.dtype), torch.sin(v).reshape(view).to(u.dtype)
            return cv * eps - sv * x0, x0
        x0, _ = self.den.pair_at(u * c.alpha, t, self.cond, c)
        x0 = x0.to(u.dtype)
        if var == "lam":
            return x0 - u, x0
        return (u - x0) * (c.alpha / c.sigma), x0


# -- Runge-Kutta tableaux and the one stepper --------------------------------------------------------
@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: nodes ``c``, matrix ``a`` (rows of the strictly lower triangle),
    weights ``b``, its ``order``, and for embedded pairs the error weights ``e = b - b_hat``.

    ``fsal``: the last stage is evaluated at the new solution (first same as last).
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    e: tuple[float, ...] | None = None
    fsal: bool = False

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = Tableau("euler", (0.0,), ((),), (1.0,), 1)
HEUN = Tableau("heun", (0.0, 1.0), ((), (1.0,)), (0.5, 0.5), 2)
MIDPOINT = Tableau("midpoint", (0.0, 0.5), ((), (0.5,)), (0.0, 1.0), 2)
RK4 = Tableau(
    "rk4", (0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
#: Dormand & Prince 5(4) (1980), first same as last.
DOPRI5 = Tableau(
    "dopri5",
    (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DP_B5[:6],
    ),
    _DP_B5,
    5,
    e=tuple(p - q for p, q in zip(_DP_B5, _DP_B4)),
    fsal=True,
)


def axpy(u: torch.Tensor, w, k: torch.Tensor) -> torch.Tensor:
    """``u + w k`` for a host float ``w`` (one fused op) or a broadcastable tensor ``w``."""
    if isinstance(w, torch.Tensor):
        return u + w * k
    return torch.add(u, k, alpha=w)


def _combine(u: Sequence[torch.Tensor], h: Sequence, weights, ks) -> list[torch.Tensor]:
    out = list(u)
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = [axpy(o, w * hh, kk) for o, hh, kk in zip(out, h, k)]
    return out


def rk_stages(
    tab: Tableau, u: Sequence[torch.Tensor], h: Sequence, k1: Sequence[torch.Tensor] | None = None
) -> Generator[tuple[int, list[torch.Tensor]], Sequence[torch.Tensor], tuple[list[torch.Tensor], list]]:
    """One step of ``tab`` as a step program on a state of several tensors.

    ``u`` is the list of state tensors and ``h`` the step for each, as a host float or a tensor shaped to
    broadcast against it (per-sample steps). The program yields ``(i, u_i)`` for every stage ``i`` whose
    derivative it needs (stage 0 only when ``k1`` is not given) and receives that stage's derivatives (a
    list matching ``u``). It returns ``(u_next, ks)``: the new state with weights ``b`` and all stage
    derivatives (for error estimates and first-same-as-last).
    """
    ks: list = [list(k1)] if k1 is not None else []
    for i in range(len(ks), tab.stages):
        ui = list(u) if i == 0 else _combine(u, h, tab.a[i], ks)
        ks.append(list((yield i, ui)))
    if tab.fsal:
        return ui, ks
    return _combine(u, h, tab.b, ks), ks


def drive(program: Generator, evaluate: Callable):
    """Run a step program to its end, answering each request ``(key, value)`` with ``evaluate(value, key)``."""
    try:
        key, value = next(program)
        while True:
            key, value = program.send(evaluate(value, key))
    except StopIteration as stop:
        return stop.value


# -- adaptive step-size control ----------------------------------------------------------------------
@dataclass(frozen=True)
class IController:
    """Integral controller: ``h <- h * clamp(safety * err^(-1/(q+1)), lo, hi)`` (no growth after a rejection)."""

    safety: float = 0.9
    lo: float = 0.2
    hi: float = 10.0

    def start(self, b: int, device) -> None:
        return None

    def update(self, h, err, ok, order: int, mem):
        fac = torch.clamp(self.safety * err.clamp_min(1e-10) ** (-1.0 / order), self.lo, self.hi)
        return h * torch.where(ok, fac, torch.clamp(fac, max=1.0)), mem


@dataclass(frozen=True)
class PIController:
    """Proportional-integral controller (Gustafsson): ``h <- h * safety * err^(-kI) * err_prev^(kP)`` on
    acceptance (clamped to ``[lo, hi]``), ``h * clamp(safety * err^(-1/q), reject_lo, reject_hi)`` on
    rejection; ``kI = 0.7/q``, ``kP = 0.4/q`` with ``q`` the order of the error estimate plus one."""

    safety: float = 0.9
    lo: float = 0.2
    hi: float = 5.0
    reject_lo: float = 0.1
    reject_hi: float = 0.9

    def start(self, b: int, device):
        return torch.ones(b, dtype=torch.float64, device=device)

    def update(self, h, err, ok, order: int, prev):
        ec = err.clamp_min(1e-10)
        fac = self.safety * ec ** (-0.7 / order) * prev ** (0.4 / order)
        fac = torch.where(ok, fac.clamp(self.lo, self.hi), (self.safety * ec ** (-1.0 / order)).clamp(
            self.reject_lo, self.reject_hi))
        return h * fac, torch.where(ok, ec, prev)


def solve_adaptive(
    f: Callable[[list[torch.Tensor], torch.Tensor], list[torch.Tensor]],
    u: list[torch.Tensor],
    v0,
    v1,
    *,
    error_norm: Callable[[list, list, list], torch.Tensor],
    h0: torch.Tensor,
    views: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    tab: Tableau = DOPRI5,
    controller=None,
    control: str = "sample",
    max_step: float | None = None,
    max_evals: int = 100_000,
    what: str = "the solve",
    k1: list[torch.Tensor] | None = None,
    on_step: Callable | None = None,
):
    """Integrate ``du/dv = f(u, v)`` from ``v0`` to ``v1`` with an embedded tableau and step control.

    Args:
        f: derivatives of the state ``u`` (a list of tensors) at per-sample ``v`` (``[B]`` float64).
        u: the state; ``views[j](h)`` reshapes a ``[B]`` tensor to broadcast against ``u[j]``.
        v0, v1: ends, floats or ``[B]`` float64 tensors (per-sample ends and directions).
        error_norm: ``(u, u_new, err) -> [B]`` float64 error norms (a step is accepted where ``<= 1``).
        h0: first step sizes (``[B]``, positive).
        controller: :class:`IController` (default) or :class:`PIController`.
        control: ``"sample"`` (each sample accepts or rejects its own step: results do not depend on the
            batch) or ``"batch"`` (one step size from the RMS of the active samples' norms).
        max_step: cap on step sizes.
        k1: derivatives at the start, if already known.
        on_step: ``on_step(attempt, v, v_prev, u, k1, accepted)`` after every attempt (``k1``: derivatives
            at the current state, known from first-same-as-last).
    Returns:
        ``(u, info)`` with ``info`` holding ``nfe``, ``attempts`` and per-sample ``accepted_steps`` and
        ``rejected_steps``.
    """
    if tab.e is None:
        raise ValueError(f"tableau {tab.name!r} has no embedded error estimate")
    check_choice("control", control, ("sample", "batch"))
    controller = IController() if controller is None else controller
    b = u[0].shape[0]
    dev = u[0].device
    v = torch.as_tensor(v0, dtype=torch.float64).to(dev).expand(b).clone()
    end = torch.as_tensor(v1, dtype=torch.float64).to(dev).expand(b).clone()
    direction = torch.sign(end - v)
    evals = 0

    def call(uu, vv):
        nonlocal evals
        evals += 1
        if evals > max_evals:
            raise RuntimeError(f"{what} used more than max_evals={max_evals} evaluations; loosen rtol/atol")
        return list(f(uu, vv))

    if k1 is None:
        k1 = call(u, v)
    h = h0.to(torch.float64)
    mem = controller.start(b, dev)
    accepted = torch.zeros(b, dtype=torch.long, device=dev)
    rejected = torch.zeros(b, dtype=torch.long, device=dev)
    q = min(tab.order, 4) + 1  # the embedded estimate is of order 4 for dopri5: exponent 1/5
    attempt = 0
    while True:
        remaining = (end - v) * direction
        active = remaining > 1e-12 * (1.0 + end.abs())
        if not bool(active.any()):
            break
        hh = torch.where(active, torch.minimum(h, remaining), torch.zeros_like(h)) * direction
        hs = [view(hh).to(x.dtype) if x.is_floating_point() else view(hh) for view, x in zip(views, u)]
        program = rk_stages(tab, u, hs, k1)
        new, ks = drive(program, lambda ui, i, _v=v, _hh=hh: call(ui, _v + tab.c[i] * _hh))
        err_v = [sum(ek * hx * kk[j] for ek, kk in zip(tab.e, ks) if ek != 0.0) for j, hx in enumerate(hs)]
        err = error_norm(u, new, err_v)
        if control == "batch":
            err = torch.sqrt((err[active] ** 2).mean()).expand(b)
        ok = (err <= 1.0) & active
        u = [torch.where(view(ok), n, o) for view, n, o in zip(views, new, u)]
        k1 = [torch.where(view(ok), n, o) for view, n, o in zip(views, ks[-1], k1)]
        v_prev = v
        v = torch.where(ok, v + hh, v)
        accepted += ok.long()
        rejected += (active & ~ok).long()
        if on_step is not None:
            on_step(attempt, v, v_prev, u, k1, ok)
        attempt += 1
        h_new, mem = controller.update(hh.abs(), err, ok, q, mem)
        if max_step is not None:
            h_new = h_new.clamp(max=max_step)
        h = torch.where(active, h_new, h)
    info = {"nfe": evals, "attempts": attempt, "accepted_steps": accepted.cpu(), "rejected_steps": rejected.cpu()}
    return u, info
