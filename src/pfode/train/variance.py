"""Variance matching: learn the conditional variance of the flow velocity for the AdaFlow solver.

Hu, Liu, Liu & Liu, *AdaFlow: Imitation Learning with Variance-Adaptive Flow-Based Policies*, NeurIPS 2024
(arXiv:2402.04292), variance estimation network. With a trained velocity model ``v_hat(x_t, t)`` and the
conditional velocity ``u = alpha' x0 + sigma' eps`` (``eps - x0`` on the Linear path), a network outputs
``log sigma_phi(x_t, t)`` (one scalar per sample) and minimises the Gaussian negative log-likelihood of the
residual with an isotropic scale,

    L(phi) = E[ |u - v_hat(x_t, t)|^2 / (2 sigma_phi^2) + log sigma_phi ],

whose minimiser is ``sigma_phi^2(x_t, t) = E[|u - v_hat|^2 | x_t]`` -- for an exact ``v_hat`` the total
conditional variance ``tr Var[u | x_t]`` that :class:`pfode.solvers.adaflow.AdaFlow` sizes its steps with. The
velocity model is held fixed (no gradient flows into it: the paper's separately trained variant; its joint
variant adds this loss to flow matching with a shared trunk).

Checked against the authors' released policy (hxixixh/AdaFlow, ``adaflow_unet_image_policy.py``): the same loss,
``|u - v_hat|^2`` summed over every element of a sample, ``/ (2 exp(2 log sigma)) + log sigma`` with one
``log sigma`` per sample and the error detached when the velocity model is frozen; their sampler's step
``min(max(eta / sigma, 1 / N), 1 - t)`` is :class:`~pfode.solvers.adaflow.AdaFlow`'s rule with ``min_step = 1 / N``.

Training: :func:`fit_variance` (a small Adam loop that supports conditioning). The :class:`VarianceMatching`
objective also follows the ``prepare``/``loss`` protocol of :class:`pfode.train.losses.Objective`, but it has no
denoiser of its own, so :class:`pfode.train.Trainer` (which describes and samples a denoiser) is not supported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_finite_float, check_int
from ..paths import Path, get_path
from ..predictions import Coeffs, Denoiser
from .losses import Objective, TimeSampler

__all__ = ["VarianceMatching", "fit_variance"]


class VarianceMatching(Objective):
    """The AdaFlow variance-estimation loss for a network ``var_net(x, t_net, **cond) -> log sigma`` (``[B]`` or
    ``[B, 1]``), given a fixed velocity model.

    Args:
        velocity: the trained flow model: a :class:`pfode.Denoiser` (any prediction type; its ``dx/dt`` is used)
            or a network ``net(x, t_net, **cond)`` predicting the velocity on ``path`` (wrapped as
            ``Denoiser(net, path, "velocity", time_input)``).
        path: the path (default the velocity denoiser's, else ``"linear"``).
        time_sampler: a name from :data:`pfode.train.losses.TIME_SAMPLERS` or a :class:`TimeSampler`.
        t_range: training times (default the path's ``(t_min, t_max)``).
        time_input: what ``var_net`` sees as time (as :class:`pfode.Denoiser`; default the velocity's).
    """

    name = "variance-matching"

    def __init__(
        self,
        velocity,
        path: Path | str | None = None,
        time_sampler: str | TimeSampler = "uniform",
        t_range: tuple[float, float] | None = None,
        time_input: str | Callable | None = None,
    ):
        if isinstance(velocity, Denoiser):
            if path is not None and repr(get_path(path)) != repr(velocity.path):
                raise ValueError(f"path={path!r} differs from the velocity denoiser's path {velocity.path!r}")
            self.velocity = velocity
        elif callable(velocity):
            self.velocity = Denoiser(
                velocity,
                get_path(path if path is not None else "linear"),
                "velocity",
                time_input if time_input is not None else "t",
            )
        else:
            raise TypeError(f"velocity must be a pfode.Denoiser or a callable network, got {type(velocity).__name__}")
        self.path = self.velocity.path
        self.time_input = time_input if time_input is not None else self.velocity.time_input
        # the variance network's time convention, through a Denoiser's time mapping (validates time_input)
        self._clock = Denoiser(lambda x, t: x, self.path, "velocity", self.time_input)
        if isinstance(time_sampler, TimeSampler):
            self.time_sampler = time_sampler
        else:
            self.time_sampler = TimeSampler(time_sampler, self.path, t_range)

    # -- objective protocol ------------------------------------------------------------------------------------
    def prepare(self, batch, generator: torch.Generator | None = None, step: int = 0) -> dict:
        """Draw noise and times for a data batch ``x0`` ``[B, ...]`` (or a pair ``(x0, eps)``)."""
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"a paired batch must be (x0, eps), got {len(batch)} tensors")
            x0, eps = batch
        else:
            x0 = batch
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return {"x0": x0, "eps": eps, "t": self.time_sampler(x0.shape[0], generator)}

    def residual(self, batch: dict, cond: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, t, |u - v_hat(x_t, t)|^2)`` for a prepared batch (the squared error summed over dimensions,
        ``[B]``, without gradient)."""
        x0, eps = batch["x0"], batch["eps"]
        t = as_f64(batch["t"]).to(x0.device)
        c = Coeffs.at(self.path, t, like=x0)
        x_t = c.alpha * x0 + c.sigma * eps
        with torch.no_grad():
            x0_hat, eps_hat = self.velocity.pair_at(x_t, t, cond or {}, coeffs=c)
            v_hat = c.d_alpha * x0_hat + c.d_sigma * eps_hat
            u = c.d_alpha * x0 + c.d_sigma * eps
            err = (u - v_hat).reshape(x0.shape[0], -1).pow(2).sum(1)
        return x_t, t, err

    def log_sigma(self, var_net, x: torch.Tensor, t, cond: dict | None = None) -> torch.Tensor:
        """``var_net``'s ``log sigma`` at path times ``t`` as ``[B]`` (checks its shape)."""
        out = var_net(x, self._clock.time_tensor(as_f64(t), x), **(cond or {}))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the variance network returned {type(out).__name__}, expected a [B] tensor")
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (x.shape[0],):
            raise ValueError(f"the variance network must return log sigma as [B] or [B, 1], got {tuple(out.shape)}")
        return out

    def loss(self, model, batch: dict, *, step: int = 0, target_model=None, cond: dict | None = None):
        """``(mean, per_sample)`` of ``|u - v_hat|^2 / (2 sigma^2) + log sigma`` for the variance network
        ``model``; ``cond`` (or ``batch["cond"]``) is passed to both networks."""
        cond = cond if cond is not None else batch.get("cond")
        x_t, t, err = self.residual(batch, cond)
        ls = self.log_sigma(model, x_t, t, cond).to(torch.float32)
        per = 0.5 * err.to(ls.dtype) * torch.exp(-2.0 * ls) + ls
        return per.mean(), per

    def variance_fn(self, var_net) -> Callable:
        """``variance_fn(x, t, **cond) -> sigma^2`` ``[B]`` (float64) of a trained ``var_net``, for
        :class:`pfode.solvers.adaflow.AdaFlow`."""

        def variance_fn(x: torch.Tensor, t, **cond) -> torch.Tensor:
            with torch.no_grad():
                tt = as_f64(t).to(x.device)
                tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
                return torch.exp(2.0 * as_f64(self.log_sigma(var_net, x, tt, cond)))

        return variance_fn

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": repr(self.path),
            "velocity": repr(self.velocity),
            "time_sampler": self.time_sampler.spec(),
            "time_input": self.time_input if isinstance(self.time_input, str) else "callable",
        }


def fit_variance(
    objective: VarianceMatching,
    var_net: nn.Module,
    data: torch.Tensor,
    cond: dict | None = None,
    *,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train ``var_net`` with ``objective`` by Adam on minibatches of ``data`` ``[N, ...]`` (and the matching rows
    of every tensor in ``cond`` with leading dimension ``N``); return the loss of every step."""
    if not isinstance(objective, VarianceMatching):
        raise TypeError(f"objective must be a VarianceMatching, got {type(objective).__name__}")
    if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] < 1:
        raise ValueError("data must be a tensor [N, ...] with N >= 1")
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_finite_float("lr", lr, 0.0, strict=True)
    n = data.shape[0]
    for k, v in (cond or {}).items():
        if not (isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n):
            raise ValueError(f"cond[{k!r}] must be a tensor with leading dimension N={n} (one row per data point)")
    opt = torch.optim.Adam(var_net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(data.device)
        batch = objective.prepare(data[idx], generator, step)
        c = {k: v[idx] for k, v in (cond or {}).items()}
        loss, _ = objective.loss(var_net, batch, step=step, cond=c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
