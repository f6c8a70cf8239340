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

    The frequencies and the sinusoids are computed in float32 (float64 once the module is moved to float64),
    whatever the dtype of the module: rounding ``freqs`` to float16 (bfloat16) would shift the phases ``f_k u``
    of ``u`` up to 1000 by up to 0.16 (0.44) rad. Cast the result to the network's dtype where it enters it.
    """

    def __init__(self, dim: int, time_scale: float = 1000.0, log_time: bool = False, max_period: float = 10_000.0):
        super().__init__()
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim={dim!r}: need an even integer >= 2")
        self.dim, self.time_scale, self.log_time = dim, float(time_scale), bool(log_time)
        self.max_period = float(max_period)
        self.register_buffer("freqs", self._freqs(torch.device("cpu"), torch.float32), persistent=False)

    def _freqs(self, device, dtype) -> torch.Tensor:
        half = self.dim // 2
        return torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=dtype, device=device) / half)

    def _apply(self, fn, *args, **kwargs):
        # ``.to(float16)``/``.half()`` would round the frequencies: rebuild them in float32 (float64 kept) on the
        # new device instead
        super()._apply(fn, *args, **kwargs)
        dt = torch.float64 if self.freqs.dtype == torch.float64 else torch.float32
        if self.freqs.dtype != dt:
            self.freqs = self._freqs(self.freqs.device, dt)
        return self

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``[B]`` (or scalar) times -> ``[B, dim]`` embeddings in float32 (float64 for a float64 module)."""
        t = t.to(self.freqs.dtype).reshape(-1)
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
        """Check ``x`` against ``data_shape`` and the network's dtype; embed ``t`` (``[B]``, or one time for the
        whole batch; any float dtype).

        The sinusoids are computed in float32 (see :class:`SinusoidalEmbedding`) and cast to the dtype of the
        network's weights, so a float16/bfloat16 network takes the float32 times :class:`pfode.Denoiser`
        hands it. ``x`` must already be in that dtype: a ``TypeError`` says so rather than casting it silently.
        """
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"{type(self).__name__} built for {self.noun} of shape {self.data_shape} got input of shape "
                f"{tuple(x.shape)}"
            )
        wdt = self.temb[0].weight.dtype
        if x.dtype != wdt:
            raise TypeError(
                f"{type(self).__name__} has {_name(wdt)} weights but got input x of dtype {_name(x.dtype)}; "
                f"give the state in the network's dtype (x_T.to(torch.{_name(wdt)}), e.g. torch.randn(..., "
                f"dtype=model.dtype)) or move the network to {_name(x.dtype)} "
                f"(pfode.models.load(..., dtype=torch.{_name(x.dtype)}) or net.to(torch.{_name(x.dtype)}))"
            )
        t = t.reshape(-1)
        if t.numel() == 1 and x.shape[0] != 1:
            t = t.expand(x.shape[0])
        return self.temb(self.embed(t).to(wdt))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
