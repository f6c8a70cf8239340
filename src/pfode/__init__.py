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
"""

from . import adjoint, analytic, guidance, likelihood, metrics, paths, solvers, tuning
from .adjoint import adjoint_sample
from .grids import as_grid, grid
from .guidance import cfg, classifier_guidance, dynamic_thresholding
from .invert import InversionOutput, RoundTrip, bdia_sample, invert, round_trip
from .likelihood import BitsPerDimOutput, LikelihoodOutput, bits_per_dim, log_likelihood
from .predictions import Denoiser
from .sample import NonFiniteError, SampleOutput, Sampler, sample
from .tuning import GaussianSkip, Recipe, tune

__version__ = "0.1.0"

#: subpackages imported on first use (``pfode.models.load(...)`` after a bare ``import pfode``), so that
#: ``import pfode`` stays light
_LAZY = ("models", "train", "data", "nets", "integrations", "plots", "checkpoint", "engine", "grids", "predictions")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
