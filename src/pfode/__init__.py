"""pfode: the probability-flow ODE of diffusion and flow-matching models, exact and fast.

Quick map:

* :mod:`pfode.paths` — affine Gaussian paths (VP, cosine, DDPM discrete, sub-VP, VE, EDM, Linear, Trig, Affine);
* :class:`pfode.Denoiser` — any network output (eps, x0, v, score, velocity) -> ``(x0_hat, eps_hat)``;
* :func:`pfode.grid` — time grids (logsnr, uniform, karras, quadratic);
* :func:`pfode.sample` and :mod:`pfode.solvers` — DDIM, DPM-Solver(++), UniPC, DEIS, iPNDM, RK, dopri5, SDEs;
* :mod:`pfode.analytic` — Gaussian and Gaussian-mixture ground truth;
* :mod:`pfode.metrics` — W2 (exact Gaussian, samples), sliced W2, MMD, straightness.
"""

from . import analytic, metrics, paths, solvers
from .grids import as_grid, grid
from .predictions import Denoiser
from .sample import NonFiniteError, SampleOutput, Sampler, sample

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "grid",
    "as_grid",
    "sample",
    "Sampler",
    "SampleOutput",
    "NonFiniteError",
    "paths",
    "solvers",
    "analytic",
    "metrics",
    "__version__",
]
