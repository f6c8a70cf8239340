"""Inverse problems with any pfode model as the prior, certified against the exact posterior.

* :mod:`~pfode.inverse.operators` -- measurements ``y = A(x) + noise``: inpainting, downsampling, blur, random
  projection, a matrix, any differentiable ``A``;
* :func:`solve` -- the one entry point: ``solve(den, y, operator, method=..., nfe=...)`` returns samples, network and
  gradient evaluation counts; :func:`available` / :func:`describe` list the methods with their papers;
* :func:`posterior` -- the exact posterior of a Gaussian or Gaussian-mixture prior under a linear Gaussian
  measurement (also :func:`pfode.analytic.posterior`).
"""

from .base import METHODS, Evaluations, InverseOutput, available, describe, register, solve
from .operators import (
    Blur,
    Downsample,
    Inpaint,
    LinearOperator,
    MatrixOperator,
    Nonlinear,
    Operator,
    RandomProjection,
)
from .posterior import PosteriorMixture, posterior

__all__ = [
    "METHODS",
    "Evaluations",
    "InverseOutput",
    "available",
    "describe",
    "register",
    "solve",
    "Blur",
    "Downsample",
    "Inpaint",
    "LinearOperator",
    "MatrixOperator",
    "Nonlinear",
    "Operator",
    "RandomProjection",
    "PosteriorMixture",
    "posterior",
]
