"""A residual MLP with sinusoidal time embedding for vector data (2-D toys, flattened small images)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .embed import TimeNet

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, width: int, temb: int):
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.temb = nn.Linear(temb, width)
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h, e):
        z = self.lin1(self.act(h)) + self.temb(e)
        return h + self.lin2(self.act(z))


class MLP(TimeNet):
    """Time-conditioned residual MLP ``(x [B, *data_shape], t [B]) -> [B, *data_shape]``.

    ``x`` is flattened, projected to ``width``, passed through ``depth`` residual blocks (each adds a
    projection of the time embedding) and projected back; the output layer starts at zero.

    Args:
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)`` (an int means ``(int,)``).
        width: hidden width.
        depth: number of residual blocks.
        time_dim: size of the sinusoidal embedding.
        time_scale, log_time: see :class:`SinusoidalEmbedding`.
    """

    name = "mlp"

    def __init__(
        self,
        data_shape=(2,),
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        time_scale: float = 1000.0,
        log_time: bool = False,
    ):
        if isinstance(data_shape, int):
            data_shape = (data_shape,)
        data_shape = tuple(int(d) for d in data_shape)
        if not data_shape or any(d < 1 for d in data_shape):
            raise ValueError(f"data_shape={data_shape!r}: need a non-empty shape of positive sizes")
        for name, v in (("width", width), ("depth", depth), ("time_dim", time_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: need a positive integer")
        config = {"width": width, "depth": depth, "time_dim": time_dim}
        super().__init__(data_shape, width, **config, time_scale=float(time_scale), log_time=bool(log_time))
        d = math.prod(data_shape)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList([_Block(width, width) for _ in range(depth)])
        self.out = nn.Linear(width, d)
        self.act = nn.SiLU()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.time_embedding(x, t)
        h = self.inp(x.reshape(x.shape[0], -1))
        for blk in self.blocks:
            h = blk(h, e)
        return self.out(self.act(h)).reshape(x.shape)
