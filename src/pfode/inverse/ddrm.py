"""DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon, Song, "Denoising Diffusion Restoration Models",
NeurIPS 2022), for linear measurements with an SVD, on any pfode path and prediction type.

DDRM works in the spectral space of ``A = U S V^T`` and in the VE form of the path: ``z = x / alpha`` with noise level
``s = sigma / alpha`` (every pfode path is this one up to the scale ``alpha``). With ``x_bar = V^T z``,
``y_bar = S^{-1} U^T y`` (noise ``sigma_y / s_i`` in coordinate ``i``) and ``x0_bar = V^T x0_hat(x_t)``, one step from
noise ``s_c`` to ``s_n`` (the paper's eq. 7-8) draws each coordinate from

* ``s_i = 0`` (the null space of ``A``): ``x0_bar + sqrt(1 - eta^2) s_n eps_bar + eta s_n z``, with
  ``eps_bar = (x_bar - x0_bar) / s_c``;
* ``s_n < sigma_y / s_i`` (less noisy than ``y``): ``x0_bar + sqrt(1 - eta^2) s_n (y_bar - x0_bar) / (sigma_y / s_i)
  + eta s_n z``;
* ``s_n >= sigma_y / s_i`` (noisier than ``y``): ``(1 - eta_b) x0_bar + eta_b y_bar
  + sqrt(s_n^2 - eta_b^2 sigma_y^2 / s_i^2) z``;

and starts (eq. 6) from ``x_bar_T = y_bar + sqrt(s_T^2 - sigma_y^2 / s_i^2) n`` where ``s_T s_i > sigma_y`` and from
``s_T n`` elsewhere (``n`` is ``x_T``'s own noise, so ``x_T`` seeds the start). The last step lands on ``s = 0``. With
``sigma_y = 0`` every observed coordinate takes the third branch and ends exactly at ``y_bar``: an identity operator
returns ``y``. Defaults ``eta = 0.85, eta_b = 1`` are the paper's. Cost: ``nfe`` network evaluations, no gradients.
The method is biased in general (it uses the unconditional ``x0_hat``); see ``benchmarks/inverse_gmm.py``.
"""

from __future__ import annotations

import math

import torch

from .base import register
from .dps import _check_unit, noise_like, schedule
from .pigdm import _require_linear

__all__ = ["ddrm"]


def ddrm(
    ev,
    y,
    operator,
    *,
    nfe: int,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    eta: float = 0.85,
    eta_b: float = 1.0,
    spacing: str = "logsnr",
):
    """Denoising diffusion restoration (Kawar et al., NeurIPS 2022) for a linear operator, on any path.

    Args:
        ev: the counting denoiser (:class:`pfode.inverse.Evaluations`).
        y: measurements ``[B, m]``.
        operator: a :class:`~pfode.inverse.operators.LinearOperator` (its :meth:`svd` is used).
        nfe: network evaluations (= steps).
        x_T: start ``[B, *shape]`` at ``t_max``: its noise ``x_T / sigma(t_max)`` seeds the start.
        generator: seeds the step noise.
        eta: noise of the unobserved and less-noisy coordinates, in ``[0, 1]`` (paper: 0.85).
        eta_b: weight of the measurement in the noisier-than-``y`` coordinates, in ``[0, 1]`` (paper: 1).
        spacing: time grid (:func:`pfode.grids.grid`).
    Returns:
        ``(x [B, *shape], info)`` with ``info["residual"]`` the final ``||y - A x||`` per sample ``[B]``.
    """
    _require_linear(operator, "ddrm")
    eta, eta_b = _check_unit("eta", eta), _check_unit("eta_b", eta_b)
    u, sv, v = operator.svd()
    keep = sv > sv.max() * 1e-10
    dt, dev = x_T.dtype, x_T.device
    u, sv, v = u[:, keep].to(dev, dt), sv[keep].to(dev, dt), v[:, keep].to(dev, dt)
    b = x_T.shape[0]
    sy = operator.noise
    ybar = (y.to(dt) @ u) / sv  # [B, r]
    th = sy / sv  # noise level of each y_bar coordinate [r]
    ts, al, sg = schedule(ev.path, nfe, spacing)
    s_all = [s / a for a, s in zip(al, sg)]  # VE noise levels; the last is 0

    def split(f):  # [B, d] -> (range coordinates [B, r], null-space part [B, d])
        c = f @ v
        return c, f - c @ v.T

    # the start: x_T's own noise, with the observed coordinates drawn around y_bar
    n_bar, n_null = split(x_T.reshape(b, -1) / sg[0])
    s_T = s_all[0]
    big = sv * s_T > sy
    var = (s_T**2 - th**2).clamp_min(0.0)
    zbar = torch.where(big, ybar + var.sqrt() * n_bar, s_T * n_bar)
    znull = s_T * n_null
    for i in range(nfe):
        s_c, s_n = s_all[i], s_all[i + 1]
        z = zbar @ v.T + znull
        x0, _ = ev.pair((al[i] * z).reshape(x_T.shape), ts[i])
        x0bar, x0null = split(x0.reshape(b, -1).to(dt))
        xi_bar, xi_null = split(noise_like(z, generator))
        # the null space of A: DDIM-like with eta
        znull = x0null + math.sqrt(1.0 - eta * eta) * s_n * (znull - x0null) / s_c + eta * s_n * xi_null
        # observed coordinates
        before = sv * s_n >= sy  # noisier than y (always, when sigma_y = 0)
        nb = (s_n**2 - (eta_b * th) ** 2).clamp_min(0.0).sqrt()
        z_before = eta_b * ybar + (1.0 - eta_b) * x0bar + nb * xi_bar
        z_after = x0bar + math.sqrt(1.0 - eta * eta) * s_n * (ybar - x0bar) / th.clamp_min(1e-300) + eta * s_n * xi_bar
        zbar = torch.where(before, z_before, z_after)
    x = (zbar @ v.T + znull).reshape(x_T.shape)
    residual = (y - operator(x)).reshape(b, -1).norm(dim=1)
    return x, {"times": ts, "residual": residual}


register(
    "ddrm",
    ddrm,
    'Kawar, Elad, Ermon, Song, "Denoising Diffusion Restoration Models", NeurIPS 2022',
    "svd",
)
