"""diffusers interop: scheduler configs -> pfode paths, models -> :class:`pfode.Denoiser`, and a scheduler.

Three entry points:

* :func:`path_from_config` maps a diffusers scheduler config (DDPM-style or flow matching) to a
  :class:`PathSpec`: a pfode path, prediction type and time-input convention.
* :func:`denoiser` wraps a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, flow
  transformers such as ``SD3Transformer2DModel``) as a :class:`pfode.Denoiser`, ready for
  :func:`pfode.sample`. Conditioning (``encoder_hidden_states``, ``pooled_projections``, ...) goes in
  ``cond=``.
* :class:`PFODEScheduler` is a diffusers scheduler that runs any (non-adaptive) pfode solver inside a
  diffusers pipeline::

      pipe.scheduler = PFODEScheduler.from_config(pipe.scheduler.config, solver="unipc", spacing="logsnr")

Conventions
-----------
DDPM-style schedules (``beta_schedule`` ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or
``trained_betas``) become :class:`pfode.paths.VPDiscrete` with the betas diffusers computes (same
formulas, float32 as diffusers, then float64 cumulative products). Training timestep ``i`` sits at path
time ``t = (i + 1) / N`` and the network sees ``i`` (``time_input="index"``; fractional timesteps
between table entries are fine for diffusers UNets). Prediction types: ``epsilon`` -> ``eps``,
``sample`` -> ``x0``, ``v_prediction`` -> ``v``.

Flow matching (``FlowMatchEulerDiscreteScheduler`` and relatives, or ``use_flow_sigmas=True`` /
``prediction_type="flow_prediction"``) becomes :class:`pfode.paths.Linear`: path time ``t`` is
diffusers' ``sigma`` (``x = (1 - sigma) x0 + sigma noise``) and the transformer sees
``timestep = sigma * num_train_timesteps``. The model predicts ``noise - x0 = dx/dsigma`` (what
``FlowMatchEulerDiscreteScheduler.step`` integrates: ``x + (sigma_next - sigma) * output``), which is
pfode's ``velocity`` on the Linear path with no sign change. ``shift`` only shapes sampling grids:
diffusers' schedules put a uniform ``s`` through ``sigma = shift s / (1 + (shift - 1) s)``; pfode's
``"uniform"``/``"quadratic"`` spacings do the same in the :class:`PFODEScheduler` (``"logsnr"`` and
``"karras"`` are invariant to the shift up to their end points).

Learned variance: a model whose config says ``variance_type="learned"``/``"learned_range"`` returns
``2C`` channels (mean part, variance part). The probability-flow ODE needs only the mean part, so
:func:`denoiser` and :class:`PFODEScheduler` keep the first ``C`` channels (as diffusers' DDPM and
DiT pipelines do). :func:`path_from_config` refuses such configs unless ``learned_variance="drop"``.

Matching diffusers' own samplers (agreement to float32 round-off; tests check 1e-4 relative)
--------------------------------------------------------------------------------------------
Use the diffusers scheduler's timesteps as the pfode grid, ``t = (timestep + 1) / N``
(:func:`grid_from_timesteps`, or :func:`grid_from_scheduler` which also reads the final noise level),
and pass it to :func:`pfode.sample`.

* ``DDIMScheduler`` (eta = 0) == pfode ``"ddim"`` with ``clip_sample=False`` and ``thresholding=False``
  (pfode never clips ``x0_hat``); ``set_alpha_to_one=True`` is pfode's final step to zero noise
  (``denoise=True``: alpha = 1 there, the step returns ``x0_hat``). With ``set_alpha_to_one=False``
  the last step ends at ``alphas_cumprod[0]`` instead: append ``t = 1/N`` to the grid and use
  ``denoise=False``. Any ``timestep_spacing``/``steps_offset`` is fine: the grid is the timesteps.
* ``DPMSolverMultistepScheduler`` == pfode ``"dpm++2m"`` with ``algorithm_type="dpmsolver++"``,
  ``solver_order=2``, ``solver_type="midpoint"`` (the paper's 2M update, which pfode implements),
  ``final_sigmas_type="zero"`` (== ``denoise=True``; diffusers then always takes a first-order last
  step, which is pfode's step to zero noise), ``lower_order_final=True`` and pfode's
  ``lower_order_final=True`` (both defaults; for order 2 they only touch that last step),
  ``euler_at_final=False``, ``thresholding=False`` and no ``use_karras_sigmas``/``use_exponential_sigmas``/
  ``use_lu_lambdas`` (those produce fractional timesteps whose sigmas diffusers interpolates in
  log-sigma, while :class:`~pfode.paths.VPDiscrete` interpolates ``log alpha`` in ``t``).
  ``final_sigmas_type="sigma_min"`` (grid ending at ``t = 1/N``, ``denoise=False``) matches too: on grids of
  fewer than 15 steps both make the last step first order when ``lower_order_final=True``.
* ``FlowMatchEulerDiscreteScheduler`` == pfode ``"euler"`` with ``variable="t"`` on the grid
  ``t = scheduler.sigmas[:-1]`` and ``denoise=True`` (its final step to ``sigma = 0`` is
  ``x - sigma * v = x0_hat``).

:class:`PFODEScheduler` reproduces these inside a pipeline with ``spacing`` set to the scheduler's
class name (``spacing="DPMSolverMultistepScheduler"`` takes that scheduler's timesteps) or to
``"leading"``/``"trailing"``/``"linspace"`` (``DDIMScheduler``'s definitions; for flow matching
``"linspace"`` is ``FlowMatchEulerDiscreteScheduler``'s shifted schedule).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

try:
    import diffusers as _diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils import BaseOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as e:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "pfode.integrations.diffusers needs the 'diffusers' package: pip install 'pfode[diffusers]'"
    ) from e

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..engine import drive
from ..grids import SPACINGS, as_grid
from ..grids import grid as make_grid
from ..paths import Linear, Path, VPDiscrete
from ..predictions import Coeffs, Denoiser, get_prediction
from ..solvers.base import Solver, Table
from ..solvers.base import get as get_solver

__all__ = [
    "PathSpec",
    "path_from_config",
    "betas_from_config",
    "denoiser",
    "grid_from_timesteps",
    "grid_from_scheduler",
    "PFODEScheduler",
    "PFODESchedulerOutput",
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: diffusers prediction_type -> pfode prediction (DDPM-style schedules)
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_FIXED_VARIANCES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
_LEARNED_VARIANCES = ("learned", "learned_range")
_TIME_SHIFT_TYPES = ("exponential", "linear")
_DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")
_FINAL_SIGMAS = ("zero", "sigma_min")


# ------------------------------------------------------------------------------------------------
# config -> path
# ------------------------------------------------------------------------------------------------
def _as_config(config) -> dict:
    """A plain dict from a config mapping or from an object with ``.config`` (a scheduler)."""
    try:
        return dict(config if isinstance(config, dict) else getattr(config, "config", config))
    except (TypeError, ValueError):
        raise TypeError(
            "scheduler_config must be a diffusers scheduler config (a dict) or a scheduler, "
            f"got {type(config).__name__}"
        ) from None


def _n_train(cfg: dict) -> int:
    n = cfg.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"num_train_timesteps={n!r}: need an integer >= 2")
    return n


def _unsupported(key: str, value, allowed, extra: str = "") -> ValueError:
    return ValueError(f"{key}={value!r} is not supported; supported values: {', '.join(map(repr, allowed))}{extra}")


def _family(cfg: dict) -> str:
    """``"flow"`` for flow-matching configs, ``"ddpm"`` for DDPM-style (beta) schedules."""
    fam = cfg.get("family")
    if fam in ("ddpm", "flow"):
        return fam
    name = cfg.get("_class_name")
    if isinstance(name, str) and name.startswith("FlowMatch"):
        return "flow"
    if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        return "flow"
    if "shift" in cfg and not any(k in cfg for k in ("beta_schedule", "beta_start", "trained_betas")):
        return "flow"
    return "ddpm"


def betas_from_config(config) -> torch.Tensor:
    """The ``betas`` diffusers builds from a DDPM-style config (float32, exactly as diffusers computes them).

    ``trained_betas`` wins when given; otherwise ``beta_schedule`` is ``"linear"``
    (``linspace(beta_start, beta_end, N)``), ``"scaled_linear"`` (``linspace(sqrt(beta_start),
    sqrt(beta_end), N) ** 2``) or ``"squaredcos_cap_v2"`` (the improved-DDPM cosine betas
    ``min(1 - abar((i + 1)/N) / abar(i/N), 0.999)``, ``abar(t) = cos((t + 0.008)/1.008 pi/2)^2``).
    """
    cfg = _as_config(config)
    n = _n_train(cfg)
    trained = cfg.get("trained_betas")
    if trained is not None:
        b = torch.tensor(np.asarray(trained, dtype=np.float64), dtype=torch.float32).flatten()
        if b.numel() != n:
            raise ValueError(f"trained_betas has {b.numel()} entries but num_train_timesteps={n}")
        return b
    schedule = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    if schedule == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
    raise _unsupported("beta_schedule", schedule, BETA_SCHEDULES, " (or give trained_betas)")


class _ScaledTime:
    """Network time ``scale * t`` (flow transformers see ``sigma * num_train_timesteps``)."""

    def __init__(self, scale: float):
        self.scale = float(scale)
        self.__name__ = f"{self.scale:g}*t"

    def __call__(self, t):
        return as_f64(t) * self.scale


@dataclass(frozen=True)
class PathSpec:
    """What a diffusers scheduler config says about its model, in pfode terms.

    Attributes:
        path: the pfode path (:class:`~pfode.paths.VPDiscrete` or :class:`~pfode.paths.Linear`).
        prediction: pfode prediction type (``"eps"``, ``"x0"``, ``"v"`` or ``"velocity"``).
        time_input: the pfode time-input convention (``"index"`` or a callable ``t -> N t``).
        family: ``"ddpm"`` (beta schedules) or ``"flow"`` (flow matching).
        num_train_timesteps: ``N``.
        prediction_type: diffusers' name of the prediction type.
        shift: flow-matching time shift (1 for DDPM-style configs).
        use_dynamic_shifting: flow matching with a resolution-dependent shift ``mu`` given at sampling time.
        time_shift_type: ``"exponential"`` (``shift = e^mu``) or ``"linear"`` (``shift = mu``).
        learned_variance: the model returns ``2C`` channels (mean part first).
    """

    path: Path
    prediction: str
    time_input: str | Callable
    family: str
    num_train_timesteps: int
    prediction_type: str
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    learned_variance: bool = False

    # -- timesteps <-> path time -------------------------------------------------------------
    def t_of_timestep(self, timestep) -> torch.Tensor:
        """Path time (float64) of diffusers timesteps: ``(ts + 1) / N`` (DDPM) or ``ts / N`` (flow)."""
        ts = as_f64(timestep)
        return (ts + 1.0 if self.family == "ddpm" else ts) / self.num_train_timesteps

    def timestep_of_t(self, t) -> torch.Tensor:
        """Diffusers timestep (float64) of path time ``t``: ``N t - 1`` (DDPM) or ``N t`` (flow)."""
        tn = as_f64(t) * self.num_train_timesteps
        return tn - 1.0 if self.family == "ddpm" else tn

    @property
    def t_first(self) -> float:
        """Noisiest training time (timestep ``N - 1`` for DDPM, ``sigma = 1`` for flow)."""
        return 1.0

    @property
    def t_last(self) -> float:
        """Least noisy training time: timestep 0 (DDPM); ``shift(1/N)``, diffusers' ``sigma_min`` (flow)."""
        return float(self.apply_shift(1.0 / self.num_train_timesteps))

    def shift_value(self, mu: float | None = None) -> float:
        """The shift in force: ``shift``, or from ``mu`` with dynamic shifting."""
        if self.family != "flow":
            return 1.0
        if self.use_dynamic_shifting:
            if mu is None:
                raise ValueError("mu must be given to set_timesteps when use_dynamic_shifting=True")
            return math.exp(float(mu)) if self.time_shift_type == "exponential" else float(mu)
        return self.shift

    def apply_shift(self, u, mu: float | None = None) -> torch.Tensor:
        """``sigma = shift u / (1 + (shift - 1) u)`` (identity for DDPM-style configs)."""
        u = as_f64(u)
        k = self.shift_value(mu) if (mu is not None or not self.use_dynamic_shifting) else 1.0
        return k * u / (1.0 + (k - 1.0) * u)

    def denoiser(self, net: Callable) -> Denoiser:
        """A :class:`pfode.Denoiser` for ``net(x, t_net, **cond)`` under this spec."""
        return Denoiser(net, self.path, self.prediction, self.time_input)


