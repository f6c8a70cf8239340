"""The consistency-model parameterisation (Song et al., 2023) of a network, on any path."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_finite_float
from ..paths import Path, get_path
from ..predictions import Denoiser

__all__ = ["ConsistencyModel"]


class ConsistencyModel(nn.Module):
    """``f(x, t) = c_skip(s) x / alpha + c_out(s) F(c_in(s) x / alpha, t_net)`` with ``s = sigma / alpha``.

    The parameterisation of Song et al. (2023) written in the scaled variable ``y = x / alpha`` so it holds on
    every path: ``c_skip = sigma_d^2 / ((s - s_min)^2 + sigma_d^2)``, ``c_out = sigma_d (s - s_min) /
    sqrt(sigma_d^2 + s^2)``, ``c_in = 1 / sqrt(s^2 + sigma_d^2)``, so ``f(x, t_min) = x / alpha(t_min)``
    exactly. ``forward(x, t)`` takes *path* times and returns the data estimate (an x0 prediction).
    """

    def __init__(
        self,
        net: nn.Module,
        path: Path | str,
        sigma_data: float = 0.5,
        t_min: float | None = None,
        time_input: str | Callable = "t",
    ):
        super().__init__()
        self.net = net
        self.path = get_path(path)
        self.sigma_data = check_finite_float("sigma_data", sigma_data, 0.0, strict=True)
        self.t_min = self.path.t_min if t_min is None else float(t_min)
        self.s_min = float(self.path.s(self.t_min))
        self._inner = Denoiser(net, self.path, "x0", time_input)
        if hasattr(net, "data_shape"):
            self.data_shape = net.data_shape

    def config(self) -> dict:
        """``{"name": "consistency", "net": net.config(), "path": path.spec(), ...}``, JSON-serialisable; rebuilt
        by :func:`pfode.models.build_net`. ``ValueError`` when the network or the path cannot be described."""
        if not hasattr(self.net, "config"):
            raise ValueError(f"the wrapped {type(self.net).__name__} has no config() to describe it")
        time_input = self._inner.spec()["time_input"]
        return {
            "name": "consistency",
            "net": self.net.config(),
            "path": self.path.spec(),
            "sigma_data": self.sigma_data,
            "t_min": self.t_min,
            "time_input": time_input,
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = as_f64(t).to(x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        shape = (-1,) + (1,) * (x.dim() - 1)
        a = self.path.alpha(t)
        s = self.path.s(t)
        sd = self.sigma_data
        ds = s - self.s_min
        c_skip = sd * sd / (ds * ds + sd * sd)
        c_out = sd * ds / torch.sqrt(sd * sd + s * s)
        c_in = 1.0 / torch.sqrt(s * s + sd * sd)
        # the skip connection in float32 (float64 states stay float64); the network sees, and the result is, x's
        # dtype (a float16/bfloat16 network gets a float16/bfloat16 input)
        dt = x.dtype if x.dtype == torch.float64 else torch.float32
        y = x.to(dt) / a.to(dt).reshape(shape)
        f = self._inner.raw((y * c_in.to(dt).reshape(shape)).to(x.dtype), self._inner.time_tensor(t, x))
        return (c_skip.to(dt).reshape(shape) * y + c_out.to(dt).reshape(shape) * f).to(x.dtype)
