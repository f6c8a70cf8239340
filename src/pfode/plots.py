"""PNG figures for pfode: sample grids, 2-D scatter plots and trajectories, error-vs-NFE curves, training curves.

Every function draws on matplotlib's Agg canvas (no global backend switch, no display needed), writes the
PNG atomically through :func:`pfode.io.atomic_write` and returns the path. Figure sizes are fixed
(``SIZES``, in pixels at ``DPI``) so the files have predictable dimensions.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path as FsPath

import numpy as np
import torch

from .io import atomic_write

__all__ = [
    "DPI",
    "SIZES",
    "image_grid",
    "sample_grid",
    "scatter_2d",
    "trajectories_2d",
    "save_samples",
    "save_trajectories",
    "error_vs_nfe",
    "training_curves",
    "read_metrics",
    "save_figure",
]

DPI = 100
#: figure sizes in inches (width, height); pixels are these times ``DPI``
SIZES = {
    "grid": (6.0, 6.4),
    "scatter": (6.0, 6.0),
    "trajectories": (7.0, 6.0),
    "nfe": (9.0, 6.0),
    "training": (12.0, 4.0),
}


def _figure(w, h: float | None = None):
    """An Agg figure of kind ``w`` (a key of ``SIZES``) or of ``w`` x ``h`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZES[w] if h is None else (w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, overwrite: bool = True) -> FsPath:
    """Save ``fig`` as a PNG at ``path`` atomically (:func:`pfode.io.atomic_write`).

    With ``overwrite=False`` an existing file is an error (``FileExistsError``).
    """
    path = FsPath(os.fspath(path))
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (pass --force to overwrite it)")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


# --- images -------------------------------------------------------------------------------------
def image_grid(x, ncol: int | None = None, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
    """``[N, C, H, W]`` images -> one ``[H', W', C]`` array in ``[0, 1]`` with ``pad``-pixel white gaps."""
    a = _np(x)
    if a.ndim != 4:
        raise ValueError(f"image_grid needs images [N, C, H, W], got shape {a.shape}")
    lo, hi = value_range
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    n, c, h, w = a.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    out = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c))
    for i in range(n):
        r, k = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        out[y0 : y0 + h, x0 : x0 + w] = a[i].transpose(1, 2, 0)
    return out


def sample_grid(x, path, title: str = "", ncol: int | None = None, value_range=(-1.0, 1.0), overwrite=True):
    """A grid of images ``[N, C, H, W]`` (values in ``value_range``) as a PNG; 1 or 3 channels."""
    g = image_grid(x, ncol, value_range=value_range)
    fig = _figure("grid")
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.86))
    if g.shape[-1] == 1:
        ax.imshow(g[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(g[..., :3], interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11, y=0.965)
    return save_figure(fig, path, overwrite)


# --- 2-D ----------------------------------------------------------------------------------------
def _limits(*arrays, margin: float = 0.1):
    pts = np.concatenate([a.reshape(-1, 2) for a in arrays if a is not None and a.size])
    pts = pts[np.isfinite(pts).all(1)]
    if not len(pts):
        return (-1, 1), (-1, 1)
    lo = np.percentile(pts, 0.1, axis=0)  # robust to a few far outliers
    hi = np.percentile(pts, 99.9, axis=0)
    c = (lo + hi) / 2
    r = max(float((hi - lo).max()) / 2, 1e-6) * (1 + margin)
    return (c[0] - r, c[0] + r), (c[1] - r, c[1] + r)


def scatter_2d(x, path, title: str = "", reference=None, labels=("samples", "data"), overwrite=True):
    """Scatter plot of 2-D samples ``[N, 2]`` (first two coordinates of wider vectors), optionally over
    ``reference`` points drawn in grey."""
    a = _np(x).reshape(len(x), -1)[:, :2]
    r = None if reference is None else _np(reference).reshape(len(reference), -1)[:, :2]
    fig = _figure("scatter")
    ax = fig.add_subplot(111)
    size = float(np.clip(3000 / max(len(a), 1), 1.5, 12))
    if r is not None:
        ax.scatter(r[:, 0], r[:, 1], s=size, c="0.7", alpha=0.6, lw=0, label=f"{labels[1]} ({len(r)})")
    ax.scatter(a[:, 0], a[:, 1], s=size, c="C0", alpha=0.8, lw=0, label=f"{labels[0]} ({len(a)})")
    ax.grid(alpha=0.25)
    return _finish_2d(fig, ax, (a, r), title, max(1.0, 6 / size), path, overwrite)


def _finish_2d(fig, ax, arrays, title: str, markerscale: float, path, overwrite):
    """Equal axes fitted to ``arrays``, axis labels, the legend below, the title; save the figure."""
    xl, yl = _limits(*arrays)
    ax.set(xlim=xl, ylim=yl, aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, markerscale=markerscale, fontsize=9, frameon=False
    )
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, overwrite)


def trajectories_2d(traj, times, path, title: str = "", n_lines: int = 300, time_label="path time t", overwrite=True):
    """2-D trajectories ``[S+1, B, 2]`` coloured by time (colour bar), start and end points marked.

    ``times``: the ``S+1`` times of the states (any decreasing or increasing sequence).
    """
    from matplotlib.collections import LineCollection

    tr = _np(traj)
    if tr.ndim != 3 or tr.shape[-1] < 2:
        raise ValueError(f"trajectories must have shape [steps + 1, B, 2], got {tr.shape}")
    tr = tr[:, :n_lines, :2]
    ts = _np(times).reshape(-1)
    if len(ts) != tr.shape[0]:
        raise ValueError(f"{len(ts)} times for {tr.shape[0]} states")
    fig = _figure("trajectories")
    ax = fig.add_subplot(111)
    segs = np.stack([tr[:-1], tr[1:]], axis=2)  # [S, B, 2 points, 2]
    seg_t = np.repeat(((ts[:-1] + ts[1:]) / 2)[:, None], tr.shape[1], 1)
    lc = LineCollection(segs.reshape(-1, 2, 2), cmap="viridis", linewidths=0.7, alpha=0.8)
    lc.set_array(seg_t.reshape(-1))
    lc.set_clim(float(ts.min()), float(ts.max()))
    ax.add_collection(lc)
    ax.scatter(tr[0, :, 0], tr[0, :, 1], s=6, c="0.45", lw=0, label="start (noise)", zorder=3)
    ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=8, c="C3", lw=0, label="end (samples)", zorder=3)
    fig.colorbar(lc, ax=ax, fraction=0.046, pad=0.04).set_label(time_label)
    return _finish_2d(fig, ax, (tr[0], tr[-1]), title, 2, path, overwrite)


def save_samples(x, path, title: str = "", reference=None, overwrite=True):
    """The trainer's sample plot: a grid of images ``[N, C, H, W]`` (the first 64), a scatter plot of vectors
    ``[N, D >= 2]`` over ``reference``, or a histogram of 1-D samples."""
    if x.dim() == 4:
        return sample_grid(x[:64], path, title, overwrite=overwrite)
    if x.dim() == 2 and x.shape[1] >= 2:
        return scatter_2d(x, path, title, reference=reference, overwrite=overwrite)
    fig = _figure("scatter")
    ax = fig.add_subplot(111)
    ax.hist(_np(x).reshape(len(x), -1)[:, 0], bins=50)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path, overwrite)


def save_trajectories(panels: list[tuple[str, torch.Tensor]], path, n_lines: int = 200, lim: float = 3.5):
    """Side-by-side panels of 2-D trajectories ``[S+1, B, 2]`` (start: grey dots, end: red dots)."""
    fig = _figure(4 * len(panels), 4)
    for j, (title, traj) in enumerate(panels):
        tr = _np(traj)[:, :n_lines]
        ax = fig.add_subplot(1, len(panels), j + 1)
        ax.plot(tr[..., 0], tr[..., 1], lw=0.4, c="C0", alpha=0.5)
        ax.scatter(tr[0, :, 0], tr[0, :, 1], s=2, c="0.5")
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=2, c="C3")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --- error vs NFE -------------------------------------------------------------------------------
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*", "h", "p")
_STYLES = ("-", "--", "-.", ":")


def error_vs_nfe(results: dict, path, title="", ylabel="error", xlabel="NFE (network evaluations)", overwrite=True):
    """Log-log curves of error against NFE, one per entry of ``results`` (``{label: {nfe: error}}``).

    Missing or non-finite errors leave gaps; the legend sits outside the axes.
    """
    fig = _figure("nfe")
    ax = fig.add_axes((0.09, 0.1, 0.64, 0.8))
    nfes_all = set()
    for i, (label, row) in enumerate(results.items()):
        pts = sorted((int(k), float(v)) for k, v in row.items() if v is not None and math.isfinite(float(v)))
        pts = [(n, v) for n, v in pts if v > 0]
        if not pts:
            continue
        nfes_all.update(n for n, _ in pts)
        xs, ys = zip(*pts)
        marker, ls = _MARKERS[i % len(_MARKERS)], _STYLES[(i // 10) % len(_STYLES)]
        ax.plot(xs, ys, marker=marker, ls=ls, color=f"C{i % 10}", ms=5, lw=1.3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if nfes_all:
        ticks = sorted(nfes_all)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, title="solver", frameon=False)
    return save_figure(fig, path, overwrite)


# --- training curves ----------------------------------------------------------------------------
def read_metrics(path) -> dict[str, np.ndarray]:
    """Columns of a trainer's ``metrics.csv`` (``step, loss, lr, grad_norm, elapsed_s``) as float arrays."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty")
    head, body = rows[0], [r for r in rows[1:] if r]
    cols = {h: np.array([float(r[i]) for r in body], dtype=np.float64) for i, h in enumerate(head)}
    if "step" not in cols or "loss" not in cols:
        raise ValueError(f"{path} has no step and loss columns (found {', '.join(head)})")
    return cols


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([np.full(k - 1, np.nan), out])


def training_curves(metrics, path, title: str = "", overwrite=True):
    """Loss (log scale, with a running mean), learning rate and gradient norm against the step.

    ``metrics``: a ``metrics.csv`` path or the dict of :func:`read_metrics`.
    """
    m = read_metrics(metrics) if not isinstance(metrics, dict) else metrics
    step = m["step"]
    fig = _figure("training")
    panels = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)")]
    for j, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, j + 1)
        if key in m and len(m[key]):
            y = m[key]
            ax.plot(step, y, lw=0.8, color="C0", alpha=0.5 if key == "loss" else 1.0, label=key)
            if key == "loss" and len(y) >= 10:
                k = max(2, len(y) // 20)
                ax.plot(step, _smooth(y, k), lw=1.6, color="C3", label=f"running mean ({k} logs)")
                ax.legend(fontsize=8)
            if key in ("loss", "grad_norm") and np.all(y > 0):
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, overwrite)