def path_from_config(scheduler_config, *, learned_variance: str = "error") -> PathSpec:
    """Map a diffusers scheduler config (or scheduler) to a :class:`PathSpec`.

    Args:
        scheduler_config: ``scheduler.config`` (or the scheduler) of a DDPM-style scheduler (DDPM, DDIM,
            PNDM, DPM-Solver, UniPC, Euler, ...) or of a flow-matching scheduler.
        learned_variance: ``"error"`` (default) refuses ``variance_type="learned"``/``"learned_range"``;
            ``"drop"`` accepts it (the model's first ``C`` output channels are used, see the module notes).
    Raises:
        ValueError naming the offending key and the supported values for unknown ``beta_schedule``,
        ``prediction_type``, ``variance_type``, ``time_shift_type`` and for ``rescale_betas_zero_snr=True``
        or ``invert_sigmas=True``.
    """
    check_choice("learned_variance", learned_variance, ("error", "drop"))
    cfg = _as_config(scheduler_config)
    n = _n_train(cfg)
    variance = cfg.get("variance_type")
    learned = variance in _LEARNED_VARIANCES
    if learned and learned_variance == "error":
        raise ValueError(
            f"variance_type={variance!r}: the model outputs 2C channels (mean and learned variance); "
            f"supported values: {', '.join(map(repr, _FIXED_VARIANCES))}. The probability-flow ODE needs "
            "only the mean part: pass learned_variance='drop' (pfode.integrations.diffusers.denoiser and"
            " PFODEScheduler do) to use the first C channels"
        )
    if variance not in _FIXED_VARIANCES and not learned:
        raise _unsupported("variance_type", variance, _FIXED_VARIANCES + _LEARNED_VARIANCES)
    if _family(cfg) == "flow":
        if cfg.get("invert_sigmas"):
            raise ValueError("invert_sigmas=True is not supported; supported value: False")
        tst = cfg.get("time_shift_type", "exponential")
        if tst not in _TIME_SHIFT_TYPES:
            raise _unsupported("time_shift_type", tst, _TIME_SHIFT_TYPES)
        # prediction_type is ignored here: flow models predict noise - x0 (PFODEScheduler configs carry
        # diffusers' DDPM default "epsilon", which the flow family does not use)
        shift = cfg.get("flow_shift", 1.0) if cfg.get("use_flow_sigmas") else cfg.get("shift", 1.0)
        shift = check_finite_float("shift", 1.0 if shift is None else shift, 0.0, strict=True)
        return PathSpec(
            path=Linear(t_min=(shift / n) / (1.0 + (shift - 1.0) / n), t_max=1.0 - 1e-3),
            prediction="velocity",
            time_input=_ScaledTime(n),
            family="flow",
            num_train_timesteps=n,
            prediction_type="flow_prediction",
            shift=shift,
            use_dynamic_shifting=bool(cfg.get("use_dynamic_shifting", False)),
            time_shift_type=tst,
            learned_variance=learned,
        )
    pt = cfg.get("prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise _unsupported("prediction_type", pt, PREDICTION_TYPES, " (and 'flow_prediction' with use_flow_sigmas)")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(
            "rescale_betas_zero_snr=True is not supported (zero terminal SNR puts alpha = 0 at the last "
            "timestep, where a VP table has no finite log-SNR); supported value: False"
        )
    betas = betas_from_config(cfg)
    return PathSpec(
        path=VPDiscrete(betas=betas.to(torch.float64)),
        prediction=PREDICTION_TYPES[pt],
        time_input="index",
        family="ddpm",
        num_train_timesteps=n,
        prediction_type=pt,
        learned_variance=learned,
    )


