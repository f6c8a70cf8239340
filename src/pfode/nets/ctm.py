"""Consistency Trajectory Models (Kim et al., ICLR 2024): the jump ``G(x_t, t, s)`` on any path, networks that
take a second time (an MLP for vectors, a UNet for images), and gamma-sampling.

CTM in EDM's variables (``x_sigma = x0 + sigma eps``, data at ``sigma_min``) writes the jump from ``t`` to
``s <= t`` as ``G(x_t, t, s) = (s / t) x_t + (1 - s / t) g(x_t, t, s)``: the DDIM (Euler) step towards the
estimate ``g``, so ``G(x_t, t, t) = x_t`` and ``g(x_t, t, t)`` is the denoiser ``E[x0 | x_t]`` (trained by
denoising score matching). On a pfode path ``x_t = alpha_t x0 + sigma_t eps`` the same step in the scaled state
``y = x / alpha``, ``s = sigma / alpha`` (EDM's sigma on every path) reads, in path times ``t >= tau``::

    G(x_t, t, tau) = (sigma_tau / sigma_t) x_t + (alpha_tau - sigma_tau alpha_t / sigma_t) g(x_t, t, tau),

the DDIM step from ``t`` to ``tau`` with ``x0_hat = g``. ``g`` carries EDM's preconditioning in ``s``:
``g = c_skip(s_t) y_t + c_out(s_t) F(c_in(s_t) y_t, t_net, tau_net)`` with ``c_skip = sd^2 / (s^2 + sd^2)``,
``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)`` (``sd = sigma_data``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..paths import Path, get_path
from ..predictions import Denoiser
from .mlp import MLP
from .unet import UNet

__all__ = [
    "TwoTimeMLP",
    "TwoTimeUNet",
    "CTMModel",
    "ctm_sample",
    "ctm_times",
    "time_grid",
    "jump_coefficients",
    "SPACINGS",
]

SPACINGS = ("karras", "uniform")


def _second_time(width: int, time_dim: int) -> nn.Sequential:
    """The projection of the second time's sinusoidal embedding; its last layer starts at zero (no effect at init)."""
    semb = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
    nn.init.zeros_(semb[2].weight)
    nn.init.zeros_(semb[2].bias)
    return semb


def _both_times(net, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """``t``'s embedding plus the projected embedding of ``s`` (one time, or one per sample)."""
    if s is None:
        raise TypeError(
            f"{type(net).__name__}(x, t, s) needs the second time s (the time a CTM jumps to); it is not a plain "
            "(x, t) network"
        )
    e = net.time_embedding(x, t)
    s = s.reshape(-1)
    if s.numel() == 1 and x.shape[0] != 1:
        s = s.expand(x.shape[0])
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"s must hold one time or one per sample ({x.shape[0]}), got shape {tuple(s.shape)}")
    return e + net.semb(net.embed(s).to(e.dtype))


