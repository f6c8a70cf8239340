"""Training data as in-memory float32 tensors ``[N, *shape]``.

* :func:`toy2d` -- 2-D toy distributions (``"8gaussians"``, ``"moons"``, ``"checkerboard"``,
  ``"spirals"``) drawn with a ``torch.Generator`` (reproducible, no numpy RNG);
* :func:`digits` -- scikit-learn's 8x8 handwritten digits (1,797 images shipped with the package),
  scaled from ``[0, 16]`` to ``[-1, 1]``, shaped ``[N, 1, 8, 8]``;
* :func:`load_array` -- a user's ``.npy`` / ``.npz`` file (loaded with ``allow_pickle=False``);
* :func:`image_folder` -- a folder of images (needs Pillow), scaled to ``[-1, 1]``, ``[N, C, H, W]``;
* :func:`load_dataset` -- any of the above from a config dict (``{"name": ..., **options}``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path as FsPath

import numpy as np
import torch

from ._checks import check_choice, check_int

__all__ = ["TOYS", "DATASETS", "toy2d", "digits", "load_array", "image_folder", "load_dataset"]

TOYS = ("8gaussians", "moons", "checkerboard", "spirals")
DATASETS = ("toy2d", "digits", "array", "image-folder", "reflow-pairs")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _gen(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give generator= or seed=, not both")
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def toy2d(name: str, n: int, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
    """``n`` points ``[n, 2]`` (float32) of a 2-D toy distribution, roughly centred with spread ~1-2.

    * ``"8gaussians"``: 8 isotropic Gaussians (std 0.15) at radius 2, angles ``k pi / 4``;
    * ``"moons"``: two interleaved half circles (radius 1, shifted as in scikit-learn's ``make_moons``),
      centred and scaled by 2, with Gaussian noise of std 0.1;
    * ``"checkerboard"``: uniform on the 8 black cells of a 4x4 board covering ``[-2, 2]^2``;
    * ``"spirals"``: two interleaved Archimedean spirals (``r = theta / pi``, ``theta`` up to ``3 pi``),
      scaled by 2/3, with Gaussian noise of std 0.05.

    The same ``seed`` (default 0) or generator state gives the same points.
    """
    check_choice("name", name, TOYS)
    check_int("n", n, 1)
    g = _gen(generator, seed)
    f64 = torch.float64
    if name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        ang = k.to(f64) * (math.pi / 4)
        centres = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        x = centres + 0.15 * torch.randn(n, 2, generator=g, dtype=f64)
    elif name == "moons":
        upper = torch.rand(n, generator=g) < 0.5
        th = math.pi * torch.rand(n, generator=g, dtype=f64)
        up = torch.stack([torch.cos(th), torch.sin(th)], 1)
        lo = torch.stack([1.0 - torch.cos(th), 0.5 - torch.sin(th)], 1)
        x = torch.where(upper[:, None], up, lo)
        x = (x - torch.tensor([0.5, 0.25], dtype=f64)) * 2.0 + 0.1 * torch.randn(n, 2, generator=g, dtype=f64)
    elif name == "checkerboard":
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)  # (row + col) even: a black cell
        u = torch.rand(n, 2, generator=g, dtype=f64)
        x = torch.stack([col.to(f64) + u[:, 0], row.to(f64) + u[:, 1]], 1) - 2.0
    else:  # spirals
        arm = torch.rand(n, generator=g) < 0.5
        th = 3 * math.pi * torch.sqrt(torch.rand(n, generator=g, dtype=f64))  # ~uniform along the arc length
        r = th / math.pi
        x = torch.stack([r * torch.cos(th), r * torch.sin(th)], 1)
        x = torch.where(arm[:, None], x, -x) * (2.0 / 3.0) + 0.05 * torch.randn(n, 2, generator=g, dtype=f64)
    return x.to(torch.float32)


def digits(return_labels: bool = False):
    """scikit-learn's 8x8 digits (no download): images ``[1797, 1, 8, 8]`` in ``[-1, 1]`` (float32).

    Pixel values ``0..16`` map linearly to ``-1..1``. With ``return_labels=True`` also the ``[1797]``
    int64 labels.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if return_labels:
        return x, torch.as_tensor(d.target, dtype=torch.int64)
    return x


def load_array(path, key: str | None = None) -> torch.Tensor:
    """A ``.npy`` or ``.npz`` file as a float32 tensor ``[N, ...]`` (never unpickles: ``allow_pickle=False``).

    For ``.npz`` give ``key`` unless the archive holds exactly one array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such array file: {path}")
    try:
        obj = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(
            f"{path}: cannot load without unpickling ({e}); save plain numeric arrays with np.save/np.savez"
        ) from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            keys = list(obj.files)
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{path} holds arrays {keys}; choose one with key=")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
            arr = obj[key]
    else:
        if key is not None:
            raise ValueError(f"key={key!r} only applies to .npz archives; {path} is a single array")
        arr = obj
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{path}: array dtype {arr.dtype} is not numeric")
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ValueError(f"{path}: need an array [N, ...] with a sample dimension first, got shape {arr.shape}")
    x = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: array has non-finite values")
    return x


def image_folder(path, size: int | tuple[int, int] | None = None, mode: str = "L", recursive: bool = False):
    """All images in a folder as ``[N, C, H, W]`` float32 in ``[-1, 1]`` (sorted by file name).

    Args:
        path: the folder.
        size: resize every image to ``size`` (int: square) with bilinear filtering; without it all images
            must share one size.
        mode: Pillow mode, ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        recursive: also read sub-folders.
    Needs Pillow (``pip install pillow``).
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "image_folder needs Pillow to decode images (pip install pillow); or convert your images to a "
            ".npy array [N, C, H, W] and use load_array"
        ) from e
    check_choice("mode", mode, ("L", "RGB"))
    root = FsPath(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    it = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{root} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}")
    if isinstance(size, int):
        size = (size, size)
    arrays, first = [], None
    for f in files:
        with Image.open(f) as im:
            im = im.convert(mode)
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise ValueError(
                f"images differ in size: {first[0].name} is {first[1]}, {f.name} is {a.shape}; pass size= to resize"
            )
        arrays.append(a)
    x = torch.as_tensor(np.stack(arrays))
    x = x[:, None] if mode == "L" else x.permute(0, 3, 1, 2)
    return (x / 127.5 - 1.0).contiguous()