# ------------------------------------------------------------------------------------------------
# model -> Denoiser
# ------------------------------------------------------------------------------------------------
def _unwrap_output(out):
    """``.sample`` of diffusers output objects, the first entry of tuples (``return_dict=False``)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor, an object with .sample, or a tuple")


def _match_channels(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The first ``C`` channels of a ``2C``-channel (learned-variance) output; other mismatches raise."""
    if out.shape == x.shape:
        return out
    if x.dim() >= 2 and out.shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
        return out[:, : x.shape[1]]
    raise ValueError(
        f"model output shape {tuple(out.shape)} does not match the sample shape {tuple(x.shape)}: expected C "
        f"channels, or 2C for a learned-variance model (whose first C channels are used)"
    )


class _DiffusersNet:
    """``net(x, t_net, **cond)`` for a diffusers model: ``model(x, timestep=t_net, **cond)``, unwrapped."""

    def __init__(self, model):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        fn = model.forward if isinstance(model, torch.nn.Module) else model
        try:
            self.keyword = "timestep" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self.keyword = False
        dt = getattr(model, "dtype", None)
        self.dtype = dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None

    def __call__(self, x, t, **cond):
        xin = x if self.dtype is None or x.dtype == self.dtype else x.to(self.dtype)
        out = self.model(xin, timestep=t, **cond) if self.keyword else self.model(xin, t, **cond)
        return _match_channels(_unwrap_output(out), x)


