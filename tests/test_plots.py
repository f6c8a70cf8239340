"""pfode.plots: every figure is a PNG of the documented size, written atomically."""

import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from pfode import plots
from pfode.io import file_mode


def _size(kind):
    w, h = plots.SIZES[kind]
    return round(h * plots.DPI), round(w * plots.DPI)


def _check_png(path, kind):
    img = mpimg.imread(path)
    assert img.shape[:2] == _size(kind)
    assert img.std() > 0.01  # not blank
    leftovers = [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".")]
    assert leftovers == []  # no temporary files left behind
    assert os.stat(path).st_mode & 0o777 == file_mode()  # not mkstemp's 0o600


def test_image_grid_layout():
    x = torch.linspace(-1, 1, 5 * 64).reshape(5, 1, 8, 8)
    g = plots.image_grid(x, ncol=3)
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
    assert g.min() >= 0 and g.max() <= 1
    np.testing.assert_allclose(g[1:9, 1:9, 0], (x[0, 0].numpy() + 1) / 2, atol=1e-6)
    assert np.all(g[:, 0] == 1) and np.all(g[0] == 1)  # white gaps
    with pytest.raises(ValueError, match="N, C, H, W"):
        plots.image_grid(torch.zeros(3, 8))


def test_sample_grid_and_rgb(tmp_path):
    p = plots.sample_grid(torch.rand(16, 1, 8, 8) * 2 - 1, tmp_path / "g.png", "digits")
    _check_png(p, "grid")
    p = plots.sample_grid(torch.rand(9, 3, 6, 6) * 2 - 1, tmp_path / "rgb.png")
    _check_png(p, "grid")


def test_scatter_and_trajectories(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    p = plots.scatter_2d(x, tmp_path / "s.png", "scatter", reference=torch.randn(500, 2, generator=g))
    _check_png(p, "scatter")
    traj = torch.cumsum(torch.randn(6, 40, 2, generator=g) * 0.3, 0)
    p = plots.trajectories_2d(traj, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0], tmp_path / "t.png", "trajectories")
    _check_png(p, "trajectories")
    with pytest.raises(ValueError, match="times"):
        plots.trajectories_2d(traj, [1.0, 0.0], tmp_path / "bad.png")


def test_trainer_sample_plots_and_trajectory_panels(tmp_path):
    g = torch.Generator().manual_seed(0)
    _check_png(plots.save_samples(torch.rand(80, 1, 8, 8) * 2 - 1, tmp_path / "a" / "img.png", "x"), "grid")
    x, ref = torch.randn(200, 3, generator=g), torch.randn(300, 3, generator=g)
    _check_png(plots.save_samples(x, tmp_path / "b" / "vec.png", "x", reference=ref), "scatter")
    _check_png(plots.save_samples(torch.randn(200, 1, generator=g), tmp_path / "c" / "hist.png"), "scatter")
    traj = torch.cumsum(torch.randn(5, 30, 2, generator=g) * 0.3, 0)
    p = plots.save_trajectories([("a", traj), ("b", traj.flip(0))], tmp_path / "d" / "panels.png")
    img = mpimg.imread(p)
    assert img.shape[:2] == (4 * plots.DPI, 8 * plots.DPI)
    assert not [f for f in os.listdir(p.parent) if f.startswith(".")]


def test_error_vs_nfe_skips_gaps(tmp_path):
    res = {"a": {5: 0.1, 10: 0.01, 20: 1e-3}, "b": {5: float("inf"), 10: 0.05}, "c": {}}
    p = plots.error_vs_nfe(res, tmp_path / "e.png", "errors")
    _check_png(p, "nfe")


def test_training_curves_from_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    rows = ["step,loss,lr,grad_norm,elapsed_s"] + [
        f"{s},{1.0 / s},{1e-3},{0.5 + 0.1 * (s % 3)},{s * 0.01:.3f}" for s in range(10, 410, 10)
    ]
    csv.write_text("\n".join(rows) + "\n")
    m = plots.read_metrics(csv)
    assert m["step"][0] == 10 and len(m["loss"]) == 40
    p = plots.training_curves(csv, tmp_path / "curves.png", "run")
    _check_png(p, "training")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="step and loss"):
        plots.read_metrics(tmp_path / "bad.csv")


def test_save_figure_refuses_overwrite(tmp_path):
    p = plots.sample_grid(torch.zeros(4, 1, 8, 8), tmp_path / "g.png")
    before = p.read_bytes()
    with pytest.raises(FileExistsError):
        plots.sample_grid(torch.ones(4, 1, 8, 8), p, overwrite=False)
    assert p.read_bytes() == before
