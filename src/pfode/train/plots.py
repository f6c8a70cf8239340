"""PNG figures with matplotlib's Agg canvas (no global backend switch, no display needed)."""

from __future__ import annotations

import math
import os

import torch

__all__ = ["save_samples", "save_trajectories", "image_grid"]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def image_grid(x: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """``[N, C, H, W]`` in ``[-1, 1]`` -> one ``[H', W', C]`` array in ``[0, 1]`` (1-pixel gaps)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    out = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, k = divmod(i, nrow)
        out[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = x[i]
    return out.permute(1, 2, 0)


def save_samples(
    x: torch.Tensor, path, title: str = "", reference: torch.Tensor | None = None, lim: float = 3.5
):
    """Scatter plot (2-D samples) or image grid (``[N, C, H, W]``) of ``x`` to ``path`` (PNG)."""
    x = x.detach().float().cpu()
    if x.dim() == 2 and x.shape[1] == 2:
        x = x.numpy()
        fig = _figure(4, 4)
        ax = fig.add_subplot(111)
        if reference is not None:
            r = reference.detach().float().cpu().numpy()
            ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", label="samples")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    elif x.dim() == 4:
        g = image_grid(x[:64]).numpy()
        fig = _figure(4, 4)
        ax = fig.add_subplot(111)
        ax.imshow(
            g[..., 0] if g.shape[-1] == 1 else g,
            cmap="gray" if g.shape[-1] == 1 else None,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.axis("off")
    else:
        flat = x.reshape(x.shape[0], -1)
        fig = _figure(4, 3)
        ax = fig.add_subplot(111)
        ax.hist(flat[:, 0].numpy(), bins=50)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path)


def save_trajectories(panels: list[tuple[str, torch.Tensor]], path, n_lines: int = 200, lim: float = 3.5):
    """Side-by-side panels of 2-D trajectories ``[S+1, B, 2]`` (start: grey dots, end: coloured dots)."""
    fig = _figure(4 * len(panels), 4)
    for j, (title, traj) in enumerate(panels):
        tr = traj.detach().float().cpu()[:, :n_lines].numpy()
        ax = fig.add_subplot(1, len(panels), j + 1)
        for i in range(tr.shape[1]):
            ax.plot(tr[:, i, 0], tr[:, i, 1], lw=0.4, c="C0", alpha=0.5)
        ax.scatter(tr[0, :, 0], tr[0, :, 1], s=2, c="0.5")
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=2, c="C3")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path)
