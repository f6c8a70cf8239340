"""Measurement operators ``y = A(x) + noise * n``, ``n ~ N(0, I)``, for inverse problems on any pfode model.

Every operator maps a batch ``x [B, *shape]`` to measurements ``y [B, m]`` (flattened), carries its noise level
``noise >= 0`` and draws noisy measurements with :meth:`Operator.measure`. Linear operators also give their matrix
``[m, d]`` (:meth:`LinearOperator.matrix`, float64, built once per shape), their adjoint and their SVD, which the exact
posterior (:func:`pfode.analytic.posterior`) and SVD-based methods (DDRM) use.

* :class:`Inpaint` -- keep the entries where ``mask`` is true (``m`` = observed entries);
* :class:`Downsample` -- average over ``factor x factor`` blocks of the last two axes (images), or over ``factor``
  consecutive entries of a vector (super-resolution);
* :class:`Blur` -- a circular convolution of the last two axes with a kernel (Gaussian by default);
* :class:`RandomProjection` -- a fixed Gaussian matrix with ``N(0, 1/m)`` entries (compressed sensing);
* :class:`MatrixOperator` -- any given matrix;
* :class:`Nonlinear` -- any differentiable ``A(x)`` (no matrix: gradient-based methods only).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import as_f64, check_finite_float, check_int

__all__ = [
    "Operator",
    "LinearOperator",
    "Inpaint",
    "Downsample",
    "Blur",
    "RandomProjection",
    "MatrixOperator",
    "Nonlinear",
]


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (one sample's shape), got {shape!r}")
    return shape


class Operator:
    """A measurement ``y = A(x) + noise * n``.

    Subclasses implement :meth:`forward` (``[B, *shape] -> [B, m]``, differentiable). ``shape`` is one sample's
    shape; ``noise`` the standard deviation of the measurement noise.
    """

    linear = False

    def __init__(self, shape, noise: float = 0.0):
        self.shape = _shape(shape)
        self.d = math.prod(self.shape)
        self.noise = check_finite_float("noise", noise, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor [B, *{self.shape}], got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, *{self.shape}] for {self!r}, got {tuple(x.shape)}")
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x)``: ``[B, *shape] -> [B, m]`` (noise-free)."""
        return self.forward(self._check_x(x))

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy measurement ``A(x) + noise * n`` of each sample (``[B, m]``)."""
        y = self(x)
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y

    @property
    def m(self) -> int:
        """Measurements per sample."""
        return int(self(torch.zeros((1, *self.shape), dtype=torch.float64)).shape[1])

    def check_y(self, y: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """``y`` as ``[B, m]`` (a single ``[m]`` measurement is broadcast to ``batch``), or a clear error."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a tensor [B, m] or [m] with m={self.m}, got {type(y).__name__}")
        if y.dim() == 1:
            y = y[None].expand(batch or 1, -1)
        if y.dim() != 2 or y.shape[1] != self.m:
            raise ValueError(f"y must have shape [B, m] or [m] with m={self.m} for {self!r}, got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(
                "y contains NaN or inf: measurements must be finite (mark missing entries in the operator, e.g. "
                "an Inpaint mask, not with NaN)"
            )
        if batch is not None and y.shape[0] != batch:
            if y.shape[0] != 1:
                raise ValueError(f"y has {y.shape[0]} measurements for a batch of {batch}: give 1 or {batch}")
            y = y.expand(batch, -1)
        return y

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, noise={self.noise:g})"


class LinearOperator(Operator):
    """A linear measurement ``A x`` with an explicit matrix ``[m, d]`` (float64)."""

    linear = True

    def matrix(self) -> torch.Tensor:
        """``A`` as a dense float64 ``[m, d]`` matrix (cached): the operator applied to the standard basis."""
        if getattr(self, "_matrix", None) is None:
            eye = torch.eye(self.d, dtype=torch.float64).reshape(self.d, *self.shape)
            self._matrix = self.forward(eye).T.contiguous()
        return self._matrix

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: ``[B, m] -> [B, *shape]``."""
        a = self.matrix().to(y.device, y.dtype)
        return (y @ a).reshape(y.shape[0], *self.shape)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Thin SVD ``A = U diag(S) V^T`` (float64, cached): ``U [m, r]``, ``S [r]``, ``V [d, r]``."""
        if getattr(self, "_svd", None) is None:
            u, s, vh = torch.linalg.svd(self.matrix(), full_matrices=False)
            self._svd = (u, s, vh.T.contiguous())
        return self._svd

    @property
    def m(self) -> int:
        return int(self.matrix().shape[0])


