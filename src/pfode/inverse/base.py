"""The one entry point of :mod:`pfode.inverse`: :func:`solve`, a registry of methods, and evaluation counting.

A method is a function ``fn(ev, y, operator, *, nfe, x_T, generator, **options) -> (x, info)``:

* ``ev``: an :class:`Evaluations` around the denoiser: ``ev.pair(x, t)`` returns ``(x0_hat, eps_hat)`` and counts one
  network evaluation; ``ev.pair(x, t, grad=True)`` keeps the graph for a vector-Jacobian product through the network
  and counts one gradient evaluation too (``ev.den`` and ``ev.path`` are the denoiser and its path);
* ``y``: measurements ``[B, m]`` (one per sample); ``operator``: a :class:`~pfode.inverse.operators.Operator`;
* ``nfe``: the network-evaluation budget the method spends (its own meaning of a step is documented with it);
* ``x_T``: the starting states ``[B, *shape]`` at the path's ``t_max`` (drawn by :func:`solve` if not given);
* returns the reconstructions ``[B, *shape]`` and a dict of method-specific information.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._checks import check_int
from .operators import Operator

__all__ = ["Evaluations", "InverseOutput", "register", "available", "describe", "solve", "METHODS"]

#: name -> (function, paper, needs: "linear" | "svd" | "velocity" | "any")
METHODS: dict[str, tuple[Callable, str, str]] = {}


def register(name: str, fn: Callable, paper: str, needs: str = "any"):
    """Register a method ``fn`` under ``name`` with its paper and what it needs of the operator or the model:
    ``"any"`` (a differentiable operator), ``"linear"`` (a matrix), ``"svd"`` (a linear operator's SVD)."""
    METHODS[name] = (fn, paper, needs)


def available() -> list[str]:
    """Names of the registered inverse-problem methods."""
    _load()
    return sorted(METHODS)


def describe() -> list[dict]:
    """One dict per method: name, paper, what it needs."""
    _load()
    return [{"name": n, "paper": METHODS[n][1], "needs": METHODS[n][2]} for n in sorted(METHODS)]


def _load():
    """Import the modules that register methods (each registers on import)."""
    import importlib
    import pkgutil

    from . import __path__ as pkg_path

    for info in pkgutil.iter_modules(pkg_path):
        if info.name not in ("base", "operators", "posterior"):
            importlib.import_module(f"{__package__}.{info.name}")


class Evaluations:
    """The denoiser of a method, counting network evaluations and gradient (vector-Jacobian) evaluations."""

    def __init__(self, den, cond: dict | None = None):
        self.den, self.path, self.cond = den, den.path, cond
        self.nfe = 0
        self.grad_evals = 0

    def pair(self, x: torch.Tensor, t, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` at path time ``t`` (float or ``[B]`` float64); with ``grad=True`` differentiable in
        ``x`` (the caller backpropagates once: one gradient evaluation)."""
        self.nfe += 1
        if grad:
            self.grad_evals += 1
            with torch.enable_grad():
                return self.den.pair_at(x, t, self.cond)
        with torch.no_grad():
            return self.den.pair_at(x, t, self.cond)


@dataclass
class InverseOutput:
    """What :func:`solve` returns: reconstructions ``x [B, *shape]``, the network evaluations per sample ``nfe``,
    the gradient evaluations ``grad_evals`` (vector-Jacobian products through the network) and ``info``."""

    x: torch.Tensor
    nfe: int
    grad_evals: int
    info: dict = field(default_factory=dict)


def solve(den, y: torch.Tensor, operator: Operator, method: str = "dps", nfe: int = 50, *, n: int | None = None,
          x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, cond: dict | None = None,
          **options) -> InverseOutput:
    """Solve ``y = A(x) + noise`` for ``x`` with a pfode model as the prior.

    Args:
        den: a :class:`pfode.Denoiser` (any path and prediction type).
        y: measurements ``[B, m]``, or one ``[m]`` shared by ``n`` samples.
        operator: a :class:`~pfode.inverse.operators.Operator` (its ``noise`` is the measurement noise level).
        method: a name from :func:`available` (see :func:`describe` for papers and requirements).
        nfe: network evaluations per sample the method may spend.
        n: samples when ``y`` is a single measurement (default 1).
        x_T: starting states ``[B, *shape]`` at the path's ``t_max`` (default ``sigma(t_max) * N(0, I)``, plus
            ``alpha(t_max)`` times nothing: the path's prior).
        generator: seeds every draw.
        cond: conditioning passed to the network.
        options: the method's own options.
    Returns:
        an :class:`InverseOutput`.
    """
    from ..predictions import Denoiser

    if not isinstance(den, Denoiser):
        raise TypeError(f"den must be a pfode.Denoiser, got {type(den).__name__}")
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a pfode.inverse operator, got {type(operator).__name__}")
    names = available()
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid names: {', '.join(names)}")
    fn, _, needs = METHODS[method]
    if needs in ("linear", "svd") and not operator.linear:
        raise ValueError(f"method {method!r} needs a linear operator (a matrix); {operator!r} is not linear")
    check_int("nfe", nfe, 1)
    if x_T is not None:
        batch = x_T.shape[0]
    elif n is not None:
        batch = check_int("n", n, 1)
    else:
        batch = y.shape[0] if isinstance(y, torch.Tensor) and y.dim() == 2 else 1
    y = operator.check_y(y, batch)
    if x_T is None:
        sigma_T = float(den.path.sigma(torch.tensor(den.path.t_max, dtype=torch.float64)))
        x_T = sigma_T * torch.randn((batch, *operator.shape), generator=generator, dtype=y.dtype)
        x_T = x_T.to(y.device)
    elif tuple(x_T.shape[1:]) != operator.shape:
        raise ValueError(f"x_T must have shape [B, *{operator.shape}], got {tuple(x_T.shape)}")
    ev = Evaluations(den, cond)
    x, info = fn(ev, y, operator, nfe=nfe, x_T=x_T, generator=generator, **options)
    return InverseOutput(x.detach(), ev.nfe, ev.grad_evals, info)
