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
  log-sigma, while :class:`~pfode.paths.VPDiscrete` interpolates ``log alpha`` in ``t``; :class:`PFODEScheduler`
  follows them, below).
  ``final_sigmas_type="sigma_min"`` (grid ending at ``t = 1/N``, ``denoise=False``) matches too: on grids of
  fewer than 15 steps both make the last step first order when ``lower_order_final=True``.
* ``FlowMatchEulerDiscreteScheduler`` == pfode ``"euler"`` with ``variable="t"`` on the grid
  ``t = scheduler.sigmas[:-1]`` and ``denoise=True`` (its final step to ``sigma = 0`` is
  ``x - sigma * v = x0_hat``).

PFODEScheduler as a drop-in
---------------------------
``PFODEScheduler.from_config(pipe.scheduler.config, solver=...)`` keeps the replaced ("source") scheduler's
timesteps: they come from the source class's own ``set_timesteps`` on the same config (``timestep_spacing``,
``steps_offset``, Karras/exponential/beta sigmas, ``use_lu_lambdas``, ``final_sigmas_type``, shifts, custom
``timesteps``/``sigmas``), with the source's dtype, and the internal grid sits at the source's sigmas. With the
same algorithm the outputs then agree to float32 round-off (``benchmarks/agree_diffusers.py``): DDPM
(``"ddpm"``, the same generator), DDIM (``"ddim"``, its ``t - N // n`` step targets and its clipping
convention included), DPM-Solver++(2M) (``"dpm++2m"``), UniPC (``"unipc"``), DEIS order 2 (``"deis"`` with
``order=2, variable="lam"``), Euler and Heun (``"euler"``, ``"heun"``), FlowMatchEuler and FlowMatchHeun
(``variable="t"``). ``spacing="logsnr"`` (or any pfode spacing) opts in to a pfode grid instead.
``set_alpha_to_one``, ``clip_sample``/``thresholding`` and ``rescale_betas_zero_snr`` are honoured; a key that
cannot be honoured gets a warning naming it. See :class:`PFODEScheduler` for the rules.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

