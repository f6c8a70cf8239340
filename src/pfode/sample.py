"""``pfode.sample``: integrate the probability-flow ODE (or a reverse SDE) along a grid."""

from __future__ import annotations

import functools
import itertools
import math
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import adjoint
from ._checks import all_finite, check_choice, check_state
from .grids import resolve
from .predictions import VELOCITY_AT_ZERO, Denoiser, check_denoiser
from .skipping import SkippingEvaluator, check_supported, resolve_skip
from .solvers.base import Evaluator, Solver, Table, available, get, run
from .solvers.fused import execute, fuse
from .tuning.recipe import Recipe

__all__ = ["sample", "Sampler", "SampleOutput", "NonFiniteError", "PerSampleNoise"]


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
        info: solver-specific extras (per-sample steps for ``dopri5``; with ``skip=``, ``"skipped"``: the grid steps
            whose evaluation was replaced, and ``"stability"``: the criterion read at each step).
    """

    x: torch.Tensor
    trajectory: list[torch.Tensor] | None
    times: list[float]
    nfe: int
    info: dict = field(default_factory=dict)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in ``[0, 2^32)`` without leaving int64 (16-bit halves)."""
    hi = ((x >> 16) * c) & 0xFFFF
    return ((hi << 16) + (x & 0xFFFF) * c) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (xor-shift / multiply, "lowbias32" constants)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """:func:`_hash32` on a Python int (no tensor, no device transfer)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


class PerSampleNoise:
    """Standard normal noise from one counter-based stream per sample.

    Sample ``i`` gets a 32-bit key drawn from ``generator`` (or torch's global generator); the
    noise of its ``k``-th draw at element ``j`` is Box-Muller of two hashes of ``(key_i, k, j)``.
    The same seed therefore gives the same noise for sample ``i`` whatever the batch size, and the
    draw is a handful of vectorised integer ops on the state's device (no per-sample loop).
    """

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None = None):
        dev = generator.device if generator is not None else torch.device("cpu")
        keys = torch.randint(0, 2**32, (like.shape[0],), generator=generator, device=dev, dtype=torch.int64)
        self.keys = keys.to(like.device)[:, None]
        self.idx = 2 * torch.arange(like[0].numel(), device=like.device, dtype=torch.int64)[None]
        self.like = like
        self.k = 0
        self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32

    def __call__(self) -> torch.Tensor:
        self.k += 1
        base = _hash32(self.keys ^ _hash32_int(self.k * 0x9E3779B9 & _M32))  # step key hashed on the host
        h1 = _hash32(base ^ self.idx)
        h2 = _hash32(base ^ (self.idx + 1))
        u1 = (h1.to(self.dtype) + 0.5) * 2.0**-32
        u2 = (h2.to(self.dtype) + 0.5) * 2.0**-32
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z.reshape(self.like.shape).to(self.like.dtype)


class Sampler:
    """A prepared sampler: grid, step plan and per-device time tensors are computed once and reused.

    ``Sampler(denoiser, grid or nfe=..., solver=...)(x_T)`` equals ``pfode.sample(...)`` with the
    same arguments; reuse the object when sampling many batches to skip the set-up (grid, plan).
    Calls are independent: no state is kept between them besides those caches.

    Solvers with folded steps (:mod:`pfode.solvers.fused`: DDIM/DDPM, DPM-Solver and DPM-Solver++, UniPC, DEIS,
    iPNDM, LMS, USF, Euler-Maruyama, SDE-DPM-Solver++(2M), Euler ancestral and the Runge-Kutta family) run each
    step as the fewest tensor operations its algebra allows on float32 and float64 states, without callbacks or
    trajectories (which read ``x0_hat`` and so run the unfolded step; both agree to rounding).

    ``compile``: ``True`` runs the whole folded loop, network included, as one ``torch.compile`` graph
    (``fullgraph=True``: no graph breaks and no host reads inside it), under CUDA graphs (mode
    ``"reduce-overhead"``) on a CUDA device; a string chooses the ``torch.compile`` mode. The first call per
    batch shape, dtype and device compiles (seconds to a minute); the result equals the eager sampler to rounding.
    With ``check_finite=False`` a call makes no host-device synchronisation at all.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        grid=None,
        solver: str | Solver | None = None,
        *,
        nfe: int | None = None,
        spacing: str = "logsnr",
        t_start: float | None = None,
        t_end: float | None = None,
        denoise: bool = True,
        recipe=None,
        skip=None,
        compile: bool | str = False,
    ):
        check_denoiser(denoiser)
        self.denoiser = denoiser
        if isinstance(grid, Recipe):
            if recipe is not None:
                raise ValueError("give the recipe once (as grid or as recipe=)")
            recipe, grid = grid, None
        self.recipe = recipe
        if recipe is not None:
            if not isinstance(recipe, Recipe):
                raise TypeError(f"recipe must be a pfode.Recipe (pfode.Recipe.load(file)), got {type(recipe).__name__}")
            given = {"grid": grid, "solver": solver, "nfe": nfe, "t_start": t_start, "t_end": t_end}
            clash = [k for k, v in given.items() if v is not None] + (["spacing"] if spacing != "logsnr" else [])
            if clash:
                raise ValueError(f"a recipe fixes the times and the solver; do not also give {', '.join(clash)}")
            recipe.check(denoiser.path)
            grid, solver, denoise = recipe.grid(), recipe.solver(), recipe.denoise
        solver = get("dpm++2m" if solver is None else solver)
        self.grid, self.solver = resolve(
            denoiser.path, solver, grid, nfe, spacing=spacing, t_start=t_start, t_end=t_end, denoise=denoise
        )
        self.table = Table(denoiser.path, self.grid, False, denoiser.prediction in VELOCITY_AT_ZERO)
        # denoise=True adds the zero-noise point unless the grid already ends there
        self.zero_end = bool(denoise) and not self.table[-1].zero
        if self.zero_end:
            self.table.append_zero()
        self.adaptive = self.solver.adaptive
        if self.adaptive:
            if self.table[len(self.grid) - 1].zero:
                raise ValueError(
                    f"{self.solver.name} needs a grid ending above zero noise; denoise=True finishes at zero noise"
                )
            self.plan = None
        else:
            self.plan = self.solver.plan(self.table)
        # step skipping (SADA): a policy, checked against the solver's plan once
        self.skip = resolve_skip(skip)
        if self.skip is not None:
            check_supported(self.skip, self.solver, self.plan)
        self._times: dict = {}
        self.compile = _check_compile(compile, self)
        self._compiled: dict = {}

    @functools.cached_property
    def fused(self) -> list | None:
        """The folded plan (:mod:`pfode.solvers.fused`), built on first use; ``None`` where the solver has none."""
        if self.plan is None or self.skip is not None:
            return None
        return fuse(self.solver, self.plan, self.table, self.denoiser.prediction)

    @property
    def nfe(self) -> int | None:
        """Network evaluations one call spends (``None`` for adaptive solvers)."""
        return None if self.plan is None else sum(st.evals for st in self.plan)

    def _evaluator(self, x: torch.Tensor, cond) -> Evaluator:
        key = (x.shape[0], x.device, x.dtype)
        if key not in self._times:
            self._times[key] = Evaluator.times(self.denoiser, self.table, x)
        ev = Evaluator(self.denoiser, self.table, x, cond, times=self._times[key])
        return ev if self.skip is None else SkippingEvaluator(ev, self.table, self.skip, len(self.plan))

    def __call__(
        self,
        x_T: torch.Tensor,
        *,
        callback: Callable[[dict], None] | None = None,
        return_trajectory: bool = False,
        return_info: bool = False,
        generator: torch.Generator | None = None,
        cond: dict | None = None,
        check_finite: bool = True,
        gradient: str = "backprop",
        params=None,
    ):
        folded = self.fused is not None and x_T.dtype in (torch.float32, torch.float64)
        # the compiled loop checks x_T inside its graph (one host read for both checks)
        check_state("x_T", x_T, finite=check_finite and not (self.compile and folded))
        if self.recipe is not None:
            self.recipe.check_shape(x_T)  # the path was checked when the sampler was prepared
            x_T = self.recipe.start(x_T, self.denoiser.path)
        if gradient != "backprop":
            if self.skip is not None:
                raise ValueError(f"skip={self.skip!r} is not supported with gradient={gradient!r} (use 'backprop')")
            if callback is not None or return_trajectory:
                raise ValueError(f"gradient={gradient!r} supports neither callback nor return_trajectory")
            x = adjoint.attach(self, x_T, cond, gradient, params)
            if check_finite and not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"solver {self.solver.name!r} produced non-finite values")
            return SampleOutput(x, None, self._times_list(), self.nfe) if return_info else x
        if params is not None:
            raise ValueError("params= is for gradient='discrete' or 'continuous' (backprop differentiates everything)")
        if self.adaptive:
            return self._adaptive(x_T, cond, callback, return_trajectory, return_info, check_finite, generator)
        noise = PerSampleNoise(x_T, generator) if self.solver.stochastic else None
        if folded and callback is None and not return_trajectory:
            x = self._folded(x_T, cond, noise, check_finite)
            if x is None:
                self._locate_non_finite(x_T, cond, noise)
            return SampleOutput(x, None, self._times_list(), self.nfe) if return_info else x
        if self.compile:
            raise ValueError(
                "compile=True runs the folded loop on float32/float64 states without callback or return_trajectory; "
                f"got dtype {x_T.dtype}" + (", a callback" if callback is not None else "")
                + (", return_trajectory=True" if return_trajectory else "")
            )
        ev = self._evaluator(x_T, cond)
        x, traj = self._loop(x_T, ev, noise, callback, return_trajectory, None)
        if check_finite and not all_finite(x):
            self._locate_non_finite(x_T, cond, noise)
        if return_trajectory or return_info:
            info = {} if self.skip is None else {"skipped": list(ev.skipped), "stability": dict(ev.stability)}
            return SampleOutput(x, traj, self._times_list(), ev.count, info)
        return x

    def _folded(self, x_T, cond, noise, check_finite):
        """The folded loop's result, or ``None`` when ``check_finite`` and the result is not finite."""
        key = (x_T.shape[0], x_T.device, x_T.dtype)
        if key not in self._times:
            self._times[key] = Evaluator.times(self.denoiser, self.table, x_T)
        t_net = self._times[key][0]
        if not self.compile:
            x = _run_folded(self.fused, self.denoiser, x_T, t_net, cond, noise)
            return x if not check_finite or all_finite(x) else None
        ckey = key + (tuple(x_T.shape), bool(check_finite))
        fn = self._compiled.get(ckey)
        if fn is None:
            t_all = torch.stack(t_net)
            fn = _compile_folded(self.fused, self.denoiser, t_all, self.compile, x_T, check_finite)
            self._compiled[ckey] = fn
        if not check_finite:
            x = fn(x_T, cond, noise)
        else:
            x, ok = fn(x_T, cond, noise)
            if not bool(ok):  # the one host read of the call
                check_state("x_T", x_T)
                return None
        # CUDA graphs reuse their output buffers on the next replay: hand the caller its own tensor
        return x.clone() if x_T.device.type == "cuda" else x

    def _times_list(self) -> list[float]:
        return [self.table[i].t for i in range(self.table.n_steps + 1)]

    def _loop(self, x, ev, noise, callback, return_trajectory, flags):
        table = self.table
        traj = [x] if return_trajectory else None
        on_step = None
        if flags is not None or callback is not None or traj is not None:

            def on_step(st, x_prev, hist, x_next, hist_next, x0):
                if flags is not None:
                    flags.append(bool(torch.isfinite(x0).all()))
                if callback is not None:
                    callback({"i": st.i, "t": table[st.i].t, "t_next": table[st.i + 1].t, "x": x_prev, "x0_hat": x0})
                if traj is not None:
                    traj.append(x_next)

        x, _ = run(self.solver, self.plan, x, ev, noise, on_step)
        return x, traj

    def _locate_non_finite(self, x_T, cond, noise):
        """The result was not finite: replay the same call (same noise streams) checking every step."""
        if noise is not None:
            noise.k = 0
        flags: list[bool] = []
        replayed, _ = self._loop(x_T, self._evaluator(x_T, cond), noise, None, False, flags)
        name = self.solver.name
        if False in flags:
            k = flags.index(False)
            raise NonFiniteError(
                f"the network returned non-finite values at step {k} (t={self.table[k].t:.6g}) with solver "
                f"{name!r}; check the network and its inputs at that time"
            )
        if not bool(torch.isfinite(replayed).all()):
            raise NonFiniteError(f"solver {name!r} produced non-finite values (the network's outputs were finite)")
        raise NonFiniteError(
            f"the result of solver {name!r} was not finite, but a replay of the same call was: the network's "
            "outputs are not deterministic (dropout or batch statistics in training mode? call model.eval()) "
            "or it returns non-finite values intermittently"
        )

    def _adaptive(self, x_T, cond, callback, return_trajectory, return_info, check_finite, generator=None):
        if x_T.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"solver {self.solver.name!r} controls its error in float32 or float64; x_T is {x_T.dtype}: load the "
                "model in float32 (pfode.models.load(..., dtype=torch.float32)) or use a fixed-step solver"
            )
        g = self.grid
        extra = {}
        if self.solver.stochastic:  # per-sample noise streams seeded by the caller's generator
            streams = PerSampleNoise(x_T, generator)
            extra["noise"] = lambda s_from, s_to: streams()
        x, info = self.solver.solve(self.denoiser, x_T, float(g[0]), float(g[-1]), cond, callback=callback, **extra)
        nfe_used = info["nfe"]
        traj = [x_T, x] if return_trajectory else None
        times = [float(g[0]), float(g[-1])]
        if self.zero_end:
            x = self._evaluator(x, cond)(x, len(self.grid) - 1)
            nfe_used += 1
            times.append(float(self.denoiser.path.t_lo))
            if callback is not None:
                t_prev = torch.full((x.shape[0],), times[1], dtype=torch.float64, device=x.device)
                callback(
                    {
                        "i": info["attempts"],
                        "t": torch.full_like(t_prev, times[2]),
                        "t_prev": t_prev,
                        "x": x,
                        "x0_hat": x,
                        "accepted": torch.ones_like(t_prev, dtype=torch.bool),
                    }
                )
            if traj is not None:
                traj.append(x)
        if check_finite and not bool(torch.isfinite(x).all()):
            raise NonFiniteError("non-finite values in the dopri5 solution")
        if return_trajectory or return_info:
            return SampleOutput(x, traj, times, nfe_used, info)
        return x


