"""pfode: the probability-flow ODE of diffusion and flow-matching models, exact and fast.

Quick map:

* :mod:`pfode.paths` — affine Gaussian paths (VP, cosine, DDPM discrete, sub-VP, VE, EDM, Linear, Trig, Affine);
* :class:`pfode.Denoiser` — any network output (eps, x0, v, score, velocity) -> ``(x0_hat, eps_hat)``;
* :func:`pfode.grid` — time grids (logsnr, uniform, karras, quadratic);
* :func:`pfode.sample` and :mod:`pfode.solvers` — DDIM, DPM-Solver(++), UniPC, DEIS, iPNDM, RK, dopri5, SDEs;
* :mod:`pfode.analytic` — Gaussian and Gaussian-mixture ground truth;
* :func:`pfode.log_likelihood`, :func:`pfode.bits_per_dim` — exact likelihood through the ODE;
* :func:`pfode.invert`, :func:`pfode.bdia_sample` — inversion, exact (BDIA) round trips;
* :func:`pfode.adjoint_sample` — gradients through the sampler with memory independent of steps;
* :func:`pfode.cfg`, :func:`pfode.dynamic_thresholding`, :func:`pfode.classifier_guidance` — guidance wrappers;
* :func:`pfode.tune`, :class:`pfode.Recipe` — few-step samplers fitted to a model (times, rules, analytic skip);
* :mod:`pfode.metrics` — W2 (exact Gaussian, samples), sliced W2, MMD, straightness.

Every name is imported on first use (PEP 562), so that ``import pfode`` -- and with it ``pfode --version``
and ``pfode --help`` -- does not import torch; ``pfode.sample(...)`` after a bare ``import pfode`` works as
if everything had been imported.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_NAMES = {
    "adjoint_sample": "adjoint",
    "as_grid": "grids",
    "grid": "grids",
    "cfg": "guidance",
    "classifier_guidance": "guidance",
    "dynamic_thresholding": "guidance",
    "InversionOutput": "invert",
    "RoundTrip": "invert",
    "bdia_sample": "invert",
    "invert": "invert",
    "round_trip": "invert",
    "BitsPerDimOutput": "likelihood",
    "LikelihoodOutput": "likelihood",
    "bits_per_dim": "likelihood",
    "log_likelihood": "likelihood",
    "Denoiser": "predictions",
    "NonFiniteError": "sample",
    "SampleOutput": "sample",
    "Sampler": "sample",
    "sample": "sample",
    "GaussianSkip": "tuning",
    "Recipe": "tuning",
    "tune": "tuning",
}
#: subpackages and modules reachable as attributes after a bare ``import pfode``
_MODULES = (
    "adjoint", "analytic", "guidance", "likelihood", "metrics", "paths", "solvers", "tuning",
    "models", "train", "data", "nets", "integrations", "plots", "checkpoint", "engine", "grids", "predictions", "io",
    "physics", "inverse", "interpolants", "mean_reverting",
)  # fmt: skip
#: submodules named like the function they define: ``pfode.sample`` and ``pfode.invert`` are the functions
_SHADOWED = frozenset(n for n, m in _NAMES.items() if n == m)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted({*globals(), *_NAMES, *_MODULES})


class _Package(types.ModuleType):
    """Importing the submodule ``pfode.sample`` binds it as an attribute of the package: keep the function."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Denoiser",
    "grid",
    "as_grid",
    "sample",
    "Sampler",
    "SampleOutput",
    "NonFiniteError",
    "log_likelihood",
    "bits_per_dim",
    "LikelihoodOutput",
    "BitsPerDimOutput",
    "invert",
    "bdia_sample",
    "round_trip",
    "InversionOutput",
    "RoundTrip",
    "adjoint_sample",
    "cfg",
    "classifier_guidance",
    "dynamic_thresholding",
    "paths",
    "solvers",
    "likelihood",
    "adjoint",
    "guidance",
    "analytic",
    "metrics",
    "tune",
    "Recipe",
    "GaussianSkip",
    "tuning",
    "__version__",
]