try:
    import diffusers as _diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
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
from ..guidance import threshold_x0
from ..paths import Linear, Path, VPDiscrete
from ..predictions import Coeffs, Denoiser, get_prediction
from ..solvers.base import Solver, Table
from ..solvers.base import get as get_solver
from ..solvers.exponential import DDIM

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
    ``rescale_betas_zero_snr=True`` then rescales them to zero terminal SNR (the last beta is 1).
    """
    cfg = _as_config(config)
    n = _n_train(cfg)
    trained = cfg.get("trained_betas")
    if trained is not None:
        b = torch.tensor(np.asarray(trained, dtype=np.float64), dtype=torch.float32).flatten()
        if b.numel() != n:
            raise ValueError(f"trained_betas has {b.numel()} entries but num_train_timesteps={n}")
        return _zero_terminal_snr(b) if cfg.get("rescale_betas_zero_snr") else b
    schedule = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    if schedule == "linear":
        b = torch.linspace(b0, b1, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        b = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        b = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
    else:
        raise _unsupported("beta_schedule", schedule, BETA_SCHEDULES, " (or give trained_betas)")
    return _zero_terminal_snr(b) if cfg.get("rescale_betas_zero_snr") else b


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1: shift and
    scale ``sqrt(alphas_cumprod)`` so that it is 0 at the last timestep and unchanged at the first (float32)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class _ScaledTime:
    """Network time ``scale * t`` (flow transformers see ``sigma * num_train_timesteps``)."""

    def __init__(self, scale: float):
        self.scale = float(scale)
        self.__name__ = f"{self.scale:g}*t"

    def __call__(self, t):
        return as_f64(t) * self.scale


class _LogSigmaTime:
    """Network time ``0.25 log(sigma/alpha)`` (diffusers' ``timestep_type="continuous"`` for v-prediction)."""

    __name__ = "0.25*log(s)"

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, t):
        return 0.25 * torch.log(self.path.s(as_f64(t)))


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
        timestep_type: ``"discrete"`` (the network sees the training index) or ``"continuous"`` (it sees
            ``0.25 log(sigma/alpha)``, diffusers' ``timestep_type="continuous"`` with v-prediction).
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
    timestep_type: str = "discrete"

    # -- timesteps <-> path time -------------------------------------------------------------
    def t_of_timestep(self, timestep) -> torch.Tensor:
        """Path time (float64) of diffusers timesteps: ``(ts + 1) / N`` (DDPM) or ``ts / N`` (flow)."""
        ts = as_f64(timestep)
        if self.timestep_type == "continuous":
            return self.path.t_of_s(torch.exp(4.0 * ts))
        return (ts + 1.0 if self.family == "ddpm" else ts) / self.num_train_timesteps

    def timestep_of_t(self, t) -> torch.Tensor:
        """Diffusers timestep (float64) of path time ``t``: ``N t - 1`` (DDPM) or ``N t`` (flow)."""
        if self.timestep_type == "continuous":
            return 0.25 * torch.log(self.path.s(as_f64(t)))
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
    ``rescale_betas_zero_snr=True`` (zero terminal SNR, Lin et al. 2024) rescales the betas; the last training
    timestep then has ``alpha = 0``, where no ``log``-SNR exists, so the path's table puts ``alphas_cumprod[-1] =
    2**-24`` there, as diffusers' sigma-based schedulers (Euler, DPM-Solver, UniPC) do (``DDIMScheduler`` uses
    exactly 0: with a v-prediction model the first step then differs by about ``2**-12`` relative). Where
    ``alphas_cumprod[-2]`` is already below ``2**-24`` (linear betas) the table continues geometrically instead.

    Raises:
        ValueError naming the offending key and the supported values for unknown ``beta_schedule``,
        ``prediction_type``, ``variance_type``, ``time_shift_type``, ``timestep_type``, for ``invert_sigmas=True``
        and for EDM-preconditioned configs (``sigma_data``), which are not DDPM-style schedules.
    """
    check_choice("learned_variance", learned_variance, ("error", "drop"))
    cfg = _as_config(scheduler_config)
    n = _n_train(cfg)
    name = cfg.get("_class_name")
    if "sigma_data" in cfg or (isinstance(name, str) and name.startswith(("EDM", "CosineDPMSolver"))):
        raise ValueError(
            f"_class_name={name!r}: EDM-preconditioned schedules (sigma_data, sigma_min, sigma_max) are not DDPM-style "
            "beta schedules or flow matching; supported: DDPM-style configs (beta_schedule, trained_betas) and flow-"
            "matching configs. Use pfode.paths.EDM with pfode.sample for EDM models"
        )
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
    tt = cfg.get("timestep_type", "discrete")
    if tt not in ("discrete", "continuous"):
        raise _unsupported("timestep_type", tt, ("discrete", "continuous"))
    if pt != "v_prediction":
        tt = "discrete"  # diffusers' EulerDiscreteScheduler uses continuous timesteps with v-prediction only
    betas = betas_from_config(cfg)
    if cfg.get("rescale_betas_zero_snr"):
        ac = torch.cumprod(1.0 - betas.to(torch.float64), 0)
        # 2**-24 as diffusers' sigma schedulers; below an alphas_cumprod[-2] that is smaller still (linear betas), the
        # geometric continuation of the table keeps it decreasing
        ac[-1] = 2.0**-24 if float(ac[-2]) > 2.0**-24 else float(ac[-2] ** 2 / ac[-3])
        path = VPDiscrete(alphas_cumprod=ac)
    else:
        path = VPDiscrete(betas=betas.to(torch.float64))
    return PathSpec(
        path=path,
        prediction=PREDICTION_TYPES[pt],
        time_input=_LogSigmaTime(path) if tt == "continuous" else "index",
        family="ddpm",
        num_train_timesteps=n,
        prediction_type=pt,
        learned_variance=learned,
        timestep_type=tt,
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


@dataclass
class _Grid:
    """The times of a sampling run, before a solver plans it.

    ``times``: float64 path times, decreasing: the grid (consecutive steps), or with ``targets`` the start of every
    step. ``zero``: the run ends with the step to zero noise. ``net``: the network timestep of each time (a source
    scheduler's own timesteps; ``None``: ``spec.timestep_of_t``). ``dtype``: of ``timesteps``. ``targets``: per
    step, the time it lands at (``None``: zero noise) when that is not the next start (``DDIMScheduler``).
    ``tail``: one more evaluation at the last time, after the last step, that leaves the state unchanged
    (``DDIMScheduler`` ending at timestep 0 with ``set_alpha_to_one=False``). ``init_sigma``: the pipeline's
    ``init_noise_sigma``.
    """

    times: torch.Tensor
    zero: bool
    net: torch.Tensor | None = None
    dtype: torch.dtype | None = None
    targets: list | None = None
    tail: bool = False
    init_sigma: float = 1.0


class _Program:
    """A solver's plan on one :class:`_Grid`, and the points of the network evaluations it will make, in order.

    Consecutive grids run on one :class:`~pfode.solvers.base.Table`; with ``targets`` every step has its own
    two-point table (start, target) and the state is carried to the next start as it is.
    """

    def __init__(self, solver: Solver, spec: PathSpec, g: _Grid):
        self.g = g
        path, times = spec.path, g.times
        n_start = len(times) - int(g.tail)
        if g.targets is None and g.tail:
            # the source's last step has zero length (it ends where its last evaluation is): plan it as a step (a
            # hair long), so that lower-order final steps fall where the source has them, then drop it
            tiny = times[-1:] * (1.0 - 1e-9)
            table = Table(path, torch.cat([times, tiny]), False)
            self.plan = solver.plan(table)[:-1]
            self.tables = [table] * len(self.plan)
            end = table[len(times) - 1]
        elif g.targets is None:
            table = Table(path, times, g.zero)
            self.plan = solver.plan(table)
            self.tables = [table] * len(self.plan)
            end = table[table.n_steps]
        else:
            self.tables, self.plan = [], []
            for m in range(n_start):
                b = g.targets[m]
                tb = Table(path, torch.tensor([float(times[m])] if b is None else [float(times[m]), b],
                                              dtype=torch.float64), b is None)
                (st,) = solver.plan(tb)
                self.tables.append(tb)
                self.plan.append(st)
            end = self.tables[-1][self.tables[-1].n_steps] if self.tables else None
        self.points: list[tuple[int, int]] = []  # (plan step, table point) of each evaluation
        self.first: list[int] = []  # the first evaluation of each plan step
        x, hist = torch.zeros(1, dtype=torch.float64), None
        for m, st in enumerate(self.plan):  # trace the evaluation order with a dummy state
            self.first.append(len(self.points))
            program = solver.program(x, hist, st, lambda: torch.zeros(1, dtype=torch.float64))
            x, hist, _ = drive(program, lambda xx, k, m=m: self.points.append((m, k)) or torch.zeros_like(xx))
            if len(self.points) == self.first[-1]:
                raise ValueError(f"solver {solver.name!r} made no network evaluation in step {m}")
        self.pts = [self.tables[m][k] for m, k in self.points]
        # the grid time of each evaluation (None for a solver's intermediate points)
        n_grid = len(times) + int(g.tail and g.targets is None)
        grid_of = [(k if k < n_grid else None) if g.targets is None else (m if k == 0 else None)
                   for m, k in self.points]
        if g.tail:  # one more evaluation at the last time, after the last step, which leaves the state as it is
            end = Table(path, times[-1:], False)[0] if g.targets is not None else end
            self.pts.append(end)
            grid_of.append(len(times) - 1)
        self.end = end
        self.t = torch.tensor([p.t for p in self.pts], dtype=torch.float64)
        net = spec.timestep_of_t(self.t)
        if g.net is not None:
            for j, gi in enumerate(grid_of):
                if gi is not None:
                    net[j] = g.net[gi]
        integral = bool(torch.all((net - net.round()).abs() < 1e-6))
        dtype = g.dtype if g.dtype is not None else torch.int64
        if dtype == torch.int64 and not integral:
            dtype = torch.float32  # fractional intermediate times
        self.timesteps = net.round().to(torch.int64) if dtype == torch.int64 else net.to(dtype)
        flow = spec.family == "flow"
        pts = self.pts[: len(self.pts) - int(g.tail)] + [end]
        self.sigmas = torch.tensor([p.t if flow else (0.0 if p.sigma == 0 else p.s) for p in pts], dtype=torch.float32)


@dataclass
class _Run:
    """Progress of one sampling loop through a :class:`_Program`."""

    prog: _Program
    offset: int  # index into the scheduler's timesteps of the program's first evaluation
    shape: tuple
    pos: int = 0  # next evaluation (index into prog.pts)
    m: int = 0  # current plan step
    hist: object = None  # the solver's history after the last completed plan step
    program: object = None  # the current plan step's step program, suspended at its next evaluation
    k: int = 0  # the table point of that evaluation
    generator: object = None  # seeds the noise of stochastic solvers (from the latest step() call)
    stage: torch.Tensor | None = None  # full-precision state handed back last (the next evaluation's input)
    returned: torch.Tensor | None = None  # the tensor last handed back to the pipeline


def _scheduler_class(name) -> type | None:
    """The diffusers scheduler class called ``name`` (``None`` if there is none)."""
    cls = getattr(_diffusers, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and hasattr(cls, "set_timesteps") else None


def _config_class(cfg: dict) -> str | None:
    """The class a scheduler config belongs to: ``_class_name`` (configs loaded from files), else the scheduler
    class whose config keys are exactly these (configs of schedulers built in memory have no ``_class_name``)."""
    name = cfg.get("_class_name")
    if isinstance(name, str):
        return name
    keys = {k for k in cfg if not k.startswith("_")}
    if {"solver", "family", "spacing"} <= keys:
        return "PFODEScheduler"
    best, size = [], 0  # the classes with the most keys, all present (a swapped config also keeps the old keys)
    for cand in _VP_SCHEDULERS + _FLOW_SCHEDULERS:
        cls = _scheduler_class(cand)
        own = set(_init_defaults(cls)) if cls is not None else set()
        if own and own <= keys:
            if len(own) > size:
                best, size = [cand], len(own)
            elif len(own) == size:
                best.append(cand)
    if len(best) > 1:
        warnings.warn(
            f"the scheduler config has no _class_name and fits {', '.join(best)} alike: taking {best[0]}'s timesteps; "
            "pass the scheduler itself (PFODEScheduler.from_config(scheduler)) or a config loaded from a file",
            stacklevel=3,
        )
    return best[0] if best else None


def _init_defaults(cls) -> dict:
    """The keyword defaults of ``cls.__init__`` (its config keys)."""
    out = {}
    for k, p in inspect.signature(cls.__init__).parameters.items():
        if k not in ("self", "kwargs") and p.default is not inspect.Parameter.empty:
            out[k] = p.default
    return out


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def _grid_class(cfg, family: str, spacing) -> str | None:
    """The diffusers scheduler whose ``set_timesteps`` defines the grid (``None``: a pfode spacing or the
    ``"leading"``/``"trailing"``/``"linspace"`` definitions)."""
    if spacing is not None:
        return None if spacing in SPACINGS or spacing in _DIFFUSERS_SPACINGS else spacing
    src = cfg.get("source")
    flags = [f for f in _EULER_FLAGS if cfg.get(f)]
    fallback = "EulerDiscreteScheduler" if family == "ddpm" else "FlowMatchEulerDiscreteScheduler"
    cls = _scheduler_class(src)
    if cls is None:
        return fallback if flags else None
    keys = _init_defaults(cls)
    return fallback if any(f not in keys for f in flags) else src


def _unhonoured_grid_keys(cfg, family: str, spacing) -> list[str]:
    """``key=value`` of grid options set away from their defaults that the grid in force does not apply."""
    name = _grid_class(cfg, family, spacing)
    keys = _init_defaults(_scheduler_class(name)) if _scheduler_class(name) is not None else {}
    out = []
    for k, default in _GRID_FLAGS.items():
        v = cfg.get(k, default)
        if v != default and k not in keys:
            out.append(f"{k}={v!r}")
    return out


#: DDPM-style (beta-schedule) diffusers schedulers: their configs describe the same kind of model
_VP_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
)
#: flow-matching diffusers schedulers
_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: schedulers that run flow matching with ``use_flow_sigmas=True``
_FLOW_SIGMA_SCHEDULERS = (
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
)
#: schedulers whose timesteps are float32 (sigma-based; the others use int64)
_FLOAT_TIMESTEPS = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
) + _FLOW_SCHEDULERS
#: sigma-schedule options of EulerDiscreteScheduler (used for the grid when the source scheduler lacks them)
_EULER_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
#: options that shape a source scheduler's timesteps, with their defaults
_GRID_FLAGS = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "interpolation_type": "linear",
    "shift_terminal": None,
    "lambda_min_clipped": -math.inf,
}
#: options of the sampling algorithm a source scheduler runs; ``solver=`` replaces that algorithm
_ALGORITHM_KEYS = (
    "solver_order",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "disable_corrector",
    "solver_p",
    "predict_x0",
    "noise_sampler_seed",
    "predictor_order",
    "corrector_order",
    "tau_func",
)
#: options pipelines read from the scheduler config (flow-matching resolution-dependent shift)
_PIPELINE_KEYS = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
#: options that change a source scheduler's step itself, with their neutral values
_STEP_KEYS = {"stochastic_sampling": False}


class PFODEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates the probability-flow ODE with any pfode solver.

    Build it from a pipeline's scheduler config; the model convention (DDPM-style betas and
    ``prediction_type``, or flow matching with ``shift``) and the source scheduler's timesteps are read from it::

        pipe.scheduler = PFODEScheduler.from_config(pipe.scheduler.config, solver="unipc")  # the same timesteps
        pipe.scheduler = PFODEScheduler.from_config(pipe.scheduler.config, solver="unipc", spacing="logsnr")
        images = pipe(num_inference_steps=10).images

    Args (beyond the diffusers schedule keys ``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule``, ``trained_betas``, ``prediction_type``, ``variance_type``, ``shift``,
    ``use_dynamic_shifting``, ``time_shift_type``, ``use_flow_sigmas``, ``flow_shift``, ``steps_offset``,
    ``timestep_spacing``, ``set_alpha_to_one``, ``final_sigmas_type``, ``use_karras_sigmas``,
    ``use_exponential_sigmas``, ``use_beta_sigmas``, ``rescale_betas_zero_snr``, ``timestep_type``, ``clip_sample``,
    ``clip_sample_range``, ``thresholding``, ``dynamic_thresholding_ratio``, ``sample_max_value``, which mean what
    they mean in diffusers):
        family: ``"ddpm"`` or ``"flow"``; :meth:`from_config` detects it from the source config.
        solver: a name from :func:`pfode.solvers.available` except the adaptive ``"dopri5"``.
        solver_options: keyword options of the solver (e.g. ``{"order": 3}``, ``{"variable": "t"}``).
        spacing: ``None`` (default): the timesteps of the source scheduler (``source``), computed by its own
            ``set_timesteps`` from this config (every option that shapes them is honoured), or, without a source,
            the ``"logsnr"`` grid. A pfode spacing (``"logsnr"``, ``"uniform"``, ``"karras"``, ``"quadratic"``)
            over the training range; ``"leading"``, ``"trailing"``, ``"linspace"`` (``DDIMScheduler``'s integer
            timesteps with ``steps_offset``; for flow matching ``"linspace"`` is
            ``FlowMatchEulerDiscreteScheduler``'s schedule); or a diffusers scheduler class name.
        final_sigma: ``None`` (default): as the schedule says (the source's last sigma; ``set_alpha_to_one=False``
            or ``final_sigmas_type="sigma_min"`` end at the least noisy training time, else zero noise);
            ``"zero"`` (finish with the step to zero noise, which returns ``x0_hat``) or ``"sigma_min"``.
        rho: exponent of the ``"karras"`` spacing.
        recipe: a tuned :class:`pfode.Recipe` (or its dict, or a recipe file) for this model's path
            (``pfode.tune(pfode.integrations.diffusers.denoiser(unet, config), nfe, shape=...)``): it fixes the
            times, the per-step rules and the final denoising step, in place of ``solver`` and ``spacing``
            (``num_inference_steps`` may be left out). Its analytic first segment is applied where the pipeline
            calls :meth:`scale_model_input` at the first timestep (diffusers pipelines do) and to the state of the
            first :meth:`step`.
        source: class name of the diffusers scheduler this one replaces (:meth:`from_config` records it).

    Drop-in rules. :meth:`from_config` keeps every key of the source config (those that are not arguments here
    stay in ``config`` and reach the source's ``set_timesteps``); a key it cannot honour gets a warning naming
    it. Timesteps have the source's values and dtype (int64, or float32 for sigma-based and flow schedulers),
    duplicated timesteps included: Heun's second-stage times are this scheduler's own intermediate evaluations
    when the solver has two stages (``solver="heun"`` reproduces ``HeunDiscreteScheduler``); a zero-length step
    (DPM-Solver at ``num_inference_steps >= num_train_timesteps``) is dropped; a schedule with evaluations between
    its sigmas (KDPM2) is refused; a last step of zero length (the source's last evaluation already at its final
    noise level: DDIM ending at timestep 0 with ``set_alpha_to_one=False``, sigma-min Karras grids) is an
    evaluation that leaves the state as it is. Internally the grid sits at the source's sigmas, so Karras,
    exponential, beta and ``use_lu_lambdas`` sigmas are followed exactly even where the source rounds its
    timesteps. Sigma-based
    sources (Euler, Heun, LMS) keep ``x / alpha`` as their state; this scheduler keeps ``x`` (the model input),
    so ``init_noise_sigma`` is the source's times ``alpha`` at the first time and :meth:`scale_model_input` is the
    identity: a pipeline's latents and model inputs are the same as with the source. ``clip_sample`` and
    ``thresholding`` act on ``x0_hat`` (the solver sees the clipped value); with ``DDIMScheduler`` as source and the
    ``"ddim"`` solver the unclipped noise is kept, as ``DDIMScheduler.step`` does (``use_clipped_model_output``
    is honoured), and its step targets ``timestep - num_train_timesteps // num_inference_steps`` (which differ
    from the next timestep with ``"linspace"`` and some ``"trailing"`` grids) are followed too.

    ``num_inference_steps`` is the source's (the argument of its ``set_timesteps``; it gives the grid times) or, on
    pfode grids, the number of solver steps: a one-evaluation solver evaluates once per grid time; a solver with
    ``k`` evaluations per step exposes its intermediate times in ``timesteps`` as diffusers' Heun scheduler does
    (``order`` is ``k``), so ``len(timesteps)`` is the number of model calls.

    How it runs: each :meth:`step` call hands over one model output, which resumes the solver's current step
    program (suspended at its evaluation) until it needs the next evaluation, whose input state is returned as
    ``prev_sample``. All state lives in a run that :meth:`set_timesteps` resets. A run starts at ``begin_index``
    (:meth:`set_begin_index`) or, without one, where the timestep first appears in ``timesteps`` (the second
    place when it appears twice, as diffusers' ``index_for_timestep``): img2img loops that start mid-schedule
    work either way. A call with the first timestep starts a new run (a pipeline reused without
    ``set_timesteps``); a call with an unexpected timestep or a batch-size change mid-run is an error, so
    multistep history is never mixed between runs. ``sample`` passed at the start of each solver step is taken
    as the state (pipelines may edit latents between steps).
    """

    _compatibles = sorted(set(_VP_SCHEDULERS) | set(_FLOW_SCHEDULERS))
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
        spacing: str | None = None,
        final_sigma: str | None = None,
        rho: float = 7.0,
        recipe=None,
        source: str | None = None,
        timestep_spacing: str = "leading",
        set_alpha_to_one: bool = True,
        final_sigmas_type: str = "zero",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        rescale_betas_zero_snr: bool = False,
        timestep_type: str = "discrete",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ):
        check_choice("family", family, ("ddpm", "flow"))
        if final_sigma is not None:
            check_choice("final_sigma", final_sigma, _FINAL_SIGMAS)
        check_choice("final_sigmas_type", final_sigmas_type, _FINAL_SIGMAS)
        check_choice("timestep_spacing", timestep_spacing, _DIFFUSERS_SPACINGS)
        if spacing is not None and not isinstance(spacing, str):
            raise TypeError(f"spacing must be a string or None, got {type(spacing).__name__}")
        if spacing is not None and spacing not in SPACINGS and spacing not in _DIFFUSERS_SPACINGS:
            if _scheduler_class(spacing) is None:
                raise ValueError(
                    f"spacing={spacing!r} is unknown; "
                    f"valid values: None, {', '.join(SPACINGS + _DIFFUSERS_SPACINGS)}, "
                    "or the class name of a diffusers scheduler (e.g. 'DPMSolverMultistepScheduler')"
                )
        if family == "flow" and spacing in ("leading", "trailing"):
            raise ValueError(f"spacing={spacing!r} applies to DDPM-style schedules; flow matching supports 'linspace'")
        if source is not None and _scheduler_class(source) is None:
            if not isinstance(source, str):
                raise TypeError(f"source must be a diffusers scheduler class name, got {type(source).__name__}")
            warnings.warn(f"source={source!r} is not a scheduler class of this diffusers version: its timesteps are "
                          "not available (the 'logsnr' grid is used unless spacing says otherwise)", stacklevel=2)
        if sum(bool(f) for f in (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)) > 1:
            raise ValueError("only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be True")
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
        # DDIMScheduler's own algorithm: its clipping keeps the unclipped noise, its steps land at t - N // n
        self._ddim = (source == "DDIMScheduler" or spacing == "DDIMScheduler") and isinstance(self._solver, DDIM)
        if self._recipe is None:
            bad = _unhonoured_grid_keys(dict(self.config), family, spacing)
            if bad:
                grid = f"spacing={spacing!r}" if spacing is not None else f"the source scheduler {source!r}"
                warnings.warn(f"{', '.join(bad)} not honoured: {grid} defines the timesteps", stacklevel=2)
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.sigmas = None
        self._prog: _Program | None = None
        self._sub: dict[int, _Program] = {}
        self._run: _Run | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``, plus: the family (DDPM-style or flow matching) is read from ``config``; the
        source scheduler's class is recorded (``source``) and its config is completed with that class's defaults
        (diffusers would otherwise replace them with this class's defaults), every key kept; keyword arguments
        override keys of the source as well. A key that cannot be honoured gets a warning naming it.

        ``config`` may also be the scheduler itself. The source class is the config's ``_class_name`` (configs
        loaded from files, pipelines from ``from_pretrained``); configs of schedulers built in memory have none and
        are matched by their keys (LMS and KDPM2 share theirs: a warning says which one is taken)."""
        if config is None:
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        cfg = _as_config(config)
        own = set(_init_defaults(cls))
        name = type(config).__name__ if isinstance(config, SchedulerMixin) else _config_class(cfg)
        if name == cls.__name__:
            if "family" not in kwargs:
                with contextlib.suppress(TypeError):
                    kwargs["family"] = _family(cfg)
            config = config if isinstance(config, dict) else cfg
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        src = _scheduler_class(name)
        full = dict(_init_defaults(src)) if src is not None else {}
        full.update({k: _jsonable(v) for k, v in cfg.items() if not k.startswith("_")})
        if src is not None:
            for k in list(kwargs):
                if k not in own and k in full:
                    full[k] = kwargs.pop(k)  # an override of one of the source's own keys
            kwargs.setdefault("source", name)
        if "family" not in kwargs:
            kwargs["family"] = _family({**full, "_class_name": name})
        merged = {**full, **{k: v for k, v in kwargs.items() if k in own}}
        path_from_config(merged, learned_variance="drop")  # refuse unsupported configs before anything else
        unused = []
        for k, v in full.items():
            if k in own or k in _GRID_FLAGS or k in _ALGORITHM_KEYS or k in _PIPELINE_KEYS:
                continue
            if k in _STEP_KEYS:
                if v != _STEP_KEYS[k]:
                    unused.append(f"{k}={v!r}")
            elif src is None and v is not None:
                unused.append(f"{k}={v!r}")
        if unused:
            warnings.warn(
                f"{', '.join(unused)} not honoured by PFODEScheduler (it integrates the probability-flow ODE with "
                f"solver={merged.get('solver', 'dpm++2m')!r} on its timesteps)",
                stacklevel=2,
            )
        hidden = [f for f in _GRID_FLAGS if f not in own]
        bad = [b for b in _unhonoured_grid_keys(merged, merged["family"], merged.get("spacing"))
               if b.split("=")[0] in hidden]
        if bad and merged.get("recipe") is None:
            sp = merged.get("spacing")
            grid = f"spacing={sp!r}" if sp is not None else f"the source scheduler {merged.get('source')!r}"
            warnings.warn(f"{', '.join(bad)} not honoured: {grid} defines the timesteps", stacklevel=2)
        return super().from_config(full, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- properties diffusers pipelines use -------------------------------------------------------
    @property
    def spec(self) -> PathSpec:
        """The :class:`PathSpec` of the model this scheduler drives."""
        return self._spec

    @property
    def solver(self) -> Solver:
        return self._solver

    @property
    def compatibles(self) -> list[type]:
        """The diffusers schedulers this one can replace (and that can replace it): those of its family, DDPM-style
        (beta schedules) or flow matching."""
        if self._spec.family == "flow":
            names = _FLOW_SCHEDULERS + (_FLOW_SIGMA_SCHEDULERS if self.config.use_flow_sigmas else ())
        else:
            names = _VP_SCHEDULERS
        return [type(self)] + [c for c in map(_scheduler_class, names) if c is not None]

    # the training schedule, under the names diffusers schedulers use (pipelines read them: ledits_pp reads
    # ``alphas_cumprod``, stable_cascade ``betas``)
    def _ddpm_only(self, name: str):
        if self._spec.family != "ddpm":
            raise AttributeError(f"{name} belongs to DDPM-style (beta) schedules; this scheduler is flow matching")

    @property
    def betas(self) -> torch.Tensor:
        """The training betas (float32, as diffusers builds them; rescaled with ``rescale_betas_zero_snr``)."""
        self._ddpm_only("betas")
        return betas_from_config(self.config)

    @property
    def alphas(self) -> torch.Tensor:
        """``1 - betas``."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``cumprod(1 - betas)``: ``alpha(t)^2`` at the training timesteps. With zero terminal SNR the last entry
        is 0, or ``2**-24`` where the source scheduler sets it so (sigma-based schedulers)."""
        ac = torch.cumprod(self.alphas, dim=0)
        if self.config.rescale_betas_zero_snr:
            src = _scheduler_class(self.config.source)
            if src is not None and "rescale_betas_zero_snr" in _init_defaults(src):
                ac = src(**self._source_kwargs(src)).alphas_cumprod.clone()
        return ac

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """``alpha^2`` after the last step: 1 when the run ends at zero noise, else ``alphas_cumprod[0]``."""
        self._ddpm_only("final_alpha_cumprod")
        zero = self._prog.g.zero if self._prog is not None else self._final_zero()
        return torch.tensor(1.0) if zero else self.alphas_cumprod[0]

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
        """Largest training noise level: ``sigma/alpha`` at timestep ``N - 1`` (DDPM; ``alphas_cumprod[-1] = 2**-24``
        with zero terminal SNR, as sigma-based schedulers) or 1 (flow matching)."""
        if self._spec.family == "flow":
            return 1.0
        ac = self.alphas_cumprod[-1]
        if float(ac) == 0.0:
            ac = torch.tensor(2.0**-24)
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
    def _final_zero(self) -> bool:
        """Whether runs end at zero noise, as ``final_sigma`` or else the schedule keys say."""
        fs = self.config.final_sigma
        if fs is not None:
            return fs == "zero"
        return self.config.final_sigmas_type != "sigma_min" and bool(self.config.set_alpha_to_one)

    def _timestep_dtype(self) -> torch.dtype:
        """The dtype of timesteps on pfode grids: the source scheduler's kind (float32 for sigma-based and flow
        schedulers; int64 otherwise, float32 where they are fractional)."""
        if self._spec.family == "flow" or self.config.source in _FLOAT_TIMESTEPS:
            return torch.float32
        return torch.int64

    def _diffusers_timesteps(self, n: int) -> torch.Tensor:
        """``DDIMScheduler``'s integer timesteps for ``n`` steps."""
        big = self.config.num_train_timesteps
        if n > big:
            raise ValueError(
                f"num_inference_steps={n} is larger than num_train_timesteps={big}: spacing="
                f"{self.config.spacing!r} would repeat timesteps (diffusers' DDIMScheduler refuses it too); use a "
                "pfode spacing such as 'logsnr' for more steps"
            )
        sp = self.config.spacing
        if sp == "linspace":
            ts = np.linspace(0, big - 1, n).round()[::-1].copy().astype(np.int64)
        elif sp == "leading":
            ratio = big // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + int(self.config.steps_offset)
        else:  # trailing
            ts = np.round(np.arange(big, 0, -big / n)).astype(np.int64) - 1
        return torch.from_numpy(ts)

    def _source_kwargs(self, cls) -> dict:
        """The config of ``cls`` built from this scheduler's config (every key ``cls`` takes)."""
        keys = _init_defaults(cls)
        cfg = {k: v for k, v in self.config.items() if k in keys and not k.startswith("_")}
        if self._spec.family == "flow" and cfg.get("prediction_type") in PREDICTION_TYPES:
            del cfg["prediction_type"]  # a DDPM default this config carries; flow schedulers use their own
        return cfg

    def _other_scheduler(self, name: str, n, mu, timesteps=None, sigmas=None):
        cls = _scheduler_class(name)
        other = cls(**self._source_kwargs(cls))
        params = inspect.signature(other.set_timesteps).parameters
        kw = {}
        if mu is not None and "mu" in params:
            kw["mu"] = mu
        if timesteps is not None:
            kw["timesteps"] = [float(v) for v in np.asarray(timesteps, dtype=np.float64).flatten()]
            other.set_timesteps(**kw)
        elif sigmas is not None:
            kw["sigmas"] = [float(v) for v in np.asarray(sigmas, dtype=np.float64).flatten()]
            other.set_timesteps(**kw)
        else:
            other.set_timesteps(n, **kw)
        return other

    def _finish(self, g: torch.Tensor, zero: bool, tail: bool = False) -> tuple[torch.Tensor, bool, bool]:
        """Validate a grid; start lam-based solvers just below pure noise on flow paths; apply ``final_sigma``."""
        spec, path = self._spec, self._spec.path
        g = as_f64(g).detach().cpu().flatten().clone()
        fs = self.config.final_sigma
        if fs == "zero" and not zero:
            g, zero, tail = (g if tail else g[:-1]), True, False
        elif fs == "sigma_min" and zero:
            zero = False
            if float(g[-1]) > spec.t_last * (1 + 1e-12):
                g = torch.cat([g, torch.tensor([spec.t_last], dtype=torch.float64)])
            else:
                tail = True
        if g.numel() == 0:
            raise ValueError("the schedule has no time above zero noise")
        if spec.family == "flow" and float(g[0]) >= 1.0 and self._solver.needs_finite_lam:
            # sigma = 1 is pure noise (log-SNR -inf): lam-based solvers start just below it
            g[0] = path.t_max
        if g.numel() >= 2:
            g = as_grid(path, g)
        elif not (path.t_lo < float(g[0]) <= path.t_hi):
            raise ValueError(f"time {float(g[0])!r} lies outside the range of {path!r}")
        if not zero and g.numel() < 2 and not tail:
            raise ValueError("final_sigma='sigma_min' needs at least two times above zero noise")
        return g, zero, tail

    def _own_grid(self, n, timesteps, sigmas, mu) -> _Grid:
        """pfode spacings, ``DDIMScheduler``'s spacing definitions, and custom timesteps/sigmas."""
        spec, path, cfg = self._spec, self._spec.path, self.config
        zero = self._final_zero()
        flow = spec.family == "flow"
        spacing = cfg.spacing if cfg.spacing is not None else "logsnr"
        tail = False
        if timesteps is not None:
            g = spec.t_of_timestep(torch.as_tensor(np.asarray(timesteps, dtype=np.float64)))
        elif sigmas is not None:
            s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64)).flatten()
            g = spec.apply_shift(s, mu) if flow else path.t_of_s(s)
        elif spacing in SPACINGS:
            lam_free = not self._solver.needs_finite_lam and spacing in ("uniform", "quadratic")
            t_start = spec.t_first if (not flow or lam_free) else path.t_max
            t_end = float(spec.apply_shift(1.0 / cfg.num_train_timesteps, mu))
            steps = n - 1 if zero else n
            if steps == 0:
                g = torch.tensor([t_start], dtype=torch.float64)
            elif flow and spacing in ("uniform", "quadratic"):
                k = spec.shift_value(mu)
                u0, u1 = (t / (k - (k - 1.0) * t) for t in (t_start, t_end))  # inverse shift
                g = spec.apply_shift(make_grid(Linear(), steps, spacing, t_start=u0, t_end=u1), mu)
                g[0], g[-1] = t_start, t_end
            else:
                g = make_grid(path, steps, spacing, t_start=t_start, t_end=t_end, rho=cfg.rho)
        elif flow:  # "linspace": FlowMatchEulerDiscreteScheduler's default schedule
            big = cfg.num_train_timesteps
            u = torch.linspace(big * 1.0, spec.t_last * big, n, dtype=torch.float64) / big
            g = spec.apply_shift(u, mu)
        else:
            g = spec.t_of_timestep(self._diffusers_timesteps(n))
            tail = not zero and abs(float(g[-1]) - spec.t_last) < 1e-12  # evaluated at timestep 0, then stays
        g = as_f64(g).detach().cpu().flatten()
        if g.numel() and float(path.sigma(g[-1])) == 0.0:
            g, zero = g[:-1], True  # an explicit zero-noise end: the step to zero noise
        if not zero and not tail and g.numel() and float(g[-1]) > spec.t_last * (1 + 1e-12):
            g = torch.cat([g, torch.tensor([spec.t_last], dtype=torch.float64)])
        g, zero, tail = self._finish(g, zero, tail)
        return _Grid(g, zero, dtype=self._timestep_dtype(), tail=tail)

    def _source_grid(self, name: str, n, timesteps, sigmas, mu) -> _Grid:
        """The grid of a diffusers scheduler's ``set_timesteps``: its timesteps, at its sigmas."""
        spec, path = self._spec, self._spec.path
        flow = spec.family == "flow"
        other = self._other_scheduler(name, n, mu, timesteps, sigmas)
        ts = torch.as_tensor(other.timesteps).detach().cpu().flatten()
        dtype = ts.dtype if ts.dtype in (torch.int64, torch.float32) else torch.float32
        ts = ts.to(torch.float64)
        sig = getattr(other, "sigmas", None)
        if isinstance(sig, (torch.Tensor, np.ndarray)):
            sig = as_f64(torch.as_tensor(sig).detach().cpu()).flatten()
            if sig.numel() != ts.numel() + 1:
                raise ValueError(
                    f"{name} evaluates the model between its sigmas ({ts.numel()} timesteps for {sig.numel()} sigmas, "
                    "as KDPM2 does), which PFODEScheduler cannot follow; use spacing='karras', 'logsnr', or another "
                    "scheduler's name (e.g. 'EulerDiscreteScheduler')"
                )
            s_all = sig
            if flow:
                t_all = sig.clone()
            else:  # at the table's own time where a timestep's sigma is the table's (up to float32 rounding)
                t_all = path.t_of_s(sig).clamp(path.t_lo, path.t_hi)
                t_ts = spec.t_of_timestep(ts)
                same = ((path.s(t_ts) - sig[:-1]).abs() <= 2e-6 * sig[:-1]) & (ts == ts.round())
                t_all[:-1] = torch.where(same, t_ts, t_all[:-1])
        else:  # DDIM, DDPM, PNDM: integer timesteps into the training table
            fac = getattr(other, "final_alpha_cumprod", None)
            end = path.t_lo if fac is None or float(fac) == 1.0 else spec.t_last
            t_all = torch.cat([spec.t_of_timestep(ts), torch.tensor([end], dtype=torch.float64)])
            s_all = path.s(t_all)
        times, final, s_fin = t_all[:-1], float(t_all[-1]), float(s_all[-1])
        # collapse repeated (timestep, time) pairs: Heun's second-stage evaluations (a two-stage pfode solver makes
        # its own), PNDM's repeated warm-up timestep, and zero-length steps
        keep = [0] + [j for j in range(1, ts.numel()) if not (ts[j] == ts[j - 1] and times[j] == times[j - 1])]
        ts, times, s_ev = ts[keep], times[keep], s_all[:-1][keep]
        bad = torch.nonzero(times[1:] >= times[:-1]).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"{name} with num_inference_steps={n} has timestep {float(ts[i + 1]):g} at a noise level not below "
                f"that of the one before it ({float(ts[i]):g}); PFODEScheduler follows strictly decreasing noise "
                "levels: use fewer steps or a pfode spacing ('logsnr', 'karras', ...)"
            )
        zero = bool(float(path.sigma(torch.tensor(final))) == 0.0)
        tail = not zero and abs(s_fin - float(s_ev[-1])) <= 1e-6 * float(s_ev[-1])
        net = ts.clone()
        if not zero and not tail:  # the end point, not evaluated
            times = torch.cat([times, torch.tensor([final], dtype=torch.float64)])
            net = torch.cat([net, spec.timestep_of_t(torch.tensor([final], dtype=torch.float64))])
        n_eval = ts.numel()
        times, zero, tail = self._finish(times, zero, tail)
        if times.numel() < net.numel():  # final_sigma="zero" dropped the end point
            net = net[: times.numel()]
        elif times.numel() > net.numel():  # final_sigma="sigma_min" added one
            net = torch.cat([net, spec.timestep_of_t(times[-1:])])
        targets = None
        if self._ddim and timesteps is None and sigmas is None and name == "DDIMScheduler":
            targets = self._ddim_targets(ts[:n_eval], times[:n_eval], zero, tail, other.num_inference_steps)
            if targets is not None:
                times, net = times[:n_eval], net[:n_eval]
        ins = float(getattr(other, "init_noise_sigma", 1.0))
        init = ins * float(path.alpha(times[0])) if (not flow and ins != 1.0) else 1.0
        return _Grid(times, zero, net=net, dtype=dtype, targets=targets, tail=tail, init_sigma=init)

    def _ddim_targets(self, ts, starts, zero, tail, n):
        """``DDIMScheduler``'s step targets ``t - N // n`` (or the final alpha); ``None`` where they are the next
        timesteps."""
        spec = self._spec
        ratio = self.config.num_train_timesteps // n
        out = []
        for j in range(len(ts) - int(tail)):
            prev = float(ts[j]) - ratio
            out.append(float(spec.t_of_timestep(prev)) if prev >= 0 else (None if zero else spec.t_last))
        nxt = [float(v) for v in starts[1:]] + ([] if tail else [None if zero else spec.t_last])
        if all((a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-12)
               for a, b in zip(out, nxt)):
            return None
        return out

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
        a custom grid instead; a final ``0`` sigma means the step to zero noise. With a source scheduler that takes
        them, they go through its ``set_timesteps`` (same timesteps and sigmas as the source). ``mu`` is the dynamic
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
            g = _Grid(self._recipe.grid(), self._recipe.denoise)
        else:
            name = _grid_class(self.config, self._spec.family, self.config.spacing)
            kind = "timesteps" if timesteps is not None else ("sigmas" if sigmas is not None else None)
            cls = _scheduler_class(name)
            if cls is not None and (kind is None or kind in inspect.signature(cls.set_timesteps).parameters):
                g = self._source_grid(name, num_inference_steps, timesteps, sigmas, mu)
            else:
                g = self._own_grid(num_inference_steps, timesteps, sigmas, mu)
        prog = _Program(self._solver, self._spec, g)
        self._prog, self._sub, self._run = prog, {}, None
        self._begin_index = None
        self.num_inference_steps = len(prog.plan) + int(g.tail)
        self.timesteps = prog.timesteps.to(device)
        self.sigmas = prog.sigmas
        self.init_noise_sigma = g.init_sigma
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
        g = prog.g
        sub_g = _Grid(
            g.times[m:], g.zero, net=None if g.net is None else g.net[m:], dtype=g.dtype,
            targets=None if g.targets is None else g.targets[m:], tail=g.tail, init_sigma=g.init_sigma,
        )
        sub = _Program(self._solver, self._spec, sub_g)
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

    def _where(self, tval: float) -> list[int]:
        """Indices of ``timesteps`` equal to ``tval``."""
        ts = self.timesteps.detach().cpu().to(torch.float64)
        return torch.nonzero((ts - tval).abs() <= 1e-4 + 1e-5 * ts.abs()).flatten().tolist()

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """The index of ``timestep`` in ``timesteps`` as diffusers finds it: the first place, or the second when it
        appears more than once (the start of a solver step after a two-stage step)."""
        tval = float(torch.as_tensor(timestep).detach().flatten()[0])
        if schedule_timesteps is None:
            found = self._where(tval)
        else:
            st = torch.as_tensor(schedule_timesteps).detach().cpu().to(torch.float64)
            found = torch.nonzero((st - tval).abs() <= 1e-4 + 1e-5 * st.abs()).flatten().tolist()
        if not found:
            raise ValueError(f"timestep {tval:g} is not in the schedule")
        return found[1] if len(found) > 1 else found[0]

    def _start_index(self, tval: float, run: _Run | None, at: int | None, shape: tuple) -> int:
        """Where a new run starts for a call with timestep ``tval`` (or the error for an out-of-order call)."""
        mid = at is not None and run.pos > 0
        if self._begin_index is not None:
            found = [self._begin_index] if self._matches(tval, self._begin_index) else []
        else:
            found = self._where(tval)
            if mid:  # mid-run only the first timestep starts over
                found = [j for j in found[:1] if j == 0]
            elif len(found) > 1:
                found = found[1:]
        if found:
            return found[0]
        if at is not None and self._matches(tval, at):
            raise ValueError(
                f"the batch shape changed mid-run ({run.shape} -> {shape}); "
                "call set_timesteps() before sampling another batch"
            )
        begin = self._begin_index or 0
        want = (
            f"timesteps[{at}]={float(self.timesteps[at]):g}"
            if at is not None
            else f"timesteps[{begin}]={float(self.timesteps[begin]):g} to start a run"
            if self._begin_index is not None
            else "one of the timesteps to start a run"
        )
        raise ValueError(
            f"step() got timestep {tval:g} but expected {want}; PFODEScheduler follows its "
            "timesteps in order (call set_timesteps() to start over)"
        )

    def _clip(self, x0: torch.Tensor, run: _Run, use_clipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred_original_sample, x0 for the solver)`` under ``clip_sample`` / ``thresholding``."""
        cfg = self.config
        if cfg.thresholding:
            xc = threshold_x0(x0, float(cfg.dynamic_thresholding_ratio), 1.0, float(cfg.sample_max_value))
        elif cfg.clip_sample:
            r = float(cfg.clip_sample_range)
            xc = x0.clamp(-r, r)
        else:
            return x0, x0
        if self._ddim and not use_clipped and run.m < len(run.prog.plan):
            # DDIMScheduler: alpha' x0c + sqrt(1 - alpha'^2 - std^2) eps with the model's (unclipped) eps is the
            # DDIM update cx x + w D of D = x0 + alpha' (x0c - x0) / w
            st = run.prog.plan[run.m]
            if not st.zero and st.w[0] != 0.0:
                a1 = run.prog.tables[run.m][st.i + 1].alpha
                return xc, x0 + (xc - x0) * (a1 / st.w[0])
        return xc, xc

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

        ``use_clipped_model_output`` (``DDIMScheduler``'s) is honoured; other keyword arguments of other
        schedulers (``eta``, ...) are accepted and ignored (the solver and its options define the update).
        ``generator`` seeds the noise of stochastic solvers.
        """
        if self._prog is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise TypeError("model_output and sample must be tensors")
        tval = float(torch.as_tensor(timestep).detach().flatten()[0])
        run = self._run
        at = None if run is None or run.pos >= len(run.prog.pts) else run.offset + run.pos
        if at is None or not self._matches(tval, at) or (run.pos > 0 and tuple(sample.shape) != run.shape):
            begin = self._start_index(tval, run, at, tuple(sample.shape))
            run = self._run = _Run(self._program_from(begin), begin, tuple(sample.shape))
        prog = run.prog
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
            if run.m < len(prog.plan) and run.pos == prog.first[run.m]:  # a step's start: the sample is its state
                self._begin(run, x_in)
        out = _match_channels(_unwrap_output(model_output), sample).to(work)
        p = prog.pts[run.pos]
        x0, d = self._clip(self._pred.x0(out, x_in, p.alpha, p.sigma, p.d_alpha, p.d_sigma), run,
                           bool(kwargs.get("use_clipped_model_output")))
        run.pos += 1
        if run.m >= len(prog.plan):  # the evaluation after the last step (DDIM ending at timestep 0): no change
            prev = x_in
        else:
            try:  # resume the step program with this evaluation; it stops at its next one or finishes
                run.k, prev = run.program.send(d)
            except StopIteration as stop:
                prev, run.hist, _ = stop.value
                run.m += 1
                if run.m < len(prog.plan):
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
    def _times_of(self, timesteps) -> torch.Tensor:
        """Path times of diffusers timesteps: this schedule's own time where the timestep is one of its
        ``timesteps`` (the ``begin_index`` or current one first, as diffusers' sigma schedulers pick), else the
        training table's."""
        ts = torch.as_tensor(timesteps).detach().cpu().to(torch.float64).flatten()
        t = self._spec.t_of_timestep(ts)
        prog = self._prog
        if prog is None:
            return t
        for i, v in enumerate(ts.tolist()):
            found = self._where(v)
            for pref in (self._begin_index, self.step_index):
                if pref is not None and pref in found:
                    found = [pref]
            if found:
                t[i] = prog.pts[found[1] if len(found) > 1 else found[0]].t
        return t

    def _alpha_sigma(self, timesteps, like: torch.Tensor):
        t = self._times_of(timesteps)
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
