"""Inversion: map data to noise along the probability-flow ODE, plain or exact (BDIA).

Plain inversion runs any deterministic solver on the *mirror image* of the sampling grid: the grid
is built as for :func:`pfode.sample` (noise to data) and reversed, so inversion and sampling step
through the same times. Every solver's plan and step work for increasing times too (the step ``h``
in ``lam`` becomes negative; the exponential integrators then use ``e^{-h} > 1``, the RK solvers a
negative ``ds``); stochastic solvers are rejected. Plain inversion is only approximate: a solver step
is not the exact inverse of the step it mirrors, which leaves a round-trip error of the order of the
solver's local error.

Exact inversion uses BDIA (Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via Bi-directional
Integration Approximation", ECCV 2024). With ``Delta(t_k -> t_j | x_k)`` one step of a single-step
solver from ``x_k`` at ``t_k`` to ``t_j`` minus ``x_k``, the sampler (grid ``t_0 > t_1 > ... > t_N``)
starts with one plain step ``x_1 = x_0 + Delta(t_0 -> t_1 | x_0)`` and continues with

    x_{k+1} = gamma x_{k-1} + (1 - gamma) x_k
              - gamma Delta(t_k -> t_{k-1} | x_k) + Delta(t_k -> t_{k+1} | x_k):

the integral over the previous interval is re-approximated backwards from ``x_k`` (weight
``gamma``), the next one forwards. The update is linear in ``x_{k-1}`` with the network evaluated at
``x_k`` only, so given ``(x_k, x_{k+1})``

    x_{k-1} = (x_{k+1} - (1 - gamma) x_k
               + gamma Delta(t_k -> t_{k-1} | x_k) - Delta(t_k -> t_{k+1} | x_k)) / gamma

recovers the previous state exactly (to float rounding). Inverting data ``x_N`` starts with one plain
inversion step ``x_{N-1} = x_N + Delta(t_N -> t_{N-1} | x_N)`` and then applies the formula down to
``x_0``; :func:`bdia_sample` from the pair ``(x_0, x_1)`` retraces the same states and returns ``x_N``
to float rounding. The forward and backward ``Delta`` share the evaluation at ``x_k``: BDIA-DDIM costs one
evaluation per step, BDIA with a second-order single-step solver (``dpm++2s``, ``heun``, ``dpm2``) three.
Multistep solvers cannot be used: their update at ``x_k`` depends on evaluations at earlier states, so
the backward formula would be implicit.

With ``gamma = 1`` the two-step recursion has a parasitic mode that grows by up to ``e^{h}`` per step in
``lam`` on the sampling side (it is harmless for the exact round trip in float64, where it only amplifies
rounding); smaller ``gamma`` damps it at the price of a ``1/gamma`` amplification when inverting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_choice, check_finite_float, check_state
from .engine import drive
from .grids import resolve
from .predictions import Denoiser, check_denoiser
from .sample import SampleOutput
from .sample import sample as pf_sample
from .solvers.base import Evaluator, Solver, Table, get, run

__all__ = ["invert", "bdia_sample", "round_trip", "InversionOutput", "RoundTrip", "METHODS"]

METHODS = ("plain", "bdia")


@dataclass
class InversionOutput:
    """What :func:`invert` returns with ``return_info=True``.

    Attributes:
        x_T: the latent at the first (noisiest) time of the sampling grid.
        x_next: BDIA only: the state at the grid's second time; pass it to :func:`bdia_sample` (as
            ``x_next``) to retrace the inversion exactly. ``None`` for plain inversion.
        grid: the sampling grid (decreasing) whose mirror image was integrated.
        nfe: network evaluations spent.
    """

    x_T: torch.Tensor
    x_next: torch.Tensor | None
    grid: torch.Tensor
    nfe: int
    info: dict = field(default_factory=dict)


@dataclass
class RoundTrip:
    """What :func:`round_trip` returns.

    Attributes:
        x_T: the latent from :func:`invert`.
        x_rec: the reconstruction (sampling back from ``x_T`` along the same grid, without denoising).
        max_abs_err: ``max |x_rec - x0|``.
        rel_err: ``||x_rec - x0|| / ||x0||`` over the whole batch (Frobenius norms).
        nfe: evaluations of inversion plus sampling.
    """

    x_T: torch.Tensor
    x_rec: torch.Tensor
    max_abs_err: float
    rel_err: float
    nfe: int


def _deterministic(solver) -> Solver:
    s = get(solver)
    if s.stochastic:
        raise ValueError(
            f"solver {s.name!r} is stochastic: inversion needs a deterministic solver (e.g. 'ddim', "
            "'dpm++2m', "
            "'heun', 'dopri5')"
        )
    return s


def _sampling_grid(den, s, grid, nfe, spacing, t_start, t_end):
    """The decreasing sampling grid whose mirror image inversion integrates (no final denoising step)."""
    if nfe is not None and s.adaptive:
        raise ValueError(f"{s.name} chooses its own evaluations; give grid= (only its two ends are used)")
    g, s = resolve(den.path, s, grid, nfe, spacing=spacing, t_start=t_start, t_end=t_end, denoise=False)
    if float(den.path.sigma(g[-1])) == 0.0:
        raise ValueError(
            f"the grid ends at zero noise (t={float(g[-1])!r}); inversion starts at the grid's last time, "
            "which needs sigma > 0: end the grid at t_min (pfode.grid's default)"
        )
    return g, s


class _Steps:
    """Single steps of a solver between pairs of times, planned once; the first evaluation can be shared."""

    def __init__(self, den, solver: Solver, x: torch.Tensor, cond):
        self.den, self.solver, self.cond = den, solver, cond
        self.like = x
        self.cache: dict = {}
        self.count = 0

    def _get(self, t_from: float, t_to: float):
        key = (t_from, t_to)
        if key not in self.cache:
            table = Table(self.den.path, torch.tensor([t_from, t_to], dtype=torch.float64), False)
            self.cache[key] = (self.solver.plan(table)[0], Evaluator(self.den, table, self.like, self.cond))
        return self.cache[key]

    def d0(self, x, t_from: float, t_to: float) -> torch.Tensor:
        self.count += 1
        return self._get(t_from, t_to)[1](x, 0)

    def delta(self, x, t_from: float, t_to: float, d0: torch.Tensor | None = None) -> torch.Tensor:
        """``Delta(t_from -> t_to | x)``: one step minus ``x``; ``d0``: ``x0_hat(x, t_from)`` if known."""
        st, ev = self._get(t_from, t_to)

        def evaluate(xx, k):
            if k == 0 and d0 is not None:
                return d0
            self.count += 1
            return ev(xx, k)

        out, _, _ = drive(self.solver.program(x, None, st), evaluate)
        return out - x


def _bdia_solver(solver) -> Solver:
    s = _deterministic(solver)
    if s.adaptive or s.multistep:
        raise ValueError(
            f"method='bdia' needs a single-step solver (its update must depend on x_k alone): 'ddim', "
            "'dpm1', "
            f"'dpm2', 'dpm3', 'dpm++2s', 'euler', 'heun', 'midpoint', 'rk4'; got {s.name!r}"
        )
    return s


def _check_gamma(gamma) -> float:
    gamma = check_finite_float("gamma", gamma)
    if not (0.0 < gamma <= 1.0):
        raise ValueError(
            f"gamma={gamma!r} must be in (0, 1] (gamma = 0 is plain DDIM, which is not invertible)"
        )
    return gamma


def _times(g) -> list[float]:
    return [float(v) for v in g.tolist()]


def invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    grid=None,
    nfe: int | None = None,
    solver: str | Solver = "ddim",
    spacing: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    method: str = "plain",
    gamma: float = 1.0,
    cond: dict | None = None,
    return_info: bool = False,
):
    """Map states at the grid's last time (data at ``t_min``) to noise at its first time.

    Args:
        denoiser: a :class:`pfode.Denoiser`.
        x0: ``[B, ...]`` states at the last time of the sampling grid (``t_min`` by default; clean data
            can be passed as is, the noise at ``t_min`` being negligible).
        grid: the *sampling* grid (decreasing, noise to data, e.g. ``pfode.grid(path, 10)``); inversion
            integrates its mirror image. Or leave it out and give ``nfe`` (with ``spacing``, ``t_start``,
            ``t_end`` as in :func:`pfode.sample`, no final denoising step): the grid the solver would use
            as a plain sampler for ``nfe`` evaluations (BDIA with a k-stage solver spends 2k - 1 per step).
        solver: any deterministic solver name or object (``dopri5`` uses only the grid's ends). With
            ``method="bdia"``: a single-step solver.
        method: ``"plain"`` (run the solver backwards) or ``"bdia"`` (exact inversion, see module docs).
        gamma: BDIA weight of the backward re-approximation, in ``(0, 1]``.
        cond: keyword arguments for the network.
        return_info: return an :class:`InversionOutput` (with BDIA's second state ``x_next``).
    Returns:
        the latents ``[B, ...]`` at the grid's first time, or an :class:`InversionOutput`.
    """
    check_denoiser(denoiser)
    check_state("x0", x0)
    method = check_choice("method", method, METHODS)
    s = _bdia_solver(solver) if method == "bdia" else _deterministic(solver)
    g, s = _sampling_grid(denoiser, s, grid, nfe, spacing, t_start, t_end)
    path = denoiser.path
    if method == "bdia":
        gamma = _check_gamma(gamma)
        ts = _times(g)
        n = len(ts) - 1
        steps = _Steps(denoiser, s, x0, cond)
        x_hi = x0  # x_N
        d = steps.d0(x_hi, ts[n], ts[n - 1])
        x_lo = x_hi + steps.delta(x_hi, ts[n], ts[n - 1], d)  # x_{N-1}: one plain inversion step
        # (x_lo, x_hi) = (x_k, x_{k+1}) with k from N-1 down to 1
        for k in range(n - 1, 0, -1):
            xk, xk1 = x_lo, x_hi
            dk = steps.d0(xk, ts[k], ts[k - 1])
            back = steps.delta(xk, ts[k], ts[k - 1], dk)
            fwd = steps.delta(xk, ts[k], ts[k + 1], dk)
            x_prev = (xk1 - (1.0 - gamma) * xk + gamma * back - fwd) / gamma
            x_lo, x_hi = x_prev, xk
        out = InversionOutput(
            x_lo, x_hi, g, steps.count, {"method": "bdia", "gamma": gamma, "solver": s.name}
        )
        return out if return_info else out.x_T
    if s.adaptive:
        x, info = s.solve(denoiser, x0, float(g[-1]), float(g[0]), cond)
        out = InversionOutput(x, None, g, info["nfe"], {"method": "plain", "solver": s.name, **info})
        return out if return_info else x
    table = Table(path, g.flip(0), False)
    plan = s.plan(table)
    ev = Evaluator(denoiser, table, x0, cond)
    x, _ = run(s, plan, x0, ev)
    out = InversionOutput(x, None, g, ev.count, {"method": "plain", "solver": s.name})
    return out if return_info else x


def bdia_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    grid,
    solver: str | Solver = "ddim",
    *,
    gamma: float = 1.0,
    x_next: torch.Tensor | None = None,
    denoise: bool = False,
    cond: dict | None = None,
    return_info: bool = False,
):
    """BDIA sampling (see module docs) along a decreasing ``grid``; inverse of ``invert(method="bdia")``.

    Args:
        denoiser: a :class:`pfode.Denoiser`.
        x_T: ``[B, ...]`` state at ``grid[0]``.
        grid: decreasing path times.
        solver: a single-step deterministic solver (``"ddim"``, ``"dpm++2s"``, ``"heun"``, ...).
        gamma: BDIA weight in ``(0, 1]``.
        x_next: the state at ``grid[1]`` (from :func:`invert` with ``return_info=True``); without it the
            first step is a plain solver step, as in generation.
        denoise: finish with ``x0_hat`` at the grid's last time (one more evaluation).
        cond: keyword arguments for the network.
        return_info: return a :class:`pfode.SampleOutput` (samples, grid times, evaluations spent).
    Returns:
        the state at the grid's last time (or the denoised sample), shaped like ``x_T``.
    """
    check_denoiser(denoiser)
    check_state("x_T", x_T)
    s = _bdia_solver(solver)
    gamma = _check_gamma(gamma)
    g, _ = resolve(denoiser.path, s, grid)
    ts = _times(g)
    n = len(ts) - 1
    if float(denoiser.path.sigma(g[-1])) == 0.0 and n > 1:
        raise ValueError(
            "bdia_sample needs a grid ending above zero noise; use denoise=True to finish at zero noise"
        )
    steps = _Steps(denoiser, s, x_T, cond)
    x_prev = x_T
    if x_next is None:
        x_cur = x_T + steps.delta(x_T, ts[0], ts[1])
    else:
        check_state("x_next", x_next)
        if x_next.shape != x_T.shape:
            raise ValueError(f"x_next has shape {tuple(x_next.shape)}, x_T has {tuple(x_T.shape)}")
        x_cur = x_next
    for k in range(1, n):
        dk = steps.d0(x_cur, ts[k], ts[k + 1])
        back = steps.delta(x_cur, ts[k], ts[k - 1], dk)
        fwd = steps.delta(x_cur, ts[k], ts[k + 1], dk)
        x_new = gamma * x_prev + (1.0 - gamma) * x_cur - gamma * back + fwd
        x_prev, x_cur = x_cur, x_new
    nfe = steps.count
    if denoise:
        table = Table(denoiser.path, g[-1:], True)
        x_cur = Evaluator(denoiser, table, x_cur, cond)(x_cur, 0)
        nfe += 1
    if not return_info:
        return x_cur
    times = ts + ([float(denoiser.path.t_lo)] if denoise else [])
    return SampleOutput(x_cur, None, times, nfe, {"method": "bdia", "gamma": gamma, "solver": s.name})


def round_trip(denoiser: Denoiser, x0: torch.Tensor, **options) -> RoundTrip:
    """Invert ``x0`` with :func:`invert` (``options`` are its keyword arguments) and sample back along the same
    grid with the matching sampler; report the error.

    Plain inversion samples back with :func:`pfode.sample` (``denoise=False``); BDIA with
    :func:`bdia_sample` from the inverted pair ``(x_T, x_next)``.
    """
    if "return_info" in options:
        raise TypeError("round_trip always returns a RoundTrip; return_info is not one of its options")
    inv = invert(denoiser, x0, return_info=True, **options)
    solver, cond, nfe = options.get("solver", "ddim"), options.get("cond"), options.get("nfe")
    if inv.info["method"] == "bdia":
        out = bdia_sample(
            denoiser, inv.x_T, inv.grid, solver, gamma=inv.info["gamma"], x_next=inv.x_next, cond=cond, return_info=True
        )
    else:
        s = get(solver)
        if nfe is not None and not s.adaptive:
            _, s = s.for_nfe(nfe, False)  # the solver inversion used (e.g. dpm-fast's order list)
        g = inv.grid[[0, -1]] if s.adaptive else inv.grid
        out = pf_sample(denoiser, inv.x_T, g, s, denoise=False, cond=cond, return_info=True)
    diff = (out.x - x0).to(torch.float64)
    rel = float(diff.norm() / x0.to(torch.float64).norm().clamp_min(1e-300))
    rel = rel if math.isfinite(rel) else math.inf
    return RoundTrip(inv.x_T, out.x, float(diff.abs().max()), rel, inv.nfe + out.nfe)
