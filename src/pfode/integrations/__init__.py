"""Bridges between pfode and other diffusion libraries.

Submodules (imported on first access, so ``import pfode.integrations`` needs none of the libraries):

* :mod:`pfode.integrations.diffusers` -- diffusers scheduler configs -> pfode paths, diffusers models ->
  :class:`pfode.Denoiser`, and :class:`~pfode.integrations.diffusers.PFODEScheduler`, a diffusers
  scheduler that runs any pfode solver inside a diffusers pipeline (needs ``diffusers``);
* :mod:`pfode.integrations.k_diffusion` -- k-diffusion denoisers ``D(x, sigma)`` as pfode denoisers and
  ``sample_<solver>(model, x, sigmas, ...)`` functions with k-diffusion's signature for every pfode
  solver (needs nothing beyond pfode);
* :mod:`pfode.integrations.flow_matching` -- velocity models with data at ``t = 1`` (flow_matching,
  torchcfm) or at ``t = 0`` (rectified flow) as pfode denoisers.
"""

from __future__ import annotations

import importlib

__all__ = ["diffusers", "k_diffusion", "flow_matching"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
