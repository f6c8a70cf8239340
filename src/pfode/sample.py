"""``pfode.sample``: integrate the probability-flow ODE (or a reverse SDE) along a grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import check_int, check_state
from .grids import as_grid, grid as make_grid
from .predictions import Denoiser
from .solvers.base import Evaluator, Solver, Table, get

__all__ = ["sample", "SampleOutput", "NonFiniteError", "PerSampleNoise"]


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared while sampling; the message names the step and its time."""


@dataclass
class SampleOutput:
    """What :func:`sample` returns with ``return_trajectory=True`` or ``return_info=True``.

    Attributes:
        x: final samples ``[B, ...]``.
        trajectory: states at every grid time (and the final zero-noise state), or ``None``.
        times: path times of the trajectory's states (``sigma = 0`` marks the denoised end).
        nfe: network evaluations spent (batched calls).
        info: solver-specific extras (per-sample steps for ``dopri5``).
    """

    x: torch.Tensor
    trajectory: list[torch.Tensor] | None
    times: list[float]
    nfe: int
    info: dict = field(default_factory=dict)


class PerSampleNoise:
    """Standard normal noise from one stream per sample: the same seed gives the same noise for sample ``i``
    whatever the batch size. Seeds are drawn from ``generator`` (or torch's global generator)."""

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None = None):
        dev = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**62, (like.shape[0],), generator=generator, device=dev).tolist()
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape = like.shape[1:]
        self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        self.like = like

    def __call__(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.gens])
        return z.to(device=self.like.device, dtype=self.like.dtype)


def _resolve_grid(den, solver, grid, nfe, spacing, t_start, t_end, denoise):
    path = den.path
    if grid is not None and nfe is not None:
        raise ValueError("give either grid= or nfe=, not both")
    if grid is None:
        if nfe is None:
            raise ValueError("give grid= (pfode.grid(path, steps)) or nfe= (evaluations to spend)")
        check_int("nfe", nfe, 1)
        te = path.t_min if t_end is None else t_end
        if float(path.sigma(te)) == 0.0:
            raise ValueError(
                f"with nfe=, end the grid above zero noise (t_end={te!r} has sigma = 0); denoise=True finishes there"
            )
        if getattr(solver, "adaptive", False):
            solver.for_nfe(nfe, denoise)  # raises: adaptive solvers pick their own evaluations
        steps, solver = solver.for_nfe(nfe, denoise)
        return make_grid(path, steps, spacing, t_start=t_start, t_end=t_end), solver
    if isinstance(grid, int) and not isinstance(grid, bool):
        raise TypeError(f"grid={grid!r} is a number; pass nfe={grid} or pfode.grid(path, {grid})")
    return as_grid(path, grid), solver


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    grid=None,
    solver: str | Solver = "dpm++2m",
    *,
    nfe: int | None = None,
    spacing: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    callback: Callable[[dict], None] | None = None,
    return_trajectory: bool = False,
    return_info: bool = False,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    check_finite: bool = True,
):
    """Integrate the probability-flow ODE of ``denoiser`` from ``x_T`` along ``grid``.

    Args:
        denoiser: a :class:`pfode.Denoiser` (any path, any prediction type).
        x_T: starting state ``[B, ...]`` at ``grid[0]`` (e.g. ``sigma(t_max) * randn``).
        grid: decreasing path times (:func:`pfode.grid` or a tensor); or leave it out and give ``nfe``.
        solver: a name from :func:`pfode.solvers.available` or a solver object.
        nfe: network evaluations to spend; builds a ``spacing`` grid from ``t_start`` (default
            ``t_max``) to ``t_end`` (default ``t_min``) with the matching number of steps.
        denoise: finish with the denoising step ``x0_hat`` to zero noise after the grid's last time
            (one evaluation, counted in ``nfe``); ``False`` returns the state at the grid's last time.
        callback: called after each step with ``{"i", "t", "t_next", "x", "x0_hat"}`` (``x`` is the state
            at ``t``; ``t`` values are host floats).
        return_trajectory: also return the states at every grid time.
        return_info: return a :class:`SampleOutput` (samples, evaluations used, solver info).
        generator: seeds the per-sample noise streams of stochastic solvers.
        cond: keyword arguments passed to the network at every call (conditioning tensors).
        check_finite: raise :class:`NonFiniteError` naming the first step whose ``x0_hat`` was not
            finite (checked once, after the loop: no host-device sync inside it).
    Returns:
        the samples (shaped like ``x_T``), or a :class:`SampleOutput`.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(
            f"denoiser must be a pfode.Denoiser, got {type(denoiser).__name__}; wrap your network with "
            "pfode.Denoiser(net, path, prediction=...)"
        )
    check_state("x_T", x_T)
    solver = get(solver)
    g, solver = _resolve_grid(denoiser, solver, grid, nfe, spacing, t_start, t_end, denoise)
    path = denoiser.path
    last_sigma = float(path.sigma(g[-1]))
    zero_end = bool(denoise) and last_sigma > 0
    x = x_T

    if getattr(solver, "adaptive", False):
        if last_sigma == 0.0:
            raise ValueError("dopri5 needs a grid ending above zero noise; denoise=True finishes at zero noise")
        x, info = solver.sample(denoiser, x, float(g[0]), float(g[-1]), cond)
        nfe_used = info["nfe"]
        traj = [x_T, x] if return_trajectory else None
        times = [float(g[0]), float(g[-1])]
        if zero_end:
            table = Table(path, g[-1:], True)
            x0 = Evaluator(denoiser, table, x, cond)(x, 0)
            x = x0
            nfe_used += 1
            times.append(float(path.t_lo))
            if traj is not None:
                traj.append(x)
        if check_finite and not bool(torch.isfinite(x).all()):
            raise NonFiniteError("non-finite values in the dopri5 solution")
        if return_trajectory or return_info:
            return SampleOutput(x, traj, times, nfe_used, info)
        return x

    table = Table(path, g, zero_end)
    plan = solver.plan(table)
    ev = Evaluator(denoiser, table, x, cond)
    noise = PerSampleNoise(x, generator) if solver.stochastic else None
    traj = [x] if return_trajectory else None
    sums = []
    hist = None
    for st in plan:
        x_prev = x
        x, hist, x0 = solver.step(ev, x, hist, st, table, noise)
        if check_finite:
            sums.append(x0.sum())
        if callback is not None:
            callback({"i": st.i, "t": table[st.i].t, "t_next": table[st.i + 1].t, "x": x_prev, "x0_hat": x0})
        if traj is not None:
            traj.append(x)
    if check_finite:
        sums.append(x.sum())
        finite = torch.isfinite(torch.stack(sums).to(torch.float64))
        if not bool(finite.all()):
            k = int((~finite).nonzero()[0])
            if k < len(plan):
                raise NonFiniteError(
                    f"the network returned non-finite values at step {k} (t={table[k].t:.6g}) with solver "
                    f"{solver.name!r}; check the network and its inputs at that time"
                )
            raise NonFiniteError(f"solver {solver.name!r} produced non-finite values (the network's outputs were finite)")
    if return_trajectory or return_info:
        times = [table[i].t for i in range(table.n_steps + 1)]
        return SampleOutput(x, traj, times, ev.count)
    return x