class Inpaint(LinearOperator):
    """Keep the entries where ``mask`` (bool, one sample's shape) is true: ``y = x[mask]``.

    ``Inpaint.random(shape, keep, generator)`` draws a mask that keeps a fraction ``keep`` of the entries.
    """

    def __init__(self, mask: torch.Tensor, noise: float = 0.0):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a bool tensor of one sample's shape, got {type(mask).__name__}")
        super().__init__(tuple(mask.shape), noise)
        self.mask = mask.to(torch.bool).detach().cpu()
        if not bool(self.mask.any()):
            raise ValueError("mask keeps no entry: at least one must be true")
        self._idx = self.mask.flatten().nonzero().squeeze(1)

    @classmethod
    def random(cls, shape, keep: float = 0.5, noise: float = 0.0, generator: torch.Generator | None = None):
        shape = _shape(shape)
        keep = check_finite_float("keep", keep, 0.0, strict=True)
        if keep > 1.0:
            raise ValueError(f"keep={keep!r} must be in (0, 1]")
        d = math.prod(shape)
        n = max(1, round(keep * d))
        perm = torch.randperm(d, generator=generator)[:n]
        mask = torch.zeros(d, dtype=torch.bool)
        mask[perm] = True
        return cls(mask.reshape(shape), noise)

    def forward(self, x):
        return x.reshape(x.shape[0], -1)[:, self._idx.to(x.device)]

    def adjoint(self, y):
        out = torch.zeros(y.shape[0], self.d, dtype=y.dtype, device=y.device)
        out[:, self._idx.to(y.device)] = y
        return out.reshape(y.shape[0], *self.shape)


class Downsample(LinearOperator):
    """Average pooling by ``factor``: over ``factor x factor`` blocks of the last two axes when a sample has two or
    more axes (images ``[C, H, W]`` or ``[H, W]``), over ``factor`` consecutive entries of a vector ``[d]``."""

    def __init__(self, shape, factor: int = 4, noise: float = 0.0):
        super().__init__(shape, noise)
        self.factor = check_int("factor", factor, 1)
        dims = self.shape[-2:] if len(self.shape) >= 2 else self.shape[-1:]
        if any(s % self.factor for s in dims):
            raise ValueError(f"factor={factor} must divide the pooled axes {dims} of shape {self.shape}")

    def forward(self, x):
        f, b = self.factor, x.shape[0]
        if len(self.shape) >= 2:
            *lead, h, w = x.shape[1:]
            z = x.reshape(b, *lead, h // f, f, w // f, f).mean(dim=(-3, -1))
        else:
            z = x.reshape(b, -1, f).mean(-1)
        return z.reshape(b, -1)

    def __repr__(self):
        return f"Downsample(shape={self.shape}, factor={self.factor}, noise={self.noise:g})"


class Blur(LinearOperator):
    """Circular convolution of the last two axes with ``kernel`` (``[k, k]``, odd ``k``; default a Gaussian of
    standard deviation ``std`` pixels and size ``2 ceil(2 std) + 1``), every channel alike. ``y`` keeps all pixels."""

    def __init__(self, shape, kernel: torch.Tensor | None = None, std: float = 1.0, noise: float = 0.0):
        super().__init__(shape, noise)
        if len(self.shape) < 2:
            raise ValueError(f"Blur needs samples with two spatial axes (e.g. [C, H, W] or [H, W]), got {self.shape}")
        if kernel is None:
            std = check_finite_float("std", std, 0.0, strict=True)
            r = math.ceil(2 * std)
            g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / std) ** 2)
            kernel = g[:, None] * g[None, :]
        kernel = as_f64(kernel)
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(f"kernel must be a square [k, k] tensor with odd k, got {tuple(kernel.shape)}")
        self.kernel = kernel / kernel.sum()

    def forward(self, x):
        b = x.shape[0]
        *lead, h, w = x.shape[1:]
        z = x.reshape(-1, 1, h, w)
        r = self.kernel.shape[0] // 2
        z = torch.nn.functional.pad(z, (r, r, r, r), mode="circular")
        k = self.kernel.to(x.device, x.dtype).flip(0, 1)[None, None]
        return torch.nn.functional.conv2d(z, k).reshape(b, -1)


class RandomProjection(LinearOperator):
    """``y = P x`` with a fixed Gaussian ``P [m, d]`` of ``N(0, 1/m)`` entries, drawn from ``seed``."""

    def __init__(self, shape, m: int, noise: float = 0.0, seed: int = 0):
        super().__init__(shape, noise)
        check_int("m", m, 1)
        g = torch.Generator().manual_seed(int(seed))
        self._p = torch.randn(m, self.d, generator=g, dtype=torch.float64) / math.sqrt(m)
        self._matrix = self._p

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self._p.to(x.device, x.dtype).T


class MatrixOperator(LinearOperator):
    """``y = M x`` for a given matrix ``M [m, d]``."""

    def __init__(self, matrix: torch.Tensor, shape=None, noise: float = 0.0):
        mat = as_f64(matrix)
        if mat.dim() != 2:
            raise ValueError(f"matrix must be [m, d], got {tuple(mat.shape)}")
        super().__init__(shape if shape is not None else mat.shape[1], noise)
        if mat.shape[1] != self.d:
            raise ValueError(f"matrix has {mat.shape[1]} columns; shape {self.shape} has {self.d} entries")
        self._matrix = mat.contiguous()

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self._matrix.to(x.device, x.dtype).T


class Nonlinear(Operator):
    """Any differentiable measurement ``fn(x [B, *shape]) -> [B, m]`` (or ``[B, ...]``, flattened)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], shape, noise: float = 0.0):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(x) -> y, got {type(fn).__name__}")
        super().__init__(shape, noise)
        self.fn = fn

    def forward(self, x):
        y = self.fn(x)
        if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
            raise ValueError("fn must return a tensor with the batch dimension of x first")
        return y.reshape(y.shape[0], -1)