class TwoTimeMLP(MLP):
    """The residual :class:`~pfode.nets.MLP` with a second time input: ``(x [B, *shape], t [B], s [B]) -> x-shape``.

    The embedding of ``s`` (same sinusoids, its own two-layer projection, last layer starting at zero) is added to
    the embedding of ``t`` before the residual blocks, as CTM's networks condition on both times. Arguments as
    :class:`~pfode.nets.MLP`. Calling it without ``s`` is a ``TypeError``.
    """

    name = "ctm-mlp"

    def __init__(
        self,
        data_shape=(2,),
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        time_scale: float = 1000.0,
        log_time: bool = False,
    ):
        super().__init__(data_shape, width, depth, time_dim, time_scale, log_time)
        self.semb = _second_time(width, time_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        e = _both_times(self, x, t, s)
        h = self.inp(x.reshape(x.shape[0], -1))
        for blk in self.blocks:
            h = blk(h, e)
        return self.out(self.act(h)).reshape(x.shape)


class TwoTimeUNet(UNet):
    """The :class:`~pfode.nets.UNet` with a second time input: ``(x [B, C, H, W], t [B], s [B]) -> [B, C, H, W]``.

    ``s`` is embedded like ``t`` (the same sinusoids) and projected by its own two-layer MLP, whose last layer
    starts at zero; the result is added to ``t``'s embedding, which every residual block receives -- CTM's networks
    (Kim et al., 2024, after EDM's) condition on both times this way. At initialisation the output does not depend
    on ``s``, so a :class:`CTMModel` around it starts as a denoiser ``g(x_t, t)`` whose jump ``G`` depends on ``s``
    only through the DDIM coefficients. Arguments as :class:`~pfode.nets.UNet`; registered as ``"ctm-unet"``.
    Calling it without ``s`` is a ``TypeError``.
    """

    name = "ctm-unet"

    def __init__(
        self,
        data_shape=(1, 8, 8),
        base: int = 32,
        mults=(1, 2),
        blocks: int = 1,
        time_dim: int = 64,
        groups: int = 8,
        time_scale: float = 1000.0,
        log_time: bool = False,
    ):
        super().__init__(data_shape, base, mults, blocks, time_dim, groups, time_scale, log_time)
        self.semb = _second_time(4 * base, time_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(x, _both_times(self, x, t, s))


def _times(t, x: torch.Tensor, name: str) -> torch.Tensor:
    t = as_f64(t).to(x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"{name} must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}")
    return t


def jump_coefficients(path: Path, t, s) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``G = a x_t + b g``: ``a = sigma_s / sigma_t``, ``b = alpha_s - a alpha_t`` (float64 ``[B]``).

    ``s = t`` gives ``(1, 0)`` (the identity); ``sigma_s = 0`` gives ``(0, alpha_s)`` (the data estimate).
    """
    t, s = as_f64(t), as_f64(s)
    a = path.sigma(s) / path.sigma(t)
    return a, path.alpha(s) - a * path.alpha(t)


class CTMModel(nn.Module):
    """The CTM jump ``G(x_t, t, s)`` of a two-time network ``net(x, t_net, s_net)`` on any path (see the module).

    ``forward(x, t, s)`` takes path times ``t >= s`` (floats or ``[B]`` tensors) and returns the state at time
    ``s``; ``forward(x, t, s, output="g")`` returns the estimate ``g(x_t, t, s)`` instead, and ``g(x_t, t, t)`` is
    the model's denoiser (:meth:`denoiser`). Calling it without ``s`` -- as a plain ``(x, t)`` denoiser -- is a
    ``TypeError`` that says what to do instead.

    Args:
        net: a network ``(x, t_net, s_net) -> x-shape`` (:class:`TwoTimeMLP`, :class:`TwoTimeUNet`).
        path: the :class:`~pfode.paths.Path` (or its name).
        sigma_data: EDM's data scale in the preconditioning.
        t_min, t_max: the data and noise ends the model was trained between (default the path's); sampling
            starts at ``t_max`` and its last jump lands on ``t_min``.
        time_input: what the network sees as both times (as :class:`pfode.Denoiser`).
        spacing: the default sampling times of :func:`ctm_times` (``"karras"`` in ``s`` or ``"uniform"`` in ``t``).
    """

    def __init__(
        self,
        net: nn.Module,
        path: Path | str,
        sigma_data: float = 0.5,
        t_min: float | None = None,
        t_max: float | None = None,
        time_input: str | Callable = "t",
        spacing: str = "karras",
    ):
        super().__init__()
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        if not callable(net):
            raise TypeError(f"net must be a module (x, t, s) -> x-shape, got {type(net).__name__}")
        self.net = net
        self.path = get_path(path)
        self.sigma_data = check_finite_float("sigma_data", sigma_data, 0.0, strict=True)
        self.t_min = float(self.path.t_min if t_min is None else t_min)
        self.t_max = float(self.path.t_max if t_max is None else t_max)
        if not self.path.t_lo <= self.t_min < self.t_max <= self.path.t_hi:
            raise ValueError(
                f"t_min={self.t_min}, t_max={self.t_max}: need {self.path.t_lo} <= t_min < t_max <= {self.path.t_hi}"
            )
        if not math.isfinite(float(self.path.s(torch.tensor(self.t_max, dtype=torch.float64)))):
            raise ValueError(f"t_max={self.t_max}: s = sigma/alpha is infinite there; CTM needs a finite noise end")
        self._inner = Denoiser(lambda x, t: x, self.path, "x0", time_input)  # time conversion only
        if hasattr(net, "data_shape"):
            self.data_shape = net.data_shape

    def config(self) -> dict:
        """``{"name": "ctm", "net": net.config(), "path": path.spec(), ...}``, rebuilt by
        :func:`pfode.models.build_net`; ``ValueError`` when the network or the path cannot be described."""
        if not hasattr(self.net, "config"):
            raise ValueError(f"the wrapped {type(self.net).__name__} has no config() to describe it")
        return {
            "name": "ctm",
            "net": self.net.config(),
            "path": self.path.spec(),
            "sigma_data": self.sigma_data,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "time_input": self._inner.spec()["time_input"],
            "spacing": self.spacing,
        }

    def forward(self, x: torch.Tensor, t, s=None, output: str = "G") -> torch.Tensor:
        if s is None:
            raise TypeError(
                "a CTM model jumps G(x_t, t, s) and needs the target time s: call model(x, t, s); sample with "
                "pfode.sample(model, x_T, nfe=...) or pfode.nets.ctm.ctm_sample; use model.denoiser() for its "
                "denoiser g(x_t, t, t) as a plain pfode.Denoiser"
            )
        if output not in ("G", "g"):
            raise ValueError(f"output={output!r} is unknown; valid: 'G' (the jump), 'g' (the estimate)")
        t, s = _times(t, x, "t"), _times(s, x, "s")
        shape = (-1,) + (1,) * (x.dim() - 1)
        sd = self.sigma_data
        st = self.path.s(t)
        c_skip = sd * sd / (st * st + sd * sd)
        c_out = st * sd / torch.sqrt(st * st + sd * sd)
        c_in = 1.0 / torch.sqrt(st * st + sd * sd)
        dt = x.dtype if x.dtype == torch.float64 else torch.float32
        y = x.to(dt) / self.path.alpha(t).to(dt).reshape(shape)
        f = self.net(
            (y * c_in.to(dt).reshape(shape)).to(x.dtype), self._inner.time_tensor(t, x), self._inner.time_tensor(s, x)
        )
        if not isinstance(f, torch.Tensor) or f.shape != x.shape:
            raise ValueError(f"the network must return a tensor shaped like x {tuple(x.shape)}")
        g = c_skip.to(dt).reshape(shape) * y + c_out.to(dt).reshape(shape) * f.to(dt)
        if output == "g":
            return g.to(x.dtype)
        return self.jump(x, t, s, g)

    def jump(self, x: torch.Tensor, t, s, g: torch.Tensor) -> torch.Tensor:
        """``G = a x + b g`` (:func:`jump_coefficients`) for a given estimate ``g`` shaped like ``x``."""
        t, s = _times(t, x, "t"), _times(s, x, "s")
        a, b = jump_coefficients(self.path, t, s)
        shape = (-1,) + (1,) * (x.dim() - 1)
        dt = x.dtype if x.dtype == torch.float64 else torch.float32
        out = a.to(dt).reshape(shape) * x.to(dt) + b.to(dt).reshape(shape) * g.to(dt)
        return out.to(x.dtype)

    def denoiser(self) -> Denoiser:
        """The model's denoiser ``g(x_t, t, t)`` (its DSM head) as an x0-predicting :class:`pfode.Denoiser`."""

        def net(x, t):
            return self(x, t, t, output="g")

        return Denoiser(net, self.path, "x0", "t")


def time_grid(path: Path, t_lo: float, t_hi: float, n: int, spacing: str = "karras", rho: float = 7.0):
    """``n`` decreasing path times from ``t_hi`` to ``t_lo``: Karras-spaced (``rho``) in ``s = sigma / alpha``
    (``"karras"``, EDM's and CTM's grid) or uniform in ``t`` (``"uniform"``) (float64 ``[n]``)."""
    check_int("n", n, 2)
    check_choice("spacing", spacing, SPACINGS)
    rho = check_finite_float("rho", rho, 0.0, strict=True)
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    if spacing == "uniform":
        t = t_hi + u * (t_lo - t_hi)
    else:
        s_hi = float(path.s(torch.tensor(t_hi, dtype=torch.float64)))
        s_lo = float(path.s(torch.tensor(t_lo, dtype=torch.float64)))
        t = path.t_of_s((s_hi ** (1 / rho) + u * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho)
    t[0], t[-1] = t_hi, t_lo
    return t


def ctm_times(model: CTMModel, nfe: int, rho: float = 7.0, t_start: float | None = None) -> torch.Tensor:
    """``nfe + 1`` decreasing path times from ``t_start`` (default ``model.t_max``) to ``model.t_min`` with the
    model's ``spacing`` (:func:`time_grid`; float64)."""
    check_int("nfe", nfe, 1)
    t1 = model.t_max if t_start is None else float(t_start)
    return time_grid(model.path, model.t_min, t1, nfe + 1, model.spacing, rho)


@torch.no_grad()
def ctm_sample(
    model: CTMModel,
    x_T: torch.Tensor,
    times=None,
    *,
    nfe: int | None = None,
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """gamma-sampling of a CTM (Kim et al., 2024, Algorithm 1 / Section 5), one jump per step: ``len(times) - 1``
    network evaluations.

    For consecutive times ``t_n > t_{n+1}`` (path times): jump to ``tau`` with ``s(tau) = sqrt(1 - gamma^2)
    s(t_{n+1})`` (``s = sigma / alpha``), then re-noise to ``t_{n+1}`` in the scaled state:
    ``y <- y + gamma s(t_{n+1}) z``, ``x = alpha(t_{n+1}) y`` (marginal variance ``s(t_{n+1})^2`` again). The last
    step jumps straight to ``times[-1]``. ``gamma = 0`` follows the PF-ODE with long jumps (deterministic);
    ``gamma = 1`` is the multistep sampling of consistency models.

    Args:
        model: a :class:`CTMModel`.
        x_T: ``[B, ...]`` the state at ``times[0]`` (e.g. ``sigma(t_max) * randn``).
        times: decreasing path times ``[n + 1]``; default :func:`ctm_times` with ``nfe`` jumps.
        nfe: number of jumps when ``times`` is left out.
        gamma: in ``[0, 1]``.
        generator: for the fresh noise of ``gamma > 0``.
    Returns:
        samples at ``times[-1]``, shaped like ``x_T``.
    """
    if not isinstance(model, CTMModel):
        raise TypeError(f"model must be a pfode.nets.ctm.CTMModel, got {type(model).__name__}")
    gamma = check_finite_float("gamma", gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in [0, 1]")
    if times is None:
        if nfe is None:
            raise ValueError("give times= (decreasing path times) or nfe= (number of jumps)")
        times = ctm_times(model, nfe)
    times = as_f64(times).reshape(-1).cpu()
    if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"times must hold >= 2 strictly decreasing path times, got {times.tolist()}")
    path = model.path
    x = x_T
    n = times.numel() - 1
    for i in range(n):
        t_n, t_next = float(times[i]), float(times[i + 1])
        if i == n - 1 or gamma == 0.0:
            x = model(x, t_n, t_next)
            continue
        s_next = float(path.s(torch.tensor(t_next, dtype=torch.float64)))
        tau = float(path.t_of_s(torch.tensor(math.sqrt(1.0 - gamma * gamma) * s_next, dtype=torch.float64)))
        tau = min(max(tau, float(times[-1])), t_next) if gamma < 1.0 else float(times[-1])
        x = model(x, t_n, tau)
        a_tau = float(path.alpha(torch.tensor(tau, dtype=torch.float64)))
        s_tau = float(path.s(torch.tensor(tau, dtype=torch.float64)))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        a_next = float(path.alpha(torch.tensor(t_next, dtype=torch.float64)))
        std = math.sqrt(max(s_next * s_next - s_tau * s_tau, 0.0))
        x = a_next * (x / a_tau + std * z)
    return x