def _run_folded(fplan, den, x, t_net, cond, noise):
    """The folded sampling loop (eagerly, or traced whole by ``torch.compile``)."""
    return execute(fplan, x, lambda u, k: den.raw(u, t_net[k], cond), noise)


def _compile_folded(fplan, den, t_all, compile, like, check_finite):
    """The folded loop compiled for one batch shape, dtype and device. The plan, the network and the network times
    (``t_all``, ``[points, B]``) are closed over, so the compiled call guards on the state and ``cond`` alone. With
    ``check_finite`` it also returns whether ``x`` and the result are finite, reduced inside the graph."""

    def loop(x, cond, noise):
        out = execute(fplan, x, lambda u, k: den.raw(u, t_all[k], cond), noise)
        if check_finite:
            return out, torch.isfinite(x).all() & torch.isfinite(out).all()
        return out

    # torch.compile caches compiled graphs per code object (at most 8 each); every prepared loop gets its own code
    # object, so that any number of samplers, shapes and dtypes can be compiled in one process
    code = loop.__code__.replace(co_name=f"pfode_folded_loop_{next(_LOOPS)}")
    loop = types.FunctionType(code, loop.__globals__, code.co_name, None, loop.__closure__)
    mode = compile if isinstance(compile, str) else ("reduce-overhead" if like.device.type == "cuda" else None)
    return torch.compile(loop, fullgraph=True, dynamic=False, mode=mode)


