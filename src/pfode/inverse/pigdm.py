"""PiGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, "Pseudoinverse-Guided Diffusion Models for
Inverse Problems", ICLR 2023), for linear measurements ``y = A x + sigma_y n``, on any pfode path and prediction type.

The paper approximates ``p(x0 | x_t)`` by ``N(x0_hat(x_t), r_t^2 I)``, so that ``p(y | x_t) = N(A x0_hat,
r_t^2 A A^T + sigma_y^2 I)`` and its score is the vector-Jacobian product (the paper's eq. 7)

    g = ((y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^{-1} A  d x0_hat / d x_t)^T.

``r_t^2`` is the posterior variance of ``x0`` under a ``N(., v I)`` prior: ``r_t^2 = v s^2 / (v + s^2)`` in the
scaled variable ``s = sigma / alpha`` (the paper's VE form ``sigma_t^2 / (1 + sigma_t^2)`` for ``v = 1``).
The guided score ``grad log p_t(x_t) + g`` enters the step through Tweedie's formula for the conditional:
``x0' = x0_hat + (sigma^2 / alpha) g``, ``eps' = (x_t - alpha x0') / sigma`` -- the same on every path -- followed by
the DDIM step with noise ``eta`` (the paper's sampler). With a ``N(mu, v I)`` prior and the exact denoiser ``g`` is the
exact likelihood score and ``x0'`` the exact ``E[x0 | x_t, y]``, so the method's sample mean is the posterior mean.
(The authors' sampler weights ``g`` differently -- by ``sqrt(alpha_bar_t)`` and a tuned weight; ``scale`` multiplies
``g`` here, 1 being Bayes' rule under the paper's Gaussian approximation.)

``(r_t^2 A A^T + sigma_y^2 I)^{-1}`` is applied through the SVD ``A = U S V^T``: ``U diag(1 / (r_t^2 S^2 +
sigma_y^2)) U^T`` (directions outside ``U`` are killed by ``A^T``). Cost: ``nfe`` network evaluations, each with one
vector-Jacobian product (``grad_evals = nfe``).
"""

from __future__ import annotations

import torch

from .._checks import check_finite_float
from .base import register
from .dps import _check_eta, ddim_coefficients, needs_grad, noise_like, schedule
from .operators import LinearOperator

__all__ = ["pigdm"]


def _require_linear(operator, method: str):
    if not isinstance(operator, LinearOperator):
        raise ValueError(
            f"method {method!r} needs a linear operator (a matrix with an SVD); {operator!r} is not linear"
        )


def pigdm(
    ev,
    y,
    operator,
    *,
    nfe: int,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    data_var: float = 1.0,
    scale: float = 1.0,
    spacing: str = "logsnr",
    weighting: str = "bayes",
):
    """Pseudoinverse-guided diffusion (Song et al., ICLR 2023) for a linear operator, on any path.

    Args:
        ev: the counting denoiser (:class:`pfode.inverse.Evaluations`).
        y: measurements ``[B, m]``.
        operator: a :class:`~pfode.inverse.operators.LinearOperator`.
        nfe: network evaluations (= steps = gradient evaluations).
        x_T: start ``[B, *shape]`` at ``t_max``.
        generator: seeds the DDIM noise.
        eta: DDIM noise in ``[0, 1]`` (1 by default).
        data_var: the prior variance ``v`` in ``r_t^2 = v s^2 / (v + s^2)`` (> 0; 1 for data scaled to unit
            variance, as the paper).
        scale: multiplies the guidance ``g`` (>= 0; 1 = Bayes' rule under the paper's Gaussian approximation).
        spacing: time grid (:func:`pfode.grids.grid`).
        weighting: ``"bayes"`` (the Tweedie weight ``sigma^2 / alpha``: exact for a Gaussian prior and the exact
            denoiser) or ``"snr"`` (that weight times ``alpha^2 / (alpha^2 + sigma^2)``, which damps the guidance at
            high noise as the authors' ``sqrt(alpha_bar_t)`` weight does: a trained network's Jacobian is amplified
            by ``1 / alpha`` there; measured on the shipped digits model, ``"bayes"`` diverges, ``"snr"`` does not).
    Returns:
        ``(x [B, *shape], info)`` with ``info["residual"]`` the final ``||y - A x||`` per sample ``[B]``.
    """
    _require_linear(operator, "pigdm")
    eta = _check_eta(eta)
    data_var = check_finite_float("data_var", data_var, 0.0, strict=True)
    scale = check_finite_float("scale", scale, 0.0)
    if weighting not in ("bayes", "snr"):
        raise ValueError(f"weighting={weighting!r} is unknown; valid: bayes, snr")
    u, sv, _ = operator.svd()
    keep = sv > sv.max() * 1e-10
    u, sv = u[:, keep].to(y.device, y.dtype), sv[keep].to(y.device, y.dtype)
    noise2 = operator.noise**2
    ts, al, sg = schedule(ev.path, nfe, spacing)
    x = x_T
    for i in range(nfe):
        a, s = al[i], sg[i]
        r2 = data_var * s * s / (data_var * a * a + s * s)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0, eps = ev.pair(xg, ts[i], grad=True)
            needs_grad(x0, "pigdm")
            res = (y - operator(x0.detach())).reshape(x.shape[0], -1)
            w = ((res @ u) / (r2 * sv * sv + noise2)) @ u.T  # (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
            # the vector-Jacobian product as the gradient of a scalar (grad_outputs makes torch import its
            # symbolic-shape machinery, seconds on first use)
            (g,) = torch.autograd.grad((x0 * operator.adjoint(w).to(x0.dtype)).sum(), xg)
        weight = scale * s * s / a * (a * a / (a * a + s * s) if weighting == "snr" else 1.0)
        x0p = x0.detach() + weight * g
        eps_p = (x - a * x0p) / s
        c_eps, c_z = ddim_coefficients(a, s, al[i + 1], sg[i + 1], eta)
        x = al[i + 1] * x0p + c_eps * eps_p
        if c_z > 0:
            x = x + c_z * noise_like(x, generator)
        x = x.detach()
    with torch.no_grad():
        residual = (y - operator(x)).reshape(x.shape[0], -1).norm(dim=1)
    return x, {"times": ts, "residual": residual}


register(
    "pigdm",
    pigdm,
    'Song, Vahdat, Mardani, Kautz, "Pseudoinverse-Guided Diffusion Models for Inverse Problems", ICLR 2023',
    "linear",
)