def denoiser(model, scheduler_config, *, timestep_scale: float | None = None) -> Denoiser:
    """Wrap a diffusers model as a :class:`pfode.Denoiser` on the path its scheduler config describes.

    Args:
        model: ``UNet2DModel``, ``UNet2DConditionModel``, a flow transformer (``SD3Transformer2DModel``,
            ``FluxTransformer2DModel``, ...) or any callable ``model(x, timestep, **cond)``. It is called as
            ``model(x, timestep=t, **cond)`` when its signature has a ``timestep`` parameter (diffusers
            models), else ``model(x, t, **cond)``; ``.sample`` output objects and tuples are unwrapped; a
            ``2C``-channel output (learned variance) keeps its first ``C`` channels. The state is cast to
            ``model.dtype`` for the call (the solver keeps its own precision).
        scheduler_config: the model's scheduler config (``pipe.scheduler.config``) or scheduler.
        timestep_scale: flow matching only: the network sees ``timestep_scale * sigma`` (default
            ``num_train_timesteps``, as SD3; Flux transformers take ``sigma`` itself: pass ``1.0``,
            the default for models whose class name starts with ``Flux``).
    Returns:
        a :class:`pfode.Denoiser`; pass conditioning as ``pfode.sample(..., cond={...})``.
    """
    spec = path_from_config(scheduler_config, learned_variance="drop")
    time_input = spec.time_input
    if spec.family != "flow" and timestep_scale is not None:
        raise ValueError("timestep_scale applies to flow-matching configs; DDPM-style models see their timestep index")
    if spec.family == "flow" and timestep_scale is None and type(model).__name__.startswith("Flux"):
        timestep_scale = 1.0
    if timestep_scale is not None:
        time_input = _ScaledTime(check_finite_float("timestep_scale", timestep_scale, 0.0, strict=True))
    return Denoiser(_DiffusersNet(model), spec.path, spec.prediction, time_input)


def grid_from_timesteps(timesteps, scheduler_config) -> torch.Tensor:
    """pfode grid (float64 path times) of diffusers ``timesteps``: ``(ts + 1)/N`` (DDPM), ``ts/N`` (flow)."""
    spec = path_from_config(scheduler_config, learned_variance="drop")
    ts = torch.as_tensor(timesteps).detach().cpu()
    return as_grid(spec.path, spec.t_of_timestep(ts).flatten())


def grid_from_scheduler(scheduler) -> tuple[torch.Tensor, bool]:
    """``(grid, denoise)`` for :func:`pfode.sample` that follow a diffusers scheduler after ``set_timesteps``.

    Flow matching: the grid is ``scheduler.sigmas`` (path time is sigma). DDPM-style: the grid is
    ``(timesteps + 1) / N``; ``denoise`` is whether the scheduler ends at zero noise (``sigmas[-1] == 0``
    or DDIM's ``final_alpha_cumprod == 1``); otherwise its final training noise level ``t = 1/N`` is
    appended (when the timesteps stop above it).
    """
    spec = path_from_config(scheduler.config, learned_variance="drop")
    if spec.family == "flow":
        sig = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64).flatten()
        zero = float(sig[-1]) == 0.0
        return as_grid(spec.path, sig[:-1] if zero else sig), zero
    g = spec.t_of_timestep(torch.as_tensor(scheduler.timesteps).detach().cpu()).flatten()
    if hasattr(scheduler, "final_alpha_cumprod"):
        zero = float(scheduler.final_alpha_cumprod) == 1.0
    elif hasattr(scheduler, "sigmas"):
        zero = float(torch.as_tensor(scheduler.sigmas).flatten()[-1]) == 0.0
    else:
        zero = True
    if not zero and float(g[-1]) > spec.t_last:
        g = torch.cat([g, torch.tensor([spec.t_last], dtype=torch.float64)])
    return as_grid(spec.path, g), zero


# ------------------------------------------------------------------------------------------------
# PFODEScheduler
# ------------------------------------------------------------------------------------------------
@dataclass
class PFODESchedulerOutput(BaseOutput):
    """Output of :meth:`PFODEScheduler.step`.

    Attributes:
        prev_sample: the state at which the model is evaluated next (an intermediate stage of
            multi-evaluation solvers, or the next grid state), or the final sample after the last call.
        pred_original_sample: ``x0_hat`` from the model output just given.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _Program:
    """A solver's plan on one grid, and the points of the network evaluations it will make, in order."""

    def __init__(self, solver: Solver, spec: PathSpec, grid: torch.Tensor, zero_end: bool):
        self.grid, self.zero_end = grid, zero_end
        self.table = Table(spec.path, grid, zero_end)
        self.plan = solver.plan(self.table)
        self.points: list[int] = []  # the point of each evaluation
        self.first: list[int] = []  # the first evaluation of each plan step
        x, hist = torch.zeros(1, dtype=torch.float64), None
        for m, st in enumerate(self.plan):  # trace the evaluation order with a dummy state
            self.first.append(len(self.points))
            program = solver.program(x, hist, st, lambda: torch.zeros(1, dtype=torch.float64))
            x, hist, _ = drive(program, lambda xx, k: self.points.append(k) or torch.zeros_like(xx))
            if len(self.points) == self.first[-1]:
                raise ValueError(f"solver {solver.name!r} made no network evaluation in step {m}")
        self.t = torch.tensor([self.table[k].t for k in self.points], dtype=torch.float64)