_LOOPS = itertools.count()


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_compile(compile, sampler) -> bool | str:
    if isinstance(compile, str):
        check_choice("compile", compile, _COMPILE_MODES)
    elif not isinstance(compile, bool):
        raise TypeError(f"compile must be True, False or a torch.compile mode {_COMPILE_MODES}, got {compile!r}")
    if compile and sampler.fused is None:
        if sampler.adaptive:
            why = f"{sampler.solver.name!r} is an adaptive solver"
        elif sampler.skip is not None:
            why = "step skipping runs the unfolded steps"
        else:
            why = f"solver {sampler.solver.name!r} has no folded steps"
        raise ValueError(
            f"compile={compile!r} compiles the folded fixed-step loop, but {why}; solvers with "
            f"folded steps: {', '.join(n for n in available() if get(n).fusable)}"
        )
    return compile


_CACHE_SIZE = 8
#: prepared samplers per denoiser (weakly keyed: nothing is written into the user's object, and a cache
#: goes away with its denoiser)
_SAMPLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepared(denoiser, grid, solver, nfe, spacing, t_start, t_end, denoise, skip=None) -> Sampler:
    """A :class:`Sampler` for these arguments, from the denoiser's LRU cache when it has one."""

    def build():
        return Sampler(
            denoiser, grid, solver, nfe=nfe, spacing=spacing, t_start=t_start, t_end=t_end, denoise=denoise, skip=skip
        )

    if not isinstance(denoiser, Denoiser):
        return build()  # Sampler raises the TypeError
    if isinstance(grid, torch.Tensor):
        grid_key = tuple(grid.detach().to("cpu", torch.float64).flatten().tolist())
    elif isinstance(grid, (list, tuple)):
        grid_key = tuple(grid)
    else:
        grid_key = grid
    key = (denoiser.prediction, denoiser.time_input, solver, grid_key, nfe, spacing, t_start, t_end, bool(denoise))
    key += (skip,)
    try:
        hash(key)
    except TypeError:  # an unhashable argument: no caching
        return build()
    cache = _SAMPLERS.get(denoiser)
    if cache is None:
        cache = _SAMPLERS[denoiser] = OrderedDict()
    hit = cache.get(key)
    if hit is not None and hit[0] is denoiser.path:  # the path object is part of the key
        cache.move_to_end(key)
        return hit[1]
    sampler = build()
    cache[key] = (denoiser.path, sampler)
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return sampler


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    grid=None,
    solver: str | Solver | None = None,
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
    gradient: str = "backprop",
    params=None,
    skip=None,
    eps=None,
):
    """Integrate the probability-flow ODE of ``denoiser`` from ``x_T`` along ``grid``.

    Args:
        denoiser: a :class:`pfode.Denoiser` (any path, any prediction type).
        x_T: starting state ``[B, ...]`` at ``grid[0]`` (e.g. ``sigma(t_max) * randn``).
        grid: decreasing path times (:func:`pfode.grid` or a tensor), or a tuned :class:`pfode.Recipe` (it fixes
            the times, the solver and the final denoising step); or leave it out and give ``nfe``.
        solver: a name from :func:`pfode.solvers.available` or a solver object (default ``"dpm++2m"``).
        nfe: network evaluations to spend; builds a ``spacing`` grid from ``t_start`` (default
            ``t_max``) to ``t_end`` (default ``t_min``) with the matching number of steps.
        denoise: finish with the denoising step ``x0_hat`` to zero noise after the grid's last time
            (one evaluation, counted in ``nfe``); ``False`` returns the state at the grid's last time.
        callback: called after each step with ``{"i", "t", "t_next", "x", "x0_hat"}`` (``x`` is the state
            at ``t``; ``t`` values are host floats). ``dopri5`` calls it after every step attempt with
            per-sample times instead (see :meth:`pfode.solvers.Dopri5.solve`).
        return_trajectory: also return the states at every grid time.
        return_info: return a :class:`SampleOutput` (samples, evaluations used, solver info).
        generator: seeds the per-sample noise streams of stochastic solvers.
        cond: keyword arguments passed to the network at every call (conditioning tensors).
        check_finite: raise a ``ValueError`` if ``x_T`` is not finite and :class:`NonFiniteError` if the result is not,
            naming the first step whose ``x0_hat`` was not (one check after the loop, no host-device sync inside
            it; on failure the call is replayed with the same noise streams, checking every step). ``False``: no
            checks, and no host-device synchronisation in the call.
        gradient: how gradients flow back through the loop: ``"backprop"`` (autograd through every step),
            ``"discrete"`` (exact adjoint of the solver, memory of the grid states only) or ``"continuous"``
            (AdjointDPM, constant memory; solvers that supply :meth:`~pfode.solvers.Solver.adjoint_weights`).
            See :mod:`pfode.adjoint`.
        params: with an adjoint ``gradient``, the tensors to differentiate (default: the network's parameters).
        skip: ``"sada"`` or a :class:`pfode.skipping.SADA` to replace network evaluations where SADA's stability
            criterion holds (fixed-step ODE solvers evaluating once per step); skipped calls are not counted in
            ``nfe`` and ``return_info`` lists them in ``info["skipped"]`` (grid steps). See :mod:`pfode.skipping`.
    Returns:
        the samples (shaped like ``x_T``), or a :class:`SampleOutput`.

    The prepared :class:`Sampler` (grid, plan, time tensors) is kept in a small cache weakly keyed by the
    denoiser and keyed by every argument that shapes it, so repeated calls skip the set-up.

    A consistency trajectory model (:class:`pfode.nets.ctm.CTMModel`, or a Denoiser wrapping one, as
    :func:`pfode.models.load` returns) is not integrated: it jumps, once per step, along ``grid`` (or ``nfe``
    Karras-spaced jumps) by :func:`pfode.nets.ctm.ctm_sample` with ``gamma = 0`` (call that for gamma-sampling).

    A stochastic-interpolant model (:class:`pfode.interpolants.InterpolantModel`, or an exact
    :class:`pfode.analytic.GMMBridge`) carries source samples ``x_T`` to data by :func:`pfode.interpolants.transport`:
    ``solver`` ``"euler"``, ``"heun"`` (default) or ``"rk4"``, ``nfe`` (default 16) on a uniform grid in ``t``, and
    ``eps`` (default 0, the ODE) the diffusion of its SDE family, chosen at sampling time.
    """
    from .analytic import GMMBridge
    from .interpolants import InterpolantModel, transport

    if isinstance(denoiser, (InterpolantModel, GMMBridge)):
        extra = {"grid": grid, "callback": callback, "cond": cond, "skip": skip, "params": params}
        bad = [k for k, v in extra.items() if v is not None] + (["return_info"] if return_info else [])
        if bad or gradient != "backprop":
            raise ValueError(
                f"an interpolant model is transported on a uniform grid in t; {', '.join(bad) or 'gradient'} "
                "is not supported for it (see pfode.interpolants.transport)"
            )
        out = transport(
            denoiser, x_T, nfe=16 if nfe is None else nfe, solver=solver or "heun", eps=0.0 if eps is None else eps,
            t_start=1.0 if t_start is None else t_start, t_end=0.0 if t_end is None else t_end, generator=generator,
            return_trajectory=return_trajectory,
        )
        return out
    if eps is not None:
        raise ValueError("eps is the diffusion of a stochastic-interpolant model's SDE; this denoiser has none")
    from .nets.ctm import CTMModel, ctm_sample

    ctm = denoiser if isinstance(denoiser, CTMModel) else getattr(denoiser, "net", None)
    if isinstance(ctm, CTMModel):
        extra = {"solver": solver, "callback": callback, "cond": cond, "skip": skip, "params": params}
        bad = [k for k, v in extra.items() if v is not None] + [
            k for k, v in (("return_trajectory", return_trajectory), ("return_info", return_info)) if v
        ]
        if bad or gradient != "backprop":
            raise ValueError(f"a CTM model samples by jumps; {', '.join(bad) or 'gradient'} is not supported for it")
        return ctm_sample(ctm, x_T, grid, nfe=nfe if grid is None else None, generator=generator)
    check_choice("gradient", gradient, adjoint.GRADIENTS)
    sampler = _prepared(denoiser, grid, solver, nfe, spacing, t_start, t_end, denoise, skip)
    return sampler(
        x_T,
        callback=callback,
        return_trajectory=return_trajectory,
        return_info=return_info,
        generator=generator,
        cond=cond,
        check_finite=check_finite,
        gradient=gradient,
        params=params,
    )
