"""Sinusoidal time embedding (Vaswani et al., 2017; as used by DDPM, Ho et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalEmbedding"]


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

    def __init__(
        self, dim: int, time_scale: float = 1000.0, log_time: bool = False, max_period: float = 10_000.0
    ):
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
