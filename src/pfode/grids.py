"""Time grids: strictly decreasing float64 tensors of path times, noise first.

Spacings:

* ``"logsnr"``: uniform in ``lam = log(alpha/sigma)`` (DPM-Solver's recommendation);
* ``"uniform"``: uniform in path time ``t``;
* ``"karras"``: uniform in ``s^(1/rho)`` where ``s = sigma/alpha`` (Karras et al., 2022;
  ``s`` is k-diffusion's sigma for every path);
* ``"quadratic"``: ``t = t_end + (t_start - t_end) u^2`` for ``u`` uniform (DDIM's quadratic).

A grid may end exactly at zero noise on a path that reaches it (``path.reaches_zero``), with every
spacing except ``"logsnr"`` (``lam`` is infinite there).
"""

from __future__ import annotations

import math

import torch

from ._checks import as_f64, check_choice, check_finite_float, check_int
from .paths import Path

__all__ = ["grid", "as_grid", "resolve", "SPACINGS"]

SPACINGS = ("logsnr", "uniform", "karras", "quadratic")


def _bounds(path: Path, t_start, t_end) -> tuple[float, float]:
    ts = path.t_max if t_start is None else check_finite_float("t_start", t_start)
    te = path.t_min if t_end is None else check_finite_float("t_end", t_end)
    if ts <= te:
        raise ValueError(f"t_start={ts!r} must be greater than t_end={te!r} (grids run from noise to data)")
    for name, v in (("t_start", ts), ("t_end", te)):
        if not (path.t_lo <= v <= path.t_hi):
            raise ValueError(
                f"{name}={v!r} lies outside the range [{path.t_lo:g}, {path.t_hi:g}] of {path!r}"
            )
    return ts, te


def grid(
    path: Path,
    steps: int,
    spacing: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    """A strictly decreasing float64 tensor of ``steps + 1`` path times from ``t_start`` to ``t_end``.

    Args:
        path: the path whose time the grid is in.
        steps: number of intervals (``>= 1``).
        spacing: ``"logsnr"``, ``"uniform"``, ``"karras"`` or ``"quadratic"``.
        t_start: first (noisiest) time, default ``path.t_max``.
        t_end: last time, default ``path.t_min``; may be the zero-noise time ``path.t_lo`` on paths
            that reach it, except with ``"logsnr"``.
        rho: exponent of the Karras spacing (``> 0``).
    Returns:
        tensor of shape ``[steps + 1]``, dtype float64, with ``grid[0] = t_start`` and ``grid[-1] = t_end``.
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a pfode.paths.Path, got {type(path).__name__}")
    check_int("steps", steps, 1)
    check_choice("spacing", spacing, SPACINGS)
    rho = check_finite_float("rho", rho, 0.0, strict=True)
    ts, te = _bounds(path, t_start, t_end)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        g = ts + (te - ts) * u
    elif spacing == "quadratic":
        g = te + (ts - te) * (1.0 - u) ** 2
    elif spacing == "logsnr":
        l0, l1 = path.lam(torch.tensor([ts, te], dtype=torch.float64)).tolist()
        if not (math.isfinite(l0) and math.isfinite(l1)):
            raise ValueError(
                f"spacing='logsnr' needs finite log-SNR at both ends; lam(t_start={ts:g})={l0}, "
                f"lam(t_end={te:g})={l1}. End at t_min > 0 (sample() then denoises to zero noise) "
                "or use spacing='karras' or 'uniform'"
            )
        g = path.t_of_lam(l0 + (l1 - l0) * u)
    else:  # karras, in s = sigma / alpha
        s0, s1 = float(path.s(ts)), float(path.s(te))
        if not math.isfinite(s0):
            raise ValueError(
                f"spacing='karras' needs alpha > 0 at t_start={ts:g} (sigma/alpha is infinite there)"
            )
        r0, r1 = s0 ** (1.0 / rho), s1 ** (1.0 / rho)
        g = path.t_of_s((r0 + (r1 - r0) * u) ** rho)
    g[0], g[-1] = ts, te  # exact ends despite inversion rounding
    return as_grid(path, g)


_build = grid  # ``resolve`` takes an argument named ``grid``


def as_grid(path: Path, g) -> torch.Tensor:
    """Validate a user's grid: 1-D, at least 2 finite times, strictly decreasing, inside the path's range.

    Returns it as a float64 CPU tensor.
    """
    if isinstance(g, (int, float)) or (isinstance(g, torch.Tensor) and g.dim() == 0):
        raise TypeError(
            "grid must be a 1-D sequence of times; to build one from a step count use pfode.grid()"
        )
    try:
        g = as_f64(g).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"grid must be a 1-D tensor or sequence of times: {e}") from None
    if g.dim() != 1 or g.numel() < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"grid has non-finite times: {g.tolist()}")
    bad = torch.nonzero(g[1:] >= g[:-1]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"grid must decrease strictly (noise to data); "
            f"grid[{i}]={float(g[i])!r} <= grid[{i + 1}]={float(g[i + 1])!r}"
        )
    if float(g[-1]) < path.t_lo or float(g[0]) > path.t_hi:
        raise ValueError(
            f"grid spans [{float(g[-1])!r}, {float(g[0])!r}], "
            f"outside the range [{path.t_lo:g}, {path.t_hi:g}] of {path!r}"
        )
    return g


def resolve(
    path: Path,
    solver,
    grid=None,
    nfe: int | None = None,
    *,
    spacing: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
):
    """The one resolution of a run request into ``(grid, solver)``; every entry point calls it.

    An adaptive solver (dopri5) needs neither: it integrates from ``t_start`` to ``t_end`` (default the path's
    ``t_max`` and ``t_min``). Otherwise give ``grid`` (decreasing path times) or ``nfe`` (network evaluations: the
    ``spacing`` grid from ``t_start`` to ``t_end`` with as many steps as ``solver`` can spend exactly, plus one
    for the final denoising step when ``denoise``). ``solver.for_nfe`` may return another solver object for that budget
    (e.g. DPM-Solver-fast's order list). ``steps`` is never a number of evaluations: pass ``nfe`` for that.
    """
    if grid is not None and nfe is not None:
        raise ValueError("give either grid= or nfe=, not both")
    if grid is None and nfe is None and solver.adaptive:  # an adaptive solver needs only the two ends
        ts, te = _bounds(path, t_start, t_end)
        return torch.tensor([ts, te], dtype=torch.float64), solver
    if grid is None:
        if nfe is None:
            raise ValueError("give grid= (pfode.grid(path, steps)) or nfe= (evaluations to spend)")
        check_int("nfe", nfe, 1)
        if solver.adaptive:
            raise ValueError(
                f"{solver.name} is adaptive: it chooses its own evaluations; give rtol/atol instead of nfe"
            )
        te = path.t_min if t_end is None else t_end
        if denoise and float(path.sigma(te)) == 0.0:
            raise ValueError(
                f"with nfe=, end the grid above zero noise (t_end={te!r} has sigma = 0); denoise=True finishes there"
            )
        steps, solver = solver.for_nfe(nfe, denoise)
        return _build(path, steps, spacing, t_start=t_start, t_end=t_end), solver
    if isinstance(grid, int) and not isinstance(grid, bool):
        raise TypeError(f"grid={grid!r} is a number; pass nfe={grid} or pfode.grid(path, {grid})")
    return as_grid(path, grid), solver
