"""Peer samplers for the benchmarks: k-diffusion's ``sampling.py`` (loaded by path) and diffusers schedulers.

``k_diffusion/__init__.py`` imports torchvision, scikit-image and more, none of which the samplers need.
:func:`k_sampling` executes ``sampling.py`` alone under a private module name (with a private ``utils`` that
provides ``append_dims``, the one helper it uses), leaving ``sys.modules`` as it was.

The diffusers helpers build the DDPM linear-beta schedulers with comparable options and run the
standard pipeline loop (``scale_model_input`` -> model -> ``step``) with an epsilon model.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "k_sampling",
    "DIFFUSERS_SCHEDULERS",
    "make_scheduler",
    "scheduler_configs",
    "run_diffusers",
    "diffusers_calls",
    "SIGMA_SCHEDULERS",
]

def k_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` without importing the rest of k-diffusion (see pfode's loader)."""
    from pfode.integrations.k_diffusion import load_sampling

    return load_sampling()


# -- diffusers -------------------------------------------------------------------------------

DIFFUSERS_SCHEDULERS = (
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "HeunDiscreteScheduler",
    "EulerDiscreteScheduler",
    "LMSDiscreteScheduler",
)
#: schedulers whose sample is ``x / alpha`` (k-diffusion coordinates) and that scale the model input
SIGMA_SCHEDULERS = ("HeunDiscreteScheduler", "EulerDiscreteScheduler", "LMSDiscreteScheduler")


def make_scheduler(cls_name: str, **options):
    """A diffusers scheduler on the DDPM linear table (betas linspace(1e-4, 0.02, 1000), eps-prediction).

    ``clip_sample`` is off and ``final_sigmas_type="zero"`` is set wherever the class accepts them.
    """
    import inspect

    import diffusers

    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    cfg = dict(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
    )
    if "clip_sample" in params:
        cfg["clip_sample"] = False
    if "final_sigmas_type" in params:
        cfg["final_sigmas_type"] = "zero"
    if "set_alpha_to_one" in params:
        cfg["set_alpha_to_one"] = True
    for k, v in options.items():
        if k not in params:
            raise ValueError(f"{cls_name} has no option {k!r}")
        cfg[k] = v
    return cls(**cfg)


def scheduler_configs(spacings=("trailing", "leading", "linspace")) -> list[tuple[str, str, dict]]:
    """``(label, class name, options)`` for every peer configuration the GMM benchmark runs.

    Karras (and log-SNR) sigma schedules ignore ``timestep_spacing``, so they are listed once.
    """
    out = []

    def add(label, cls, **opts):
        out.append((label, cls, opts))

    for sp in spacings:
        add(f"DDIM {sp}", "DDIMScheduler", timestep_spacing=sp)
    for order in (2, 3):
        base = dict(solver_order=order, algorithm_type="dpmsolver++")
        for sp in spacings:
            add(f"DPM++{order}M {sp}", "DPMSolverMultistepScheduler", timestep_spacing=sp, **base)
        add(f"DPM++{order}M karras", "DPMSolverMultistepScheduler", use_karras_sigmas=True, **base)
        add(f"DPM++{order}M lu-lambdas", "DPMSolverMultistepScheduler", use_lu_lambdas=True, **base)
    for order in (2, 3):
        for variant in ("bh2", "bh1"):
            base = dict(solver_order=order, solver_type=variant)
            if variant == "bh1":  # bh1 with final_sigmas_type="zero" returns NaN (B(h) = h is infinite there)
                base["final_sigmas_type"] = "sigma_min"
            for sp in spacings:
                add(f"UniPC{order}-{variant} {sp}", "UniPCMultistepScheduler", timestep_spacing=sp, **base)
            add(f"UniPC{order}-{variant} karras", "UniPCMultistepScheduler", use_karras_sigmas=True, **base)
    for sp in spacings:
        add(f"DEIS3 {sp}", "DEISMultistepScheduler", timestep_spacing=sp)
    add("DEIS3 karras", "DEISMultistepScheduler", use_karras_sigmas=True)
    for name, cls in (
        ("Heun", "HeunDiscreteScheduler"),
        ("Euler", "EulerDiscreteScheduler"),
        ("LMS", "LMSDiscreteScheduler"),
    ):
        for sp in spacings:
            add(f"{name} {sp}", cls, timestep_spacing=sp)
        add(f"{name} karras", cls, use_karras_sigmas=True)
    return out


def ends_above_zero(cls_name: str, options: dict) -> bool:
    """Whether the scheduler's last sample is at ``sigma_min`` (timestep 0's noise) instead of zero noise."""
    return cls_name == "DEISMultistepScheduler" or options.get("final_sigmas_type") == "sigma_min"


def diffusers_calls(cls_name: str, steps: int) -> int:
    """Model calls of the pipeline loop with ``steps`` inference steps (Heun: 2 per step, 1 on the last)."""
    return 2 * steps - 1 if cls_name == "HeunDiscreteScheduler" else steps


def diffusers_steps_for(cls_name: str, nfe: int) -> int | None:
    """Inference steps that spend exactly ``nfe`` model calls, or ``None``."""
    if cls_name == "HeunDiscreteScheduler":
        return (nfe + 1) // 2 if nfe % 2 == 1 else None
    return nfe


def run_diffusers(
    sched,
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    steps: int,
    exact_start: bool = True,
) -> tuple[torch.Tensor, int]:
    """The pipeline loop: returns ``(final sample, model calls)``.

    ``x_T`` is the state ``x = alpha x0 + sigma eps`` at the scheduler's first timestep. Sigma-based
    schedulers keep ``x / alpha`` as their sample; ``exact_start`` builds it as
    ``x_T * sqrt(1 + sigma_0^2)`` instead of the pipelines' ``x_T * init_noise_sigma`` (which is
    ``sigma_0`` for trailing/linspace spacing: off by a relative ``1/(2 sigma_0^2)``).
    The result is the scheduler's last sample: ``x0`` at zero noise, or the state at its last noise level.
    """
    sched.set_timesteps(steps)
    if hasattr(sched, "sigmas") and type(sched).__name__ in SIGMA_SCHEDULERS:
        s0 = float(sched.sigmas[0])
        x = x_T * (math.sqrt(1.0 + s0 * s0) if exact_start else float(sched.init_noise_sigma))
    else:
        x = x_T * float(sched.init_noise_sigma)
    calls = 0
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        eps = eps_model(inp, t)
        calls += 1
        x = sched.step(eps, t, x).prev_sample
    return x, calls


def sigma_table(sched) -> np.ndarray:
    """``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` of a scheduler (float64), by training timestep."""
    ac = sched.alphas_cumprod.double().numpy()
    return np.sqrt((1.0 - ac) / ac)


def sigma_of_timestep(log_sigmas: np.ndarray, tau: float) -> float:
    """k-diffusion sigma at a (possibly fractional) timestep: log-linear interpolation of the table,
    the inverse of diffusers' ``_sigma_to_t``."""
    return float(np.exp(np.interp(tau, np.arange(len(log_sigmas)), log_sigmas)))
