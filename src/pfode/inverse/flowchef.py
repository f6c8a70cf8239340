"""FlowChef: gradient-free steering of a velocity model in its vector field.

Patel, Wen, Metaxas & Yang, "Steering Rectified Flow Models in the Vector Field for Controlled Image Generation"
(2024, arXiv:2412.00100; ICCV 2025 as "FlowChef"). On the rectified-flow path ``x_t = (1 - t) x_0 + t x_1`` a
velocity model ``v(x_t, t)`` predicts the clean sample as ``x0_hat = x_t - t v``. FlowChef evaluates the network
once per step and, *without backpropagating through it* ("gradient skipping": the Jacobian ``d x0_hat / d x_t`` of a
straight flow is taken as the identity), moves the state down the gradient of the measurement loss at ``x0_hat``:

    v = v(x_t, t);  x0_hat = x_t - t v
    repeat iters times:  g = grad_{x0} L(x0_hat);  x_t <- x_t - lr g;  x0_hat <- x0_hat - lr g     (v fixed)
    x_{t - dt} = x_t - dt v

with ``L(x0) = ||A(x0) - y||^2 / 2`` (only the operator is differentiated: no vector-Jacobian product through the
network, ``grad_evals`` stays 0).

What it needs: a *velocity-type* path, where ``alpha(t) + sigma(t) = 1`` (the linear interpolant / rectified flow,
:class:`pfode.paths.Linear`); ``info["rectified_flow"]`` says whether the path is one. On any other pfode path it still
runs through ``x0_hat``: the network's output of any prediction type is converted to ``(x0_hat, eps_hat)``; a shift
``delta`` of the state moves both by ``delta / (alpha + sigma)`` (the unique common factor that keeps
``x = alpha x0 + sigma eps``; it is 1 on the rectified-flow path, where this is FlowChef's frozen velocity), and the
step is the exponential-integrator (DDIM) step ``x_next = alpha_next x0_hat + sigma_next eps_hat`` -- on the
rectified-flow path exactly FlowChef's Euler step ``x_t - dt v``. This generalisation is ours, not the paper's.

One network evaluation per grid time: ``nfe`` evaluations on ``nfe`` times from ``t_max`` to ``t_min``, the last
returning the steered ``x0_hat``.
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_finite_float, check_int
from .base import register
from .operators import LinearOperator, Operator

__all__ = ["flowchef", "data_grad", "lipschitz", "grid_times", "coefficients", "is_rectified_flow"]


def lipschitz(operator: Operator) -> float | None:
    """``||A||_2^2`` (the Lipschitz constant of ``grad ||A x - y||^2 / 2``) for a linear operator, else ``None``."""
    if isinstance(operator, LinearOperator):
        s = operator.svd()[1]
        return float(s[0]) ** 2 if s.numel() else None
    return None


def data_grad(operator: Operator, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_{x0} ||A(x0) - y||^2 / 2`` (``[B, *shape]``), through the operator only (never the network)."""
    if operator.linear:
        return operator.adjoint(operator.forward(x0) - y).to(x0.dtype)
    with torch.enable_grad():
        z = x0.detach().requires_grad_(True)
        loss = 0.5 * ((operator.forward(z) - y) ** 2).sum()
        (g,) = torch.autograd.grad(loss, z)
    return g


def grid_times(path, nfe: int, spacing: str = "logsnr") -> list[float]:
    """``nfe`` decreasing path times from ``t_max`` to ``t_min`` (one network evaluation at each)."""
    from ..grids import grid

    if nfe == 1:
        return [float(path.t_max)]
    return [float(v) for v in grid(path, nfe - 1, spacing).tolist()]


def is_rectified_flow(path) -> bool:
    """Whether ``alpha(t) + sigma(t) = 1`` on the path (the linear interpolant), checked at a few times."""
    t = torch.linspace(float(path.t_min), float(path.t_max), 7, dtype=torch.float64)
    return bool(((path.alpha(t) + path.sigma(t) - 1.0).abs() < 1e-9).all())


def coefficients(path, ts: list[float]) -> tuple[list[float], list[float], list[float]]:
    """``alpha, sigma, lambda`` at the times ``ts`` as host floats (computed once per grid, float64)."""
    tt = torch.tensor(ts, dtype=torch.float64)
    return path.alpha(tt).tolist(), path.sigma(tt).tolist(), path.lam(tt).tolist()


def flowchef(
    ev, y, operator, *, nfe, x_T, generator=None, lr: float | None = None, iters: int = 1, spacing: str = "logsnr"
):
    """FlowChef (Patel et al. 2024): steer the ODE state by the measurement-loss gradient at ``x0_hat``.

    Args (beyond the method contract of :mod:`pfode.inverse.base`):
        lr: step size of each gradient step (default ``0.3 / ||A||_2^2`` for a linear operator -- ``1 / ||A||^2``
            is a full Landweber step, which on the digits model pushes the state off the data and loses ~6 dB --
            and ``0.3`` otherwise); ``>= 0`` (``0`` is the unguided ODE).
        iters: gradient steps per grid time (no extra network evaluation).
        spacing: grid spacing (``"logsnr"``, ``"uniform"``, ...).
    Returns:
        ``x [B, *shape]`` and ``info`` with ``rectified_flow`` (whether the path is the one FlowChef is derived for),
        ``lr``, ``iters``, ``times``.
    """
    iters = check_int("iters", iters, 1)
    spacing = check_choice("spacing", spacing, ("logsnr", "uniform", "karras", "quadratic"))
    if lr is None:
        lip = lipschitz(operator)
        lr = 0.3 / lip if lip else 0.3
    lr = check_finite_float("lr", lr, 0.0)
    path = ev.path
    ts = grid_times(path, nfe, spacing)
    alphas, sigmas, _ = coefficients(path, ts)
    x = x_T
    x0 = x
    for k, t in enumerate(ts):
        x0, eps = ev.pair(x, t)
        a, s = alphas[k], sigmas[k]
        c = 1.0 / (a + s)
        for _ in range(iters):
            g = lr * data_grad(operator, x0, y)
            x = x - g
            x0 = x0 - c * g
            eps = eps - c * g
        if k + 1 < len(ts):
            x = alphas[k + 1] * x0 + sigmas[k + 1] * eps
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"flowchef: the state became non-finite at t={t:g}; lower lr (now {lr:g})")
    info = {"rectified_flow": is_rectified_flow(path), "lr": lr, "iters": iters, "times": ts}
    return x0, info


register(
    "flowchef", flowchef, "Patel et al. 2024, Steering Rectified Flow Models in the Vector Field (FlowChef)", "velocity"
)
