"""Tuned sampling: fit a few-step sampler to one model (:func:`tune`) and keep it as data (:class:`Recipe`).

* :class:`Recipe`: decreasing times, one update rule per step, an optional analytic first segment,
  fingerprints of the path and sample shape, and metadata; versioned JSON (``save``/``load``).
* :func:`tune`: optimized step locations, a per-step solver search, DPM-Solver-v3 statistics and the
  analytic Gaussian skip, against a teacher solve on a tuning set, reported on held-out noise.
* :class:`GaussianSkip`: the closed-form PF-ODE of a Gaussian with given moments.
"""

from .recipe import Recipe, RecipeError
from .search import TuneError, tune
from .skip import GaussianSkip

__all__ = ["Recipe", "RecipeError", "tune", "TuneError", "GaussianSkip"]