@dataclass
class _Run:
    """Progress of one sampling loop through a :class:`_Program`."""

    prog: _Program
    offset: int  # index into the scheduler's timesteps of the program's first evaluation
    shape: tuple
    pos: int = 0  # next evaluation (index into prog.points)
    m: int = 0  # current plan step
    hist: object = None  # the solver's history after the last completed plan step
    program: object = None  # the current plan step's step program, suspended at its next evaluation
    k: int = 0  # the table point of that evaluation
    generator: object = None  # seeds the noise of stochastic solvers (from the latest step() call)
    stage: torch.Tensor | None = None  # full-precision state handed back last (the next evaluation's input)
    returned: torch.Tensor | None = None  # the tensor last handed back to the pipeline


class PFODEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates the probability-flow ODE with any pfode solver.

    Build it from a pipeline's scheduler config; the model convention (DDPM-style betas and
    ``prediction_type``, or flow matching with ``shift``) is read from it::

        pipe.scheduler = PFODEScheduler.from_config(pipe.scheduler.config, solver="unipc", spacing="logsnr")
        images = pipe(num_inference_steps=10).images

    Args (beyond the diffusers schedule keys ``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule``, ``trained_betas``, ``prediction_type``, ``variance_type``, ``shift``,
    ``use_dynamic_shifting``, ``time_shift_type``, ``use_flow_sigmas``, ``flow_shift``, ``steps_offset``):
        family: ``"ddpm"`` or ``"flow"``; :meth:`from_config` detects it from the source config.
        solver: a name from :func:`pfode.solvers.available` except the adaptive ``"dopri5"``.
        solver_options: keyword options of the solver (e.g. ``{"order": 3}``, ``{"variable": "t"}``).
        spacing: a pfode spacing (``"logsnr"``, ``"uniform"``, ``"karras"``, ``"quadratic"``) over the
            training range; ``"leading"``, ``"trailing"``, ``"linspace"`` (``DDIMScheduler``'s integer
            timesteps; for flow matching ``"linspace"`` is ``FlowMatchEulerDiscreteScheduler``'s schedule);
            or a diffusers scheduler class name, whose ``set_timesteps`` then defines the grid.
        final_sigma: ``"zero"`` (finish with the step to zero noise, which returns ``x0_hat``) or
            ``"sigma_min"`` (stop at the least noisy training time).
        rho: exponent of the ``"karras"`` spacing.
        recipe: a tuned :class:`pfode.Recipe` (or its dict, or a recipe file) for this model's path
            (``pfode.tune(pfode.integrations.diffusers.denoiser(unet, config), nfe, shape=...)``): it fixes the
            times, the per-step rules and the final denoising step, in place of ``solver`` and ``spacing``
            (``num_inference_steps`` may be left out). Its analytic first segment is applied where the pipeline
            calls :meth:`scale_model_input` at the first timestep (diffusers pipelines do) and to the state of the
            first :meth:`step`.

    ``num_inference_steps`` counts solver steps: a one-evaluation solver makes that many model calls; a
    solver with ``k`` evaluations per step exposes its intermediate times in ``timesteps`` as diffusers'
    Heun scheduler does (``order`` is ``k``), so ``len(timesteps)`` is the number of model calls.

    How it runs: each :meth:`step` call hands over one model output, which resumes the solver's current step
    program (suspended at its evaluation) until it needs the next evaluation, whose input state is returned as
    ``prev_sample``. All state lives in a run that
    :meth:`set_timesteps` resets; a call with the first timestep also starts a new run (a pipeline reused
    without ``set_timesteps``), and a call with an unexpected timestep or a batch-size change mid-run is an
    error, so multistep history is never mixed between runs. ``sample`` passed at the start of each solver
    step is taken as the state (pipelines may edit latents between steps). No clipping or thresholding of
    ``x0_hat`` is applied.
    """

    _compatibles = sorted(
        {e.name for e in KarrasDiffusionSchedulers}
        | {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "DDPMScheduler", "DDIMScheduler"}
    )
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        variance_type: str | None = None,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        steps_offset: int = 0,
        family: str = "ddpm",
        solver: str = "dpm++2m",
        solver_options: dict | None = None,
        spacing: str = "logsnr",
        final_sigma: str = "zero",
        rho: float = 7.0,
        recipe=None,
    ):
        check_choice("family", family, ("ddpm", "flow"))
        check_choice("final_sigma", final_sigma, _FINAL_SIGMAS)
        if not isinstance(spacing, str):
            raise TypeError(f"spacing must be a string, got {type(spacing).__name__}")
        if spacing not in SPACINGS and spacing not in _DIFFUSERS_SPACINGS:
            cls = getattr(_diffusers, spacing, None)
            if not (isinstance(cls, type) and hasattr(cls, "set_timesteps")):
                raise ValueError(
                    f"spacing={spacing!r} is unknown; "
                    f"valid values: {', '.join(SPACINGS + _DIFFUSERS_SPACINGS)}, "
                    "or the class name of a diffusers scheduler (e.g. 'DPMSolverMultistepScheduler')"
                )
        if family == "flow" and spacing in ("leading", "trailing"):
            raise ValueError(f"spacing={spacing!r} applies to DDPM-style schedules; flow matching supports 'linspace'")
        if not isinstance(solver, str):
            raise TypeError(f"solver must be a pfode solver name (a string), got {type(solver).__name__}")
        self._solver = get_solver(solver, **dict(solver_options or {}))
        if self._solver.adaptive:
            raise ValueError(
                f"solver={solver!r} is adaptive and cannot be driven step by step; pick a fixed-step solver"
            )
        self._spec = path_from_config(dict(self.config), learned_variance="drop")
        self._recipe = None
        self._skip_seen = False
        if recipe is not None:
            from ..tuning import Recipe

            if isinstance(recipe, dict):
                recipe = Recipe.from_dict(recipe)
            elif isinstance(recipe, (str, bytes)) or hasattr(recipe, "__fspath__"):
                recipe = Recipe.load(recipe)
            if not isinstance(recipe, Recipe):
                raise TypeError(
                    f"recipe must be a pfode.Recipe, its dict or a recipe file, got {type(recipe).__name__}"
                )
            recipe.check(self._spec.path)
            self._recipe = recipe
            self._solver = recipe.solver()
            self.register_to_config(recipe=recipe.to_dict())  # the config stays JSON
        self._pred = get_prediction(self._spec.prediction)
        self.order = self._solver.evals_per_step
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.sigmas = None
        self._prog: _Program | None = None
        self._sub: dict[int, _Program] = {}
        self._run: _Run | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; the family (DDPM-style or flow matching) is read from ``config``."""
        if config is not None and "family" not in kwargs:
            with contextlib.suppress(TypeError):
                kwargs["family"] = _family(_as_config(config))
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- properties diffusers pipelines use -------------------------------------------------------
    @property
    def spec(self) -> PathSpec:
        """The :class:`PathSpec` of the model this scheduler drives."""
        return self._spec

    @property
    def solver(self) -> Solver:
        return self._solver

    # the training schedule, under the names diffusers schedulers use (pipelines read them: ledits_pp reads
    # ``alphas_cumprod``, stable_cascade ``betas``)
    def _ddpm_only(self, name: str):
        if self._spec.family != "ddpm":
            raise AttributeError(f"{name} belongs to DDPM-style (beta) schedules; this scheduler is flow matching")

    @property
    def betas(self) -> torch.Tensor:
        """The training betas (float32, as diffusers builds them)."""
        self._ddpm_only("betas")
        return betas_from_config(self.config)

    @property
    def alphas(self) -> torch.Tensor:
        """``1 - betas``."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``cumprod(1 - betas)``: ``alpha(t)^2`` at the training timesteps."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """``alpha^2`` after the last step: 1 when the run ends at zero noise, else ``alphas_cumprod[0]``."""
        self._ddpm_only("final_alpha_cumprod")
        return torch.tensor(1.0) if self.config.final_sigma == "zero" else self.alphas_cumprod[0]

    @property
    def sigma_min(self) -> float:
        """Least training noise level: ``sigma/alpha`` at timestep 0 (DDPM, from the float32 ``alphas_cumprod`` as
        diffusers' sigma schedulers compute it) or flow matching's least sigma."""
        if self._spec.family == "flow":
            return float(self._spec.t_last)
        ac = self.alphas_cumprod[0]
        return float(((1 - ac) / ac) ** 0.5)

    @property
    def sigma_max(self) -> float:
        """Largest training noise level: ``sigma/alpha`` at timestep ``N - 1`` (DDPM) or 1 (flow matching)."""
        if self._spec.family == "flow":
            return 1.0
        ac = self.alphas_cumprod[-1]
        return float(((1 - ac) / ac) ** 0.5)

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next model evaluation (``None`` before the first step)."""
        return None if self._run is None else self._run.offset + self._run.pos

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start runs at ``timesteps[begin_index]`` (img2img): the first evaluation of a solver step."""
        check_int("begin_index", begin_index, 0)
        if self._prog is not None:
            self._program_from(begin_index)
        self._begin_index = begin_index

    def __len__(self):
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity: the model sees the path's own state ``x_t``; with a recipe's analytic first segment, the
        noise at the first timestep is carried along it first."""
        r = self._recipe
        if r is not None and r.skip is not None and timestep is not None and self._prog is not None:
            if self._matches(float(torch.as_tensor(timestep).detach().flatten()[0]), 0):
                self._skip_seen = True
                return r.start(sample, self._spec.path)
        return sample

    # -- grids ---------------------------------------------------------------------------------
    def _diffusers_timesteps(self, n: int) -> torch.Tensor:
        """``DDIMScheduler``'s integer timesteps for ``n`` steps."""
        big = self.config.num_train_timesteps
        sp = self.config.spacing
        if sp == "linspace":
            ts = np.linspace(0, big - 1, n).round()[::-1].copy().astype(np.int64)
        elif sp == "leading":
            ratio = big // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + int(self.config.steps_offset)
        else:  # trailing
            ts = np.round(np.arange(big, 0, -big / n)).astype(np.int64) - 1
        return torch.from_numpy(ts)

    def _other_scheduler(self, name: str, n: int, mu):
        cls = getattr(_diffusers, name)
        keys = set(inspect.signature(cls.__init__).parameters)
        cfg = {k: v for k, v in self.config.items() if k in keys and not k.startswith("_")}
        if self._spec.family == "flow" and "prediction_type" in cfg:
            del cfg["prediction_type"]
        other = cls(**cfg)
        if mu is not None and "mu" in inspect.signature(other.set_timesteps).parameters:
            other.set_timesteps(n, mu=mu)
        else:
            other.set_timesteps(n)
        return other

    def _build_grid(self, n, timesteps, sigmas, mu) -> tuple[torch.Tensor, bool]:
        spec, path, cfg = self._spec, self._spec.path, self.config
        zero = cfg.final_sigma == "zero"
        flow = spec.family == "flow"
        if timesteps is not None:
            g = spec.t_of_timestep(torch.as_tensor(np.asarray(timesteps, dtype=np.float64)))
        elif sigmas is not None:
            s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64)).flatten()
            g = spec.apply_shift(s, mu) if flow else path.t_of_s(s)
        elif cfg.spacing in SPACINGS:
            lam_free = not self._solver.needs_finite_lam and cfg.spacing in ("uniform", "quadratic")
            t_start = spec.t_first if (not flow or lam_free) else path.t_max
            t_end = float(spec.apply_shift(1.0 / cfg.num_train_timesteps, mu))
            steps = n - 1 if zero else n
            if steps == 0:
                g = torch.tensor([t_start], dtype=torch.float64)
            elif flow and cfg.spacing in ("uniform", "quadratic"):
                k = spec.shift_value(mu)
                u0, u1 = (t / (k - (k - 1.0) * t) for t in (t_start, t_end))  # inverse shift
                g = spec.apply_shift(make_grid(Linear(), steps, cfg.spacing, t_start=u0, t_end=u1), mu)
                g[0], g[-1] = t_start, t_end
            else:
                g = make_grid(path, steps, cfg.spacing, t_start=t_start, t_end=t_end, rho=cfg.rho)
        elif cfg.spacing in _DIFFUSERS_SPACINGS:
            if flow:  # FlowMatchEulerDiscreteScheduler's default schedule
                big = cfg.num_train_timesteps
                u = torch.linspace(big * 1.0, spec.t_last * big, n, dtype=torch.float64) / big
                g = spec.apply_shift(u, mu)
            else:
                g = spec.t_of_timestep(self._diffusers_timesteps(n))
        else:
            other = self._other_scheduler(cfg.spacing, n, mu)
            if flow:
                g = torch.as_tensor(other.sigmas).detach().cpu().to(torch.float64).flatten()
            else:
                g = spec.t_of_timestep(torch.as_tensor(other.timesteps).detach().cpu())
        g = as_f64(g).detach().cpu().flatten().clone()
        if g.numel() and float(path.sigma(g[-1])) == 0.0:
            g, zero = g[:-1], True  # an explicit zero-noise end: the step to zero noise
        if g.numel() == 0:
            raise ValueError("the schedule has no time above zero noise")
        if flow and float(g[0]) >= 1.0 and self._solver.needs_finite_lam:
            # sigma = 1 is pure noise (log-SNR -inf): lam-based solvers start just below it
            g[0] = path.t_max
        if not zero and float(g[-1]) > spec.t_last * (1 + 1e-12):
            g = torch.cat([g, torch.tensor([spec.t_last], dtype=torch.float64)])
        if g.numel() >= 2:
            g = as_grid(path, g)
        elif not (path.t_lo < float(g[0]) <= path.t_hi):
            raise ValueError(f"time {float(g[0])!r} lies outside the range of {path!r}")
        if not zero and g.numel() < 2:
            raise ValueError("final_sigma='sigma_min' needs at least two times above zero noise")
        return g, zero

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps=None,
        sigmas=None,
        mu: float | None = None,
    ):
        """Plan a sampling run of ``num_inference_steps`` solver steps; reset all solver state.

        ``timesteps`` (diffusers timesteps, decreasing) or ``sigmas`` (flow matching: sigmas before the
        shift, as ``FlowMatchEulerDiscreteScheduler`` takes them; DDPM-style: ``sqrt((1 - abar)/abar)``) give
        a custom grid instead; a final ``0`` sigma means the step to zero noise. ``mu`` is the dynamic
        shift of flow-matching pipelines (Flux).
        """
        if timesteps is not None and sigmas is not None:
            raise ValueError("give timesteps= or sigmas=, not both")
        if self._recipe is not None:
            steps = self._recipe.steps
            if timesteps is not None or sigmas is not None:
                raise ValueError("this scheduler runs a recipe: its times are fixed (no timesteps= or sigmas=)")
            if num_inference_steps is not None and num_inference_steps != steps:
                raise ValueError(f"num_inference_steps={num_inference_steps}: the recipe has {steps} steps "
                                 f"({self._recipe.nfe} evaluations); pass {steps} or leave it out")
        elif timesteps is None and sigmas is None:
            if num_inference_steps is None:
                raise ValueError("give num_inference_steps (or custom timesteps= / sigmas=)")
            check_int("num_inference_steps", num_inference_steps, 1)
            if self._spec.use_dynamic_shifting and mu is None and self.config.spacing not in ("logsnr", "karras"):
                raise ValueError("mu must be passed to set_timesteps when use_dynamic_shifting=True")
        if self._recipe is not None:
            g, zero = self._recipe.grid(), self._recipe.denoise
        else:
            g, zero = self._build_grid(num_inference_steps, timesteps, sigmas, mu)
        prog = _Program(self._solver, self._spec, g, zero)
        self._prog, self._sub, self._run = prog, {}, None
        self._begin_index = None
        self.num_inference_steps = len(prog.plan)
        net_t = self._spec.timestep_of_t(prog.t)
        integer = bool(torch.all((net_t - net_t.round()).abs() < 1e-6))
        self.timesteps = (net_t.round().to(torch.int64) if integer else net_t.to(torch.float32)).to(device)
        pts = [prog.table[k] for k in prog.points] + [prog.table[prog.table.n_steps]]
        flow = self._spec.family == "flow"
        sig = [p.t if flow else (0.0 if p.sigma == 0 else p.s) for p in pts]
        self.sigmas = torch.tensor(sig, dtype=torch.float32)
        return self

    def _program_from(self, begin: int) -> _Program:
        """The program of a run that starts at evaluation ``begin`` (a fresh plan from that grid point)."""
        prog = self._prog
        if begin == 0:
            return prog
        if begin in self._sub:
            return self._sub[begin]
        if begin not in prog.first:
            raise ValueError(
                f"begin_index={begin} is not the first evaluation of a solver step; valid values: {prog.first}"
            )
        m = prog.first.index(begin)
        sub = _Program(self._solver, self._spec, prog.grid[m:], prog.zero_end)
        if not torch.allclose(sub.t, prog.t[begin:], rtol=0, atol=1e-12):
            raise ValueError(f"solver {self._solver.name!r} cannot restart at begin_index={begin}")
        self._sub[begin] = sub
        return sub

    # -- stepping ------------------------------------------------------------------------------
    def _matches(self, tval: float, idx: int) -> bool:
        if idx >= len(self.timesteps):
            return False
        e = float(self.timesteps[idx])
        return abs(tval - e) <= 1e-4 + 1e-5 * abs(e)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> PFODESchedulerOutput | tuple:
        """Take the model output at ``timesteps[step_index]``; return the state of the next evaluation.

        Extra keyword arguments of other schedulers (``eta``, ``use_clipped_model_output``, ...) are
        accepted and ignored. ``generator`` seeds the noise of stochastic solvers.
        """
        if self._prog is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise TypeError("model_output and sample must be tensors")
        tval = float(torch.as_tensor(timestep).detach().flatten()[0])
        run = self._run
        at = None if run is None or run.pos >= len(run.prog.points) else run.offset + run.pos
        if at is None or not self._matches(tval, at) or (run.pos > 0 and tuple(sample.shape) != run.shape):
            begin = self._begin_index or 0
            if not self._matches(tval, begin):
                if at is not None and self._matches(tval, at):
                    raise ValueError(
                        f"the batch shape changed mid-run ({run.shape} -> {tuple(sample.shape)}); "
                        "call set_timesteps() before sampling another batch"
                    )
                want = (
                    f"timesteps[{at}]={float(self.timesteps[at]):g}"
                    if at is not None
                    else f"timesteps[{begin}]={float(self.timesteps[begin]):g} to start a run"
                )
                raise ValueError(
                    f"step() got timestep {tval:g} but expected {want}; PFODEScheduler follows its "
                    "timesteps in order (call set_timesteps() to start over)"
                )
            run = self._run = _Run(self._program_from(begin), begin, tuple(sample.shape))
        work = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        run.generator = generator
        if sample is run.returned:
            x_in = run.stage
        else:  # a new run, or the pipeline edited the latents
            x_in = sample.to(work)
            if run.pos == 0 and run.offset == 0 and self._recipe is not None and self._recipe.skip is not None:
                if not self._skip_seen:
                    raise ValueError(
                        "the recipe's analytic first segment needs the pipeline to call scheduler.scale_model_input"
                        "(latents, t) before the model (this one did not); tune with skip=False for it, or start from "
                        "recipe.start(latents, path)"
                    )
                self._skip_seen = False
                x_in = self._recipe.start(x_in, self._spec.path)
            if run.pos == run.prog.first[run.m]:  # at the start of a solver step: the given sample is its state
                self._begin(run, x_in)
        out = _match_channels(_unwrap_output(model_output), sample).to(work)
        p = run.prog.table[run.k]
        x0 = self._pred.x0(out, x_in, p.alpha, p.sigma, p.d_alpha, p.d_sigma)
        run.pos += 1
        try:  # resume the step program with this evaluation; it stops at its next one or finishes
            run.k, prev = run.program.send(x0)
        except StopIteration as stop:
            prev, run.hist, _ = stop.value
            run.m += 1
            if run.m < len(run.prog.plan):
                # start the next solver step right away, so that the pipeline evaluates the model exactly
                # where that step asks for its first evaluation
                prev = self._begin(run, prev)
        run.stage = prev
        run.returned = prev if prev.dtype == sample.dtype else prev.to(sample.dtype)
        if not return_dict:
            return (run.returned, x0)
        return PFODESchedulerOutput(prev_sample=run.returned, pred_original_sample=x0)

    def _begin(self, run: _Run, x: torch.Tensor) -> torch.Tensor:
        """Start plan step ``run.m`` from ``x``; return the state of its first evaluation."""

        def noise():
            return randn_tensor(x.shape, generator=run.generator, device=x.device, dtype=x.dtype)

        run.program = self._solver.program(x, run.hist, run.prog.plan[run.m], noise)
        run.k, first = next(run.program)
        return first

    # -- forward process -----------------------------------------------------------------------
    def _alpha_sigma(self, timesteps, like: torch.Tensor):
        t = self._spec.t_of_timestep(torch.as_tensor(timesteps).detach().cpu())
        if t.numel() == 1:
            t = t.flatten()[0]
            return float(self._spec.path.alpha(t)), float(self._spec.path.sigma(t))
        c = Coeffs.at(self._spec.path, t.flatten(), like=like)
        return c.alpha, c.sigma

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at diffusers timesteps (a scalar or one per sample)."""
        a, s = self._alpha_sigma(timesteps, original_samples)
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching pipelines' name for :meth:`add_noise`."""
        if noise is None:
            raise ValueError("scale_noise needs noise")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The ``v`` target ``alpha noise - sigma x0`` (Salimans & Ho) at diffusers timesteps."""
        a, s = self._alpha_sigma(timesteps, sample)
        return a * noise - s * sample
