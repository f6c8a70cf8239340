"""RED-diff: regularization by denoising diffusion (Mardani, Song, Kautz, Vahdat, "A Variational Perspective on Solving
Inverse Problems with Diffusion Models", ICLR 2024), on any pfode path and prediction type.

The variational posterior ``q(x0 | y) = N(mu, sigma^2 I)`` with ``sigma -> 0`` turns sampling into optimisation of
``mu`` (the paper's eq. 9 and Algorithm 1): for ``t`` descending from ``t_max`` to ``t_min``, draw ``eps ~ N(0, I)``,
set ``x_t = alpha_t mu + sigma_t eps`` and take one Adam step on

    ||y - A(mu)||^2 / (2 sigma_y^2) + lambda_t (sg[eps_hat(x_t, t) - eps])^T mu,

with the SNR-based weight ``lambda_t = lambda / sqrt(SNR_t) = lambda sigma_t / alpha_t`` (``lambda = 0.25``, Adam with
learning rate 0.1 and betas (0.9, 0.99), as the paper). ``sg`` stops the gradient: no backpropagation through the
network (``grad_evals = 0``). ``mu`` starts at the pseudo-inverse ``A^+ y`` for a linear operator, at 0 otherwise;
``x_T`` is not used (the randomness is the ``eps`` draws). The output is ``mu``: a regularised point estimate, not a
posterior sample -- biased and under-dispersed by design (see ``benchmarks/inverse_gmm.py``).
"""

from __future__ import annotations

import torch

from .._checks import check_finite_float
from .base import register
from .dps import noise_like, schedule
from .operators import LinearOperator

__all__ = ["reddiff"]


def reddiff(
    ev,
    y,
    operator,
    *,
    nfe: int,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    lam: float = 0.25,
    lr: float = 0.1,
    sigma_y: float | None = None,
    spacing: str = "logsnr",
):
    """RED-diff (Mardani et al., ICLR 2024): Adam on the measurement loss plus the denoising-diffusion regulariser.

    Args:
        ev: the counting denoiser (:class:`pfode.inverse.Evaluations`).
        y: measurements ``[B, m]``.
        operator: any differentiable :class:`~pfode.inverse.operators.Operator`.
        nfe: network evaluations (= Adam steps, one time each from ``t_max`` down to ``t_min``).
        x_T: the starting states (only their shape, dtype and device are used).
        generator: seeds the ``eps`` draws.
        lam: ``lambda`` of the weight ``lambda_t = lambda sigma_t / alpha_t`` (>= 0; paper 0.25).
        lr: Adam's learning rate (> 0; paper 0.1).
        sigma_y: the noise level in the data term (> 0); default the operator's noise, or 0.01 when that is 0.
        spacing: time grid (:func:`pfode.grids.grid`).
    Returns:
        ``(mu [B, *shape], info)`` with ``info["residual"]`` the final ``||y - A(mu)||`` per sample ``[B]``.
    """
    lam = check_finite_float("lam", lam, 0.0)
    lr = check_finite_float("lr", lr, 0.0, strict=True)
    if sigma_y is None:
        sigma_y = operator.noise if operator.noise > 0 else 0.01
    sigma_y = check_finite_float("sigma_y", sigma_y, 0.0, strict=True)
    b, shape = x_T.shape[0], x_T.shape
    if isinstance(operator, LinearOperator):
        u, sv, v = operator.svd()
        keep = sv > sv.max() * 1e-10
        u, sv, v = (w.to(x_T.device, x_T.dtype) for w in (u[:, keep], sv[keep], v[:, keep]))
        mu0 = (((y.to(x_T.dtype) @ u) / sv) @ v.T).reshape(shape)
    else:
        mu0 = torch.zeros_like(x_T)
    mu = mu0.detach().clone()
    m1, m2 = torch.zeros_like(mu), torch.zeros_like(mu)  # Adam's moments (Kingma & Ba, 2015)
    beta1, beta2 = 0.9, 0.99
    ts, al, sg = schedule(ev.path, nfe, spacing)
    for i in range(nfe):
        a, s = al[i], sg[i]
        eps = noise_like(x_T, generator)
        _, eps_hat = ev.pair(a * mu + s * eps, ts[i])
        with torch.enable_grad():
            mg = mu.requires_grad_(True)
            res = (y - operator(mg)).reshape(b, -1)
            loss = (res * res).sum() / (2 * sigma_y**2) + lam * (s / a) * ((eps_hat.detach() - eps) * mg).sum()
            (grad,) = torch.autograd.grad(loss, mg)
        mu = mu.detach()
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        step = lr * (m1 / (1 - beta1 ** (i + 1))) / ((m2 / (1 - beta2 ** (i + 1))).sqrt() + 1e-8)
        mu = mu - step
    x = mu
    with torch.no_grad():
        residual = (y - operator(x)).reshape(b, -1).norm(dim=1)
    return x, {"times": ts, "residual": residual}


register(
    "reddiff",
    reddiff,
    'Mardani, Song, Kautz, Vahdat, "A Variational Perspective on Solving Inverse Problems with Diffusion Models", '
    "ICLR 2024",
    "any",
)
