"""DPS: diffusion posterior sampling (Chung, Kim, Mccann, Klasky, Ye, "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR 2023), on any pfode path and prediction type.

Each step (Algorithm 1 of the paper, Gaussian noise) denoises ``x_i`` to ``x0_hat(x_i)``, takes the unconditional
DDPM/DDIM step to the next noise level, and subtracts the gradient of the measurement residual *through the network*:

    x_{i-1} = DDIM_eta(x_i; x0_hat, eps_hat) - zeta_i grad_{x_i} ||y - A(x0_hat(x_i))||^2,
    zeta_i  = zeta' / ||y - A(x0_hat(x_i))||                        (the paper's step size, per sample).

The paper writes the step for the VP (DDPM) variable. A path with the same log-SNR ``lambda`` is the VP path scaled by
``rho = sqrt(alpha^2 + sigma^2)`` (``x = rho u``), so on any path the step is applied to ``u = x / rho``:
``x_{i-1} = x'_{i-1} - zeta_i rho_i rho_{i-1} grad_{x_i} ||.||^2``; on VP paths ``rho = 1`` and this is the paper.

The base step is DDIM with noise ``eta`` (``eta = 1``: DDPM ancestral sampling, as the paper; ``eta = 0``: DDIM).
Its noise is written for any path: ``x_next = alpha_n x0 + sqrt(sigma_n^2 - c^2) eps + c z`` with
``c = eta sigma_n sqrt(1 - exp(2 (lambda_c - lambda_n)))`` (the DDPM posterior standard deviation at ``eta = 1``).

Cost: ``nfe`` network evaluations, each with one vector-Jacobian product (``grad_evals = nfe``). The method is biased
(the likelihood ``p(y | x_t)`` is replaced by ``p(y | x0_hat(x_t))``): it does not sample the exact posterior even with
the exact denoiser; see ``benchmarks/inverse_gmm.py``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_finite_float
from ..grids import SPACINGS, grid
from .base import register

__all__ = ["dps", "schedule", "ddim_coefficients", "noise_like", "needs_grad"]


def schedule(path, nfe: int, spacing: str = "logsnr") -> tuple[torch.Tensor, list[float], list[float]]:
    """The evaluation times and the scales of a sampler that spends ``nfe`` network evaluations.

    Returns ``(ts, alphas, sigmas)``: ``ts`` ``[nfe]`` float64 path times from ``t_max`` down to ``t_min`` (the grid of
    :func:`pfode.grids.grid` with ``nfe - 1`` intervals; ``[t_max]`` when ``nfe = 1``), and ``alpha, sigma`` at those
    times plus one final entry ``(1, 0)``: clean data, where the last step lands.
    """
    check_choice("spacing", spacing, SPACINGS)
    if nfe == 1:
        ts = torch.tensor([path.t_max], dtype=torch.float64)
    else:
        ts = grid(path, nfe - 1, spacing)
    alphas = path.alpha(ts).tolist() + [1.0]
    sigmas = path.sigma(ts).tolist() + [0.0]
    return ts, alphas, sigmas


def ddim_coefficients(a_c: float, s_c: float, a_n: float, s_n: float, eta: float) -> tuple[float, float]:
    """``(c_eps, c_noise)`` of the DDIM step ``x_n = a_n x0 + c_eps eps + c_noise z`` from scale ``(a_c, s_c)`` to
    ``(a_n, s_n)`` (Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12, written in
    ``alpha, sigma``): ``c_noise = eta s_n sqrt(1 - (a_c s_n / (s_c a_n))^2)``, ``c_eps = sqrt(s_n^2 - c_noise^2)``."""
    if s_n <= 0.0:
        return 0.0, 0.0
    ratio = (a_c * s_n) / (s_c * a_n)
    c_noise = eta * s_n * math.sqrt(max(0.0, 1.0 - ratio * ratio))
    return math.sqrt(max(s_n * s_n - c_noise * c_noise, 0.0)), c_noise


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (drawn on the CPU from ``generator``, then moved)."""
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype if x.is_floating_point() else torch.float32)
    return z.to(x.device)


def needs_grad(x0: torch.Tensor, method: str):
    """Raise a ``ValueError`` naming ``method`` when the network output carries no gradient."""
    if not x0.requires_grad:
        raise ValueError(
            f"method {method!r} needs gradients through the network (a vector-Jacobian product of x0_hat with respect "
            "to x_t), but the denoiser's output does not require grad: the network detaches its output or runs under "
            "torch.no_grad(); use a differentiable network or a gradient-free method (ddrm, reddiff)"
        )


def _check_unit(name: str, value, hint: str = "") -> float:
    """A float in ``[0, 1]`` (``ValueError`` naming ``name`` otherwise)."""
    value = check_finite_float(name, value, 0.0)
    if value > 1.0:
        raise ValueError(f"{name}={value!r} must be in [0, 1]{hint}")
    return value


def _check_eta(eta) -> float:
    return _check_unit("eta", eta, " (0: DDIM, 1: DDPM ancestral noise)")


def dps(
    ev,
    y,
    operator,
    *,
    nfe: int,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    zeta: float = 1.0,
    eta: float = 1.0,
    spacing: str = "logsnr",
):
    """Diffusion posterior sampling (Chung et al., ICLR 2023, Algorithm 1) on any path and prediction type.

    Args:
        ev: the counting denoiser (:class:`pfode.inverse.Evaluations`).
        y: measurements ``[B, m]``.
        operator: any differentiable :class:`~pfode.inverse.operators.Operator` (linear or not).
        nfe: network evaluations (= steps = gradient evaluations).
        x_T: start ``[B, *shape]`` at ``t_max``.
        generator: seeds the DDPM noise.
        zeta: the paper's ``zeta'`` (``>= 0``); the step is ``zeta' / ||y - A(x0_hat)||`` per sample (the paper uses
            0.1 to 1; 1 by default).
        eta: noise of the base step in ``[0, 1]`` (1: DDPM, as the paper; 0: DDIM).
        spacing: time grid (:func:`pfode.grids.grid`).
    Returns:
        ``(x [B, *shape], info)`` with ``info["residual"]`` the final ``||y - A(x)||`` per sample ``[B]``.
    """
    zeta = check_finite_float("zeta", zeta, 0.0)
    eta = _check_eta(eta)
    ts, al, sg = schedule(ev.path, nfe, spacing)
    x = x_T
    for i in range(nfe):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0, eps = ev.pair(xg, ts[i], grad=True)
            needs_grad(x0, "dps")
            res = (y - operator(x0)).reshape(x.shape[0], -1)
            norm = res.norm(dim=1).detach()
            (g,) = torch.autograd.grad((res * res).sum(), xg)
        c_eps, c_z = ddim_coefficients(al[i], sg[i], al[i + 1], sg[i + 1], eta)
        x_next = al[i + 1] * x0.detach() + c_eps * eps.detach()
        if c_z > 0:
            x_next = x_next + c_z * noise_like(x, generator)
        rho = math.hypot(al[i], sg[i]) * math.hypot(al[i + 1], sg[i + 1])
        step = zeta * rho / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        x = (x_next - step.reshape(-1, *([1] * (x.dim() - 1))) * g).detach()
    with torch.no_grad():
        residual = (y - operator(x)).reshape(x.shape[0], -1).norm(dim=1)
    return x, {"times": ts, "residual": residual}


register(
    "dps",
    dps,
    'Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems", ICLR 2023',
    "any",
)
