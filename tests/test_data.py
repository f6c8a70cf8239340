"""Datasets: reproducible 2-D toys with the stated geometry, scikit-learn digits, user arrays and image
folders, with clear errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from pfode import data as D


@pytest.mark.parametrize("name", D.TOYS)
def test_toys_are_reproducible(name):
    a = D.toy2d(name, 500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, D.toy2d(name, 500, seed=3))
    assert not torch.equal(a, D.toy2d(name, 500, seed=4))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(D.toy2d(name, 100, generator=g1), D.toy2d(name, 100, generator=g2))
    assert float(a.abs().max()) < 4.0


def test_toy_geometry():
    cb = D.toy2d("checkerboard", 4000).double()
    cells = torch.floor(cb + 2.0)
    assert torch.all(((cells[:, 0] + cells[:, 1]) % 2) == 0) and cb.abs().max() <= 2.0
    assert len({tuple(c) for c in cells.long().tolist()}) == 8
    g8 = D.toy2d("8gaussians", 4000).double()
    ang = torch.atan2(g8[:, 1], g8[:, 0])
    k = torch.round(ang / (math.pi / 4)) % 8
    centres = 2.0 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    assert float((g8 - centres).std()) == pytest.approx(0.15, rel=0.1)
    sp = D.toy2d("spirals", 4000).double()
    assert float(sp.norm(dim=1).max()) < 2.5
    mo = D.toy2d("moons", 4000).double()
    assert float(mo.mean(0).abs().max()) < 0.1  # centred


def test_digits():
    x, y = D.digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))


def test_arrays(tmp_path):
    a = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    assert torch.allclose(D.load_array(tmp_path / "a.npy"), torch.tensor(a, dtype=torch.float32))
    np.savez(tmp_path / "b.npz", x=a, y=a[:, :2])
    assert D.load_array(tmp_path / "b.npz", key="y").shape == (10, 2)
    with pytest.raises(ValueError, match=r"holds arrays \['x', 'y'\]; choose one with key="):
        D.load_array(tmp_path / "b.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without unpickling"):
        D.load_array(tmp_path / "obj.npy")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match="sample dimension first"):
        D.load_array(tmp_path / "flat.npy")


def test_image_folder(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    x = D.image_folder(tmp_path)
    assert x.shape == (3, 1, 6, 5) and float(x.min()) >= -1 and float(x.max()) <= 1
    first = np.asarray(Image.open(tmp_path / "0.png"), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(x[0, 0], torch.tensor(first))
    assert D.image_folder(tmp_path, size=8, mode="RGB").shape == (3, 3, 8, 8)
    Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="images differ in size"):
        D.image_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="image_folder needs Pillow"):
        D.image_folder(tmp_path)


def test_dataset_specs_and_errors():
    assert D.load_dataset({"name": "toy2d", "kind": "moons", "n": 64}).shape == (64, 2)
    assert D.load_dataset({"name": "digits"}).shape == (1797, 1, 8, 8)
    with pytest.raises(ValueError, match="valid values: 8gaussians, moons, checkerboard, spirals"):
        D.toy2d("swissroll", 10)
    with pytest.raises(ValueError, match="valid values: toy2d, digits, array, image-folder, reflow-pairs"):
        D.load_dataset({"name": "cifar10"})
    with pytest.raises(ValueError, match="needs option 'path'"):
        D.load_dataset({"name": "array"})
