"""k-diffusion interop: k-diffusion denoisers as pfode denoisers, and k-diffusion's samplers on pfode's solvers.

A k-diffusion model is a denoiser ``D(x, sigma, **extra_args) -> x0_hat`` on the EDM/VE path
``x = x0 + sigma * noise``. :func:`denoiser` wraps one as a :class:`pfode.Denoiser` on
:class:`pfode.paths.EDM` (``alpha = 1``, ``sigma = t``) with prediction ``"x0"``.

**k-diffusion's samplers**, with its names, signatures and defaults, each running a pfode solver (so the same
algorithm also serves every path and prediction type through :func:`pfode.sample`)::

    sample_euler            euler / EDMSampler("euler") with churn     sample_dpmpp_2s_ancestral  dpm++2s-ancestral
    sample_euler_ancestral  euler-ancestral                            sample_dpmpp_sde           dpm++sde
    sample_heun             heun / EDMSampler("heun") with churn       sample_dpmpp_2m            dpm++2m
    sample_dpm_2            dpm-2                                      sample_dpmpp_2m_sde        dpm++2m-sde (midpoint)
    sample_dpm_2_ancestral  dpm-2-ancestral                            sample_dpmpp_3m_sde        dpm++3m-sde
    sample_lms              lms                                        sample_dpm_adaptive        dpm-adaptive

so existing k-diffusion code switches with one import (``from pfode.integrations.k_diffusion import
sample_dpmpp_2m`` instead of ``k_diffusion.sampling``). Every other registered pfode solver has a function too,
``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)`` (solver options as
keywords), named by ``"++" -> "pp_"`` and ``"-" -> "_"``: ``dpm++3m`` -> ``sample_dpmpp_3m``, ``unipc`` ->
``sample_unipc``, ``dpm-fast`` -> ``sample_dpm_fast`` (:data:`SAMPLERS` lists them all; :func:`sampler_name` gives
the rule). ``sample_dpm_fast`` takes k-diffusion's ``sigma_min, sigma_max, n`` (``eta = 0`` only), and
``sample_dpm2`` is DPM-Solver-2 (Lu et al.), not k-diffusion's ``sample_dpm_2``.

:func:`sample_recipe` runs a tuned :class:`pfode.Recipe` (``pfode.tune`` on :func:`denoiser` of the model) in
place of ``sigmas``.

Conventions, as in k-diffusion:

* ``sigmas`` is the decreasing noise schedule; ending it with ``0`` (``get_sigmas_karras`` and friends do)
  makes the last step the step to zero noise (for most samplers the denoiser ``D(x, sigmas[-2])``; ``sample_lms``
  integrates its polynomial down to 0 and churn evaluates at ``sigma_hat``). Without a final ``0`` the samplers
  stop at ``sigmas[-1]``.
* ``callback`` is called once per step with ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``: the state at
  ``sigmas[i]``, the step index, ``sigmas[i]``, the noise level after churn (``sigmas[i]`` without churn) and ``D``
  there. (With churn ``x`` is the state before the churn noise; k-diffusion passes the state after it.)
  ``sample_dpm_adaptive`` calls it after every attempt with k-diffusion's payload of that sampler.
* ``extra_args`` is passed to the model at every call; ``disable`` (progress bar) is accepted and ignored;
  sampling runs under ``torch.no_grad()``.

Noise. Stochastic samplers (ancestral, SDE, churn) take ``noise_sampler(sigma, sigma_next) -> noise like x``, as
k-diffusion's do (:class:`k_diffusion.sampling.BrownianTreeNoiseSampler` included): each fresh noise is drawn as
the increment over a noise interval, and the sampler is treated as one Brownian motion (``sample_dpmpp_sde``
draws the increments over ``(sigma, sigma_mid)`` and ``(sigma_mid, sigma_next)`` and sums them, where k-diffusion
asks for ``(sigma, sigma_next)``; for a Brownian tree that is the same noise). Churn draws
``noise_sampler(sigma, sigma_hat)`` (k-diffusion's churn samplers take no ``noise_sampler``: they use
``torch.randn_like``). Without a ``noise_sampler`` the noise comes from pfode's per-sample streams (seeded by
``generator=`` or torch's global generator): independent increments, the same law as k-diffusion's default Brownian
tree for the SDE samplers and as its ``randn_like`` for the ancestral ones, reproducible whatever the batch size.

``sample_dpmpp_2m_sde`` defaults to ``solver_type="midpoint"`` as k-diffusion does (pfode's ``dpm++2m-sde`` solver
defaults to ``"heun"``). ``sample_dpm_adaptive`` controls one error over the whole batch, as k-diffusion does
(``pfode.sample(..., "dpm-adaptive")`` controls each sample on its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import solvers
from .._checks import check_state
from ..paths import EDM
from ..predictions import Denoiser
from ..sample import PerSampleNoise
from ..sample import sample as pf_sample
from ..solvers.base import Evaluator, Table, run
from ..solvers.edm import EDMSampler

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


class _KNoise:
    """``noise()`` for a plan: a k-diffusion ``noise_sampler(sigma, sigma_next)`` at each draw's noise interval.

    A step lists its intervals in ``draws`` (call order); steps without (``ddpm``, ``euler-maruyama``,
    ``dpm++2m-sde``) draw once over ``(sigma_i, sigma_{i+1})``. :meth:`advance` moves to the next step.
    """

    def __init__(self, noise_sampler: Callable, plan, table: Table, like: torch.Tensor, sigmas: torch.Tensor):
        if not callable(noise_sampler):
            raise TypeError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next), got {noise_sampler}")
        self.ns, self.plan, self.table, self.like = noise_sampler, plan, table, like
        self.sig = dict(dtype=sigmas.dtype, device=sigmas.device)
        self.k = self.j = 0

    def __call__(self) -> torch.Tensor:
        st = self.plan[self.k]
        draws = getattr(st, "draws", None) or ((self.table[st.i].s, self.table[st.i + 1].s),)
        a, b = draws[self.j]
        self.j += 1
        z = self.ns(torch.tensor(a, **self.sig), torch.tensor(b, **self.sig))
        if not isinstance(z, torch.Tensor) or z.shape != self.like.shape:
            raise ValueError(
                f"noise_sampler(sigma, sigma_next) must return a tensor shaped like x {tuple(self.like.shape)}, got "
                f"{getattr(z, 'shape', type(z).__name__)}"
            )
        return z

    def advance(self):
        self.k += 1
        self.j = 0


def _run(model, x, sigmas, extra_args, callback, solver, generator=None, noise_sampler=None):
    """Run ``solver`` on k-diffusion's ``sigmas`` (ending with 0: the last step goes to zero noise)."""
    check_state("x", x)
    den = denoiser(model)
    sig = _check_sigmas(sigmas)
    orig = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, dtype=torch.float64)
    zero_end = float(sig[-1]) == 0.0
    table = Table(den.path, sig[:-1] if zero_end else sig, zero_end)
    plan = solver.plan(table)
    ev = Evaluator(den, table, x, dict(extra_args or {}))
    noise = None
    if noise_sampler is not None:
        if not solver.stochastic:
            raise ValueError(f"noise_sampler is given but solver {solver.name!r} (these options) draws no noise")
        noise = _KNoise(noise_sampler, plan, table, x, orig)
    elif solver.stochastic:
        noise = PerSampleNoise(x, generator)
    on_step = None
    if callback is not None or noise_sampler is not None:

        def on_step(st, x_prev, hist, x_next, hist_next, d):
            if callback is not None:
                i = st.i
                s_hat = getattr(st, "s_hat", None)
                sigma_hat = orig[i] if s_hat is None or getattr(st, "j_hat", i) == i else orig.new_tensor(s_hat)
                callback({"x": x_prev, "i": i, "sigma": orig[i], "sigma_hat": sigma_hat, "denoised": d})
            if noise_sampler is not None:
                noise.advance()

    out, _ = run(solver, plan, x, ev, noise, on_step)
    return out