def load_dataset(spec: dict):
    """Build a dataset from a config dict: ``{"name": "toy2d", "kind": "moons", "n": 20000, "seed": 0}``,
    ``{"name": "digits"}``, ``{"name": "array", "path": ..., "key": ...}``,
    ``{"name": "image-folder", "path": ..., "size": ..., "mode": ...}`` or
    ``{"name": "reflow-pairs", "path": ...}`` (returns the ``(sample, noise)`` pair of a
    :class:`pfode.train.couplings.PairStore`)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"dataset spec must be a dict with a 'name' (one of {', '.join(DATASETS)}), got {spec!r}")
    opts = {k: v for k, v in spec.items() if k != "name"}
    name = check_choice("dataset name", spec["name"], DATASETS)
    try:
        if name == "toy2d":
            return toy2d(opts.pop("kind"), int(opts.pop("n", 20000)), seed=int(opts.pop("seed", 0)), **opts)
        if name == "digits":
            return digits(**opts)
        if name == "array":
            return load_array(opts.pop("path"), **opts)
        if name == "image-folder":
            return image_folder(opts.pop("path"), **opts)
        from .train.couplings import PairStore

        return PairStore(opts.pop("path"), **opts).load()
    except KeyError as e:
        raise ValueError(f"dataset {name!r} needs option {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"dataset {name!r}: bad options {sorted(opts)}: {e}") from None
