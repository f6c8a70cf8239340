"""A small time-conditioned UNet for 8x8 and 28x28 images (after Ho et al., 2020, much reduced).

Residual blocks (GroupNorm, SiLU, 3x3 convolutions, an additive time projection) at each
resolution, stride-2 convolutions down, nearest-neighbour upsampling back (to the skip's size, so odd
sizes such as 7x7 work), and a zero-initialised output convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embed import TimeNet

__all__ = ["UNet"]


def _groups(ch: int, want: int) -> int:
    g = min(want, ch)
    while ch % g:
        g -= 1
    return g


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, groups: int):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x, e):
        h = self.c1(self.act(self.n1(x))) + self.t(e)[:, :, None, None]
        h = self.c2(self.act(self.n2(h)))
        return self.skip(x) + h


class UNet(TimeNet):
    """``(x [B, C, H, W], t [B]) -> [B, C, H, W]``.

    Args:
        data_shape: ``(C, H, W)``, e.g. ``(1, 8, 8)`` or ``(1, 28, 28)``.
        base: channels at full resolution.
        mults: channel multipliers per resolution level (one level per entry; each level after the first
            halves the resolution, rounding up).
        blocks: residual blocks per level.
        time_dim: size of the sinusoidal embedding (projected to ``4 * base``).
        groups: GroupNorm groups (reduced to a divisor of the channel count where needed).
        time_scale, log_time: see :class:`SinusoidalEmbedding`.
    """

    name, noun = "unet", "images"

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
        data_shape = tuple(int(d) for d in data_shape)
        if len(data_shape) != 3 or any(d < 1 for d in data_shape):
            raise ValueError(f"data_shape={data_shape!r}: UNet needs (C, H, W) images")
        mults = tuple(int(m) for m in mults)
        if not mults or any(m < 1 for m in mults) or base < 1 or blocks < 1:
            raise ValueError(f"base={base!r}, mults={mults!r}, blocks={blocks!r}: need positive values")
        tdim = 4 * base
        config = {"base": base, "mults": list(mults), "blocks": blocks, "time_dim": time_dim, "groups": groups}
        super().__init__(data_shape, tdim, **config, time_scale=float(time_scale), log_time=bool(log_time))
        c = data_shape[0]
        self.inp = nn.Conv2d(c, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        chans = [base]
        ch = base
        for i, m in enumerate(mults):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(_Res(ch, base * m, tdim, groups))
                ch = base * m
                chans.append(ch)
            self.down.append(level)
            if i < len(mults) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)
        self.mid = nn.ModuleList([_Res(ch, ch, tdim, groups), _Res(ch, ch, tdim, groups)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(_Res(ch + chans.pop(), base * m, tdim, groups))
                ch = base * m
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.out = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(x, self.time_embedding(x, t))

    def body(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The network after the time embedding: ``x [B, C, H, W]`` and ``e [B, 4 * base]`` -> ``[B, C, H, W]``
        (a subclass conditions on more than ``t`` by adding to ``e``, as :class:`pfode.nets.ctm.TwoTimeUNet`)."""
        h = self.inp(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for blk in level:
                h = blk(h, e)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for blk in self.mid:
            h = blk(h, e)
        for j, level in enumerate(self.up):
            for blk in level:
                s = skips.pop()
                if h.shape[-2:] != s.shape[-2:]:
                    h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
                h = blk(torch.cat([h, s], dim=1), e)
            if j < len(self.upsample):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = self.upsample[j](h)
        return self.out(F.silu(self.out_norm(h)))