def _adaptive(model, x, sigmas, extra_args, callback, solver):
    """An adaptive pfode solver from ``sigmas[0]`` to the last nonzero sigma (then ``D`` there if the last is 0)."""
    den = denoiser(model)
    sig = _check_sigmas(sigmas)
    zero_end = float(sig[-1]) == 0.0
    grid = sig[:-1] if zero_end else sig
    if grid.numel() == 1:
        raise ValueError(f"solver {solver.name!r} needs sigmas with two nonzero entries (its two ends)")

    def to_k(info):  # pfode's per-attempt payload with per-sample times
        s = info["t"].to(x.dtype)
        callback({"x": info["x"], "i": info["i"], "sigma": s, "sigma_hat": s, "denoised": info["x0_hat"]})

    return pf_sample(
        den, x, grid[[0, -1]], solver, denoise=zero_end, callback=None if callback is None else to_k,
        cond=dict(extra_args or {}),
    )


def _build(name: str, **opts):
    try:
        return solvers.get(name, **opts)
    except TypeError as e:
        raise ValueError(f"invalid option(s) {sorted(opts)} for solver {name!r}: {e}") from None


def _split_options(name: str, options: dict):
    import inspect

    opts = dict(options)
    generator = opts.pop("generator", None)
    noise_sampler = opts.pop("noise_sampler", None)
    churn = opts.pop("s_churn", 0.0)
    if float(churn) != 0.0:
        raise ValueError(
            f"s_churn={churn!r}: churn is supported by sample_euler, sample_heun and sample_dpm_2 (solver {name!r} "
            "has none)"
        )
    for k in ("s_tmin", "s_tmax"):
        opts.pop(k, None)
    s_noise = opts.pop("s_noise", None)
    solver = _build(name, **opts)
    extra = {}
    if s_noise is not None:
        if "s_noise" in inspect.signature(type(solver)).parameters:
            extra["s_noise"] = s_noise
        elif float(s_noise) != 1.0:
            raise ValueError(f"s_noise={s_noise!r} is not supported by solver {name!r} (only s_noise=1.0)")
    if hasattr(solver, "lower_order_final") and "lower_order_final" not in opts:
        # k-diffusion's multistep samplers lower the order only on the step to sigma = 0
        extra["lower_order_final"] = False
    if extra:
        solver = _build(name, **opts, **extra)
    return solver, generator, noise_sampler


