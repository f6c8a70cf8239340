"""Small shared helpers: float64 conversion and argument checks with clear messages."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def as_f64(t) -> torch.Tensor:
    """``t`` as a float64 tensor on its own device (floats go to the CPU)."""
    if isinstance(t, torch.Tensor):
        return t if t.dtype == torch.float64 else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def check_choice(name: str, value, allowed: Iterable[str]) -> str:
    """Raise ``ValueError`` naming the argument and the valid names unless ``value`` is one of them."""
    allowed = list(allowed)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of: {', '.join(allowed)}; got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; valid values: {', '.join(allowed)}")
    return value


def check_int(name: str, value, minimum: int | None = None) -> int:
    """An integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def check_finite_float(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number, optionally bounded below (``> minimum`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}={value!r} must be {'>' if strict else '>='} {minimum}")
    return value


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite (one host read): a non-finite value makes the sum non-finite, so a
    finite sum settles it in one reduction; only a sum that overflowed is checked value by value."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_state(name: str, x, finite: bool = True) -> torch.Tensor:
    """A floating-point tensor with a batch dimension and (unless ``finite=False``: no host-device sync) finite
    values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension first, got a scalar (shape {tuple(x.shape)})")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): give at least one sample")
    if finite and not all_finite(x):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return x


def check_spec(name: str, spec, keys: tuple[str, ...], version: int) -> dict:
    """Check a versioned JSON description of ``name`` (e.g. ``"denoiser"``): a dict with exactly ``keys`` whose
    ``version`` is ``version`` (``TypeError``/``ValueError`` naming the bad or missing key)."""
    if not isinstance(spec, dict):
        article = "an" if name[:1].upper() in "AEIOU" else "a"
        raise TypeError(f"{article} {name} description must be a dict, got {type(spec).__name__}")
    listed = ", ".join(keys)
    for k in spec:
        if k not in keys:
            raise ValueError(f"{name} description key {k!r} is unknown; valid keys: {listed}")
    for k in keys:
        if k not in spec:
            raise ValueError(f"the {name} description has no {k!r}; it needs the keys {listed}")
    if spec["version"] != version:
        raise ValueError(f"{name} description version={spec['version']!r}; this pfode reads version {version}")
    return spec
