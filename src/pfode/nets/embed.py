"""Sinusoidal time embedding (Vaswani et al., 2017; as used by DDPM, Ho et al., 2020) and what the reference
networks share."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalEmbedding", "TimeNet"]


class SinusoidalEmbedding(nn.Module):
    """``t -> [sin(f_k u), cos(f_k u)]`` with ``u = time_scale * t`` (or ``time_scale * log(t) / 4``).

    Frequencies ``f_k = max_period^(-k / half)`` for ``k = 0..half-1``. With the default
    ``time_scale = 1000`` a path time in ``[0, 1]`` spans the range a DDPM timestep index would;
    ``log_time=True`` embeds EDM's ``c_noise = log(sigma) / 4`` instead (for networks that see
    ``sigma`` in ``(0, inf)``).

    Args:
        dim: embedding size (even, >= 2).
        time_scale: multiplies the (possibly log-transformed) time before the sinusoids.
        log_time: embed ``log(t) / 4`` rather than ``t`` (times must then be > 0).
        max_period: the slowest period.
    """

    def __init__(self, dim: int, time_scale: float = 1000.0, log_time: bool = False, max_period: float = 10_000.0):
        super().__init__()
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim={dim!r}: need an even integer >= 2")
        self.dim, self.time_scale, self.log_time = dim, float(time_scale), bool(log_time)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float32).reshape(-1)
        if self.log_time:
            t = 0.25 * torch.log(t.clamp_min(1e-20))
        u = (self.time_scale * t)[:, None] * self.freqs[None]
        return torch.cat([torch.sin(u), torch.cos(u)], dim=1)


class TimeNet(nn.Module):
    """Base of the reference networks: ``data_shape``, ``config()`` and the time embedding projected to ``width``.

    ``config`` holds the constructor arguments in order (``time_dim``, ``time_scale`` and ``log_time`` among them).
    """

    name = ""
    noun = "samples"

    def __init__(self, data_shape: tuple, width: int, /, **config):
        super().__init__()
        self.data_shape = data_shape
        self._config = {"data_shape": list(data_shape), **config}
        time_dim = config["time_dim"]
        self.embed = SinusoidalEmbedding(time_dim, config["time_scale"], config["log_time"])
        self.temb = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) to rebuild this network with :func:`pfode.nets.build`."""
        return {"name": self.name, **self._config}

    def time_embedding(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Check ``x`` against ``data_shape``; embed ``t`` (``[B]``, or one time for the whole batch)."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"{type(self).__name__} built for {self.noun} of shape {self.data_shape} got input of shape "
                f"{tuple(x.shape)}"
            )
        t = t.reshape(-1)
        if t.numel() == 1 and x.shape[0] != 1:
            t = t.expand(x.shape[0])
        return self.temb(self.embed(t))