def _make_sampler(name: str):
    fname = sampler_name(name)

    @torch.no_grad()
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        solver, generator, noise_sampler = _split_options(name, options)
        if solver.adaptive:
            if noise_sampler is not None:
                raise ValueError(f"noise_sampler is not supported by the adaptive solver {name!r}")
            return _adaptive(model, x, sigmas, extra_args, callback, solver)
        return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler)

    sampler.__name__ = sampler.__qualname__ = fname
    sampler.__doc__ = (
        f"pfode solver {name!r} with k-diffusion's sampler signature "
        "(see :mod:`pfode.integrations.k_diffusion`).\n\n"
        "Args: model (``D(x, sigma, **extra_args)``), x (the start state at ``sigmas[0]``), sigmas\n"
        "(decreasing, optionally ending with 0), extra_args, callback, disable (ignored), **options\n"
        "(solver options, generator, noise_sampler for stochastic solvers). Returns the final state."
    )
    sampler.solver_name = name
    return sampler


# -- k-diffusion's samplers, with its signatures and defaults ------------------------------------------------
_K_DOC = (
    "k-diffusion's ``{k}`` on pfode's solver ``{name!r}`` (see :mod:`pfode.integrations.k_diffusion`), with its "
    "signature and defaults.{extra}\n\n"
    "Keyword-only extras: ``generator`` seeds pfode's per-sample noise streams when no ``noise_sampler`` is given."
)


def _k_sampler(name: str, extra: str = ""):
    def wrap(fn):
        fn.solver_name = name
        fn.__doc__ = _K_DOC.format(k=fn.__name__, name=name, extra=extra)
        return torch.no_grad()(fn)

    return wrap


def _churn(method: str, s_churn, s_tmin, s_tmax, s_noise):
    if method != "dpm-2" and float(s_churn) == 0.0:
        return solvers.get(method)
    return EDMSampler(method, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


_CHURN = (
    " Churn (``s_churn > 0``) adds fresh noise ``noise_sampler(sigma, sigma_hat)`` (default: pfode's streams) before "
    "each step with ``s_tmin <= sigma <= s_tmax``."
)
_INF = float("inf")


@_k_sampler("euler", _CHURN)
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=_INF, s_noise=1.0, *, noise_sampler=None, generator=None):
    solver = _churn("euler", s_churn, s_tmin, s_tmax, s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler)


@_k_sampler("heun", _CHURN)
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=_INF, s_noise=1.0, *, noise_sampler=None, generator=None):
    solver = _churn("heun", s_churn, s_tmin, s_tmax, s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler)


@_k_sampler("dpm-2", _CHURN)
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=_INF, s_noise=1.0, *, noise_sampler=None, generator=None):
    solver = _churn("dpm-2", s_churn, s_tmin, s_tmax, s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler)


@_k_sampler("lms")
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    return _run(model, x, sigmas, extra_args, callback, solvers.get("lms", order=order))


