"""k-diffusion interop: k-diffusion denoisers as pfode denoisers, and k-diffusion-style samplers.

A k-diffusion model is a denoiser ``D(x, sigma, **extra_args) -> x0_hat`` on the EDM/VE path
``x = x0 + sigma * noise``. :func:`denoiser` wraps one as a :class:`pfode.Denoiser` on
:class:`pfode.paths.EDM` (``alpha = 1``, ``sigma = t``) with prediction ``"x0"``.

For every registered pfode solver this module has a function with k-diffusion's sampler signature::

    sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)

so existing k-diffusion code switches with one import::

    from pfode.integrations.k_diffusion import sample_dpmpp_2m   # instead of k_diffusion.sampling

Solver names map to identifiers by ``"++" -> "pp_"`` and ``"-" -> "_"``: ``dpm++2m`` -> ``sample_dpmpp_2m``,
``dpm++3m`` -> ``sample_dpmpp_3m``, ``dpm++2m-sde`` -> ``sample_dpmpp_2m_sde``, ``dpm-fast`` ->
``sample_dpm_fast``, ``euler-maruyama`` -> ``sample_euler_maruyama``, ``unipc`` -> ``sample_unipc``
(:data:`SAMPLERS` lists them all; :func:`sampler_name` gives the rule). Note that ``sample_dpm_fast`` here
takes ``sigmas`` like every other sampler (k-diffusion's own takes ``sigma_min, sigma_max, n``), and
``sample_dpm2`` is pfode's DPM-Solver-2 (k-diffusion's ``sample_dpm_2`` is a different method).

:func:`sample_recipe` runs a tuned :class:`pfode.Recipe` (``pfode.tune`` on :func:`denoiser` of the model) in
place of ``sigmas``.

Conventions, as in k-diffusion:

* ``sigmas`` is the decreasing noise schedule; ending it with ``0`` (``get_sigmas_karras`` and friends do)
  makes the last step the step to zero noise, which returns ``D(x, sigmas[-2])`` (pfode's ``denoise``).
  Without a final ``0`` the samplers stop at ``sigmas[-1]``.
* ``callback`` is called once per step with ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``: the state at
  ``sigmas[i]``, the step index, ``sigmas[i]`` (twice: these samplers add no churn) and ``D`` there.
* ``extra_args`` is passed to the model at every call; ``disable`` (progress bar) is accepted and ignored;
  sampling runs under ``torch.no_grad()``.
* ``**options`` are the pfode solver's options (``order=3``, ``eta=0.5``, ``variable="t"``, ...) plus
  ``generator`` for the noise of stochastic solvers. k-diffusion's ``s_churn``, ``s_tmin``, ``s_tmax``,
  ``s_noise`` are accepted at their neutral values (no churn, ``s_noise=1``); other values, and
  ``noise_sampler``, raise ``ValueError``.

pfode's ``euler``, ``heun`` and ``dpm++2m`` are k-diffusion's ``sample_euler``, ``sample_heun`` and
``sample_dpmpp_2m`` (without churn) up to float round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import solvers
from ..paths import EDM
from ..predictions import Denoiser
from ..sample import sample as pf_sample

# the sample_* functions are added below
__all__ = ["denoiser", "sampler_name", "SAMPLERS", "load_sampling", "sample_recipe"]

_K_SAMPLING = None


def load_sampling():
    """k-diffusion's ``k_diffusion.sampling`` module without the rest of the package (cached).

    ``k_diffusion/__init__.py`` imports torchvision and more; its sampling module needs only torch, scipy,
    torchdiffeq, torchsde and tqdm. With ``pip install --no-deps k-diffusion`` this executes ``sampling.py``
    from its file under a private module name, giving it a private ``utils`` with the one helper it uses
    (``append_dims``). Nothing is left in ``sys.modules``: a later ``import k_diffusion`` imports the real
    package. If the real package is already imported, its sampling module is returned.
    """
    global _K_SAMPLING
    if _K_SAMPLING is not None:
        return _K_SAMPLING
    import importlib
    import importlib.machinery
    import importlib.util
    import sys
    import types
    from pathlib import Path

    if "k_diffusion" in sys.modules:
        _K_SAMPLING = importlib.import_module("k_diffusion.sampling")
        return _K_SAMPLING
    spec = importlib.machinery.PathFinder.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    # sampling.py does ``from . import utils``: a private package, in sys.modules only while it runs
    private = "_pfode_k_diffusion"
    pkg = types.ModuleType(private)
    pkg.__path__ = []
    pkg.utils = types.ModuleType(f"{private}.utils")

    def append_dims(x, target_dims):
        if target_dims < x.ndim:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    pkg.utils.append_dims = append_dims
    mspec = importlib.util.spec_from_file_location(f"{private}.sampling", pkg_dir / "sampling.py")
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[private] = pkg
    try:
        mspec.loader.exec_module(mod)
    finally:
        sys.modules.pop(private, None)
    _K_SAMPLING = mod
    return mod


_NEUTRAL = {"s_churn": 0.0, "s_noise": 1.0}
_IGNORED = ("s_tmin", "s_tmax")


def _float_attr(model, name: str, default: float) -> float:
    try:
        return float(getattr(model, name))
    except (AttributeError, TypeError, ValueError):
        return default


def denoiser(model: Callable, sigma_min: float | None = None, sigma_max: float | None = None) -> Denoiser:
    """A k-diffusion denoiser ``D(x, sigma, **extra_args)`` as a :class:`pfode.Denoiser` on the EDM path.

    ``sigma_min``/``sigma_max`` set the path's default grid ends (:func:`pfode.grid`); they default to the
    model's ``sigma_min``/``sigma_max`` attributes (k-diffusion's wrappers have them), else 0.002 and 80.
    Conditioning goes in ``pfode.sample(..., cond=extra_args)``.
    """
    if isinstance(model, Denoiser):
        return model
    if not callable(model):
        raise TypeError(f"model must be a k-diffusion denoiser D(x, sigma, **extra_args), got {type(model).__name__}")
    lo = _float_attr(model, "sigma_min", 0.002) if sigma_min is None else float(sigma_min)
    hi = _float_attr(model, "sigma_max", 80.0) if sigma_max is None else float(sigma_max)
    if not (0 < lo < hi < math.inf):
        lo, hi = 0.002, 80.0
    return Denoiser(model, EDM(sigma_min=lo, sigma_max=hi), prediction="x0", time_input="sigma")


def sampler_name(solver: str) -> str:
    """The k-diffusion-style function name of a pfode solver: ``"dpm++2m"`` -> ``"sample_dpmpp_2m"``."""
    ident = "sample_" + solver.replace("++", "pp_").replace("+", "p").replace("-", "_")
    if not ident.isidentifier():
        raise ValueError(f"solver name {solver!r} does not map to a Python identifier ({ident!r})")
    return ident


def _check_sigmas(sigmas) -> torch.Tensor:
    sig = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).flatten()
    if sig.numel() < 2:
        raise ValueError(f"sigmas must have at least 2 entries (a start and an end), got {sig.numel()}")
    if not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0, got {sig.tolist()}")
    if not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError(f"sigmas must decrease strictly (noise to data), got {sig.tolist()}")
    if bool((sig[:-1] == 0).any()):
        raise ValueError("only the last sigma may be 0")
    return sig


def _split_options(name: str, options: dict):
    opts = dict(options)
    generator = opts.pop("generator", None)
    for k, neutral in _NEUTRAL.items():
        if k in opts:
            v = opts.pop(k)
            if float(v) != neutral:
                raise ValueError(
                    f"{k}={v!r} is not supported by pfode's sample_* functions (only {k}={neutral}); "
                    "pfode samplers add no churn"
                )
    for k in _IGNORED:
        opts.pop(k, None)
    if opts.pop("noise_sampler", None) is not None:
        raise ValueError("noise_sampler is not supported; stochastic pfode solvers take generator= instead")
    try:
        solver = solvers.get(name, **opts)
        if hasattr(solver, "lower_order_final") and "lower_order_final" not in opts:
            # k-diffusion's multistep samplers lower the order only on the step to sigma = 0
            solver = solvers.get(name, lower_order_final=False, **opts)
    except TypeError as e:
        raise ValueError(f"invalid option(s) {sorted(opts)} for solver {name!r}: {e}") from None
    return solver, generator


def _make_sampler(name: str):
    fname = sampler_name(name)

    @torch.no_grad()
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        solver, generator = _split_options(name, options)
        den = denoiser(model)
        sig = _check_sigmas(sigmas)
        cond = dict(extra_args or {})
        zero_end = float(sig[-1]) == 0.0
        grid = sig[:-1] if zero_end else sig
        orig = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas)

        def to_k(info):
            i = info["i"]
            s = orig[i]
            callback({"x": info["x"], "i": i, "sigma": s, "sigma_hat": s, "denoised": info["x0_hat"]})

        if grid.numel() == 1:  # [sigma, 0]: the step to zero noise alone
            x0, _ = den(x, float(grid[0]), **cond)
            if callback is not None:
                to_k({"i": 0, "x": x, "x0_hat": x0})
            return x0
        callback_ = None if callback is None else to_k
        return pf_sample(den, x, grid, solver, denoise=zero_end, callback=callback_, generator=generator, cond=cond)

    sampler.__name__ = sampler.__qualname__ = fname
    sampler.__doc__ = (
        f"pfode solver {name!r} with k-diffusion's sampler signature "
        "(see :mod:`pfode.integrations.k_diffusion`).\n\n"
        "Args: model (``D(x, sigma, **extra_args)``), x (the start state at ``sigmas[0]``), sigmas\n"
        "(decreasing, optionally ending with 0), extra_args, callback, disable (ignored), **options\n"
        "(solver options, generator). Returns the final state."
    )
    sampler.solver_name = name
    return sampler


@torch.no_grad()
def sample_recipe(model, x, recipe, extra_args=None, callback=None, disable=None):
    """Run a tuned :class:`pfode.Recipe` with k-diffusion's sampler signature, the recipe in place of ``sigmas``.

    Tune it on the same wrapped model, ``pfode.tune(pfode.integrations.k_diffusion.denoiser(model), nfe,
    shape=...)``; ``x`` is the start state at the recipe's first noise level ``recipe.t_start`` (a sigma). A
    recipe tuned for another path (other ``sigma_min``/``sigma_max``) or sample shape is refused.
    """
    from ..tuning import Recipe

    if isinstance(recipe, (str, bytes)) or hasattr(recipe, "__fspath__"):
        recipe = Recipe.load(recipe)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a pfode.Recipe or a recipe file, got {type(recipe).__name__}")
    den = denoiser(model)

    def to_k(info):
        s = torch.tensor(info["t"], dtype=x.dtype)
        callback({"x": info["x"], "i": info["i"], "sigma": s, "sigma_hat": s, "denoised": info["x0_hat"]})

    return pf_sample(den, x, recipe, callback=None if callback is None else to_k, cond=dict(extra_args or {}))


#: k-diffusion-style function name -> pfode solver name
SAMPLERS: dict[str, str] = {}
for _name in solvers.available():
    _fn = _make_sampler(_name)
    globals()[_fn.__name__] = _fn
    SAMPLERS[_fn.__name__] = _name
    __all__.append(_fn.__name__)
del _name, _fn


def __getattr__(attr: str):
    # solvers registered after this module was imported
    if attr.startswith("sample_"):
        for n in solvers.available():
            if sampler_name(n) == attr:
                return _make_sampler(n)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