@_k_sampler("euler-ancestral")
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None, *, generator=None):
    solver = solvers.get("euler-ancestral", eta=eta, s_noise=s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler("dpm-2-ancestral")
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None, *, generator=None):
    solver = solvers.get("dpm-2-ancestral", eta=eta, s_noise=s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler("dpm++2s-ancestral")
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None, *, generator=None):
    solver = solvers.get("dpm++2s-ancestral", eta=eta, s_noise=s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler("dpm++sde")
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2, *, generator=None):
    solver = solvers.get("dpm++sde", eta=eta, s_noise=s_noise, r=r)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler("dpm++2m-sde")
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint", *, generator=None):
    solver = solvers.get("dpm++2m-sde", eta=eta, s_noise=s_noise, solver_type=solver_type)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler("dpm++3m-sde")
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, *, generator=None):
    solver = solvers.get("dpm++3m-sde", eta=eta, s_noise=s_noise)
    return _run(model, x, sigmas, extra_args, callback, solver, generator, noise_sampler if solver.stochastic else None)


@_k_sampler(
    "dpm-adaptive",
    " It integrates from ``sigma_max`` to ``sigma_min`` (no final denoising), controlling one RMS error over the "
    "whole batch as k-diffusion does; ``return_info=True`` also returns ``{'steps', 'nfe', 'n_accept', 'n_reject'}``. "
    "Like k-diffusion it rounds ``rtol`` and ``atol`` to torch's default dtype; unlike k-diffusion, which steps in "
    "the dtype of ``torch.tensor(sigma_max)`` (float32 for Python floats), it steps in float64.",
)
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False, *, generator=None):
    check_state("x", x)
    lo, hi = float(sigma_min), float(sigma_max)
    if not (lo > 0 and hi > 0):
        raise ValueError(f"sigma_min={sigma_min!r} and sigma_max={sigma_max!r} must be > 0")
    # k-diffusion holds the tolerances as torch.tensor(rtol), torch.tensor(atol): numbers of the default dtype
    rtol, atol = (float(torch.tensor(float(v))) for v in (rtol, atol))
    solver = solvers.get(
        "dpm-adaptive", order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff,
        accept_safety=accept_safety, eta=eta, s_noise=s_noise, control="batch",
    )
    den = denoiser(model)
    dtype = sigma_max.dtype if isinstance(sigma_max, torch.Tensor) else torch.float32
    noise = None
    if solver.stochastic:
        if noise_sampler is not None:

            def noise(s_from, s_to):  # batch control: every sample is at the same noise level
                return noise_sampler(s_from[0].to(dtype), s_to[0].to(dtype))

        else:
            streams = PerSampleNoise(x, generator)

            def noise(s_from, s_to):
                return streams()

    cb = None
    if callback is not None:

        def cb(info):
            lam = info["lam"][0]
            sig = torch.exp(-lam)
            callback(
                {
                    "x": info["x"], "i": info["i"], "t": lam, "t_up": lam, "denoised": info["x0_hat"],
                    "error": info["error"][0], "h": float(info["h"][0]), "steps": info["i"] + 1, "nfe": info["nfe"],
                    "n_accept": info["n_accept"], "n_reject": info["n_reject"], "sigma": sig,
                    "sigma_hat": sig,
                }
            )

    x, info = solver.solve(den, x, hi, lo, dict(extra_args or {}), callback=cb, noise=noise)
    if return_info:
        return x, {k: info[k] for k in ("steps", "nfe", "n_accept", "n_reject")}
    return x


@_k_sampler(
    "dpm-fast",
    " Its own grid: ``n`` evaluations spent as DPM-Solver-fast does (steps of order 3, the last ones of order 2 and "
    "1, ``floor(n / 3) + 1`` steps) on a grid uniform in ``log sigma`` from ``sigma_max`` to ``sigma_min`` (no final "
    "denoising). The ancestral variant (``eta > 0``) is not offered: use ``sample_dpm_adaptive(eta=...)`` or "
    "``sample_dpmpp_2s_ancestral``.",
)
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    check_state("x", x)
    lo, hi = float(sigma_min), float(sigma_max)
    if not (lo > 0 and hi > 0):
        raise ValueError(f"sigma_min={sigma_min!r} and sigma_max={sigma_max!r} must be > 0")
    if float(eta) != 0.0:
        raise ValueError(
            f"eta={eta!r}: the ancestral DPM-Solver-fast is not offered (eta=0 only); sample_dpm_adaptive takes eta"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a number of evaluations >= 1")
    steps, solver = solvers.get("dpm-fast").for_nfe(n, False)
    sigmas = torch.exp(torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64))
    return _run(model, x, sigmas, extra_args, callback, solver)


_K_SAMPLERS = {
    f.solver_name: f
    for f in (
        sample_euler, sample_heun, sample_dpm_2, sample_lms, sample_euler_ancestral, sample_dpm_2_ancestral,
        sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpm_adaptive,
        sample_dpm_fast,
    )
}


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
    _fn = _K_SAMPLERS.get(_name) or _make_sampler(_name)
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
