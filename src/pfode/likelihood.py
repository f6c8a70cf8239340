"""Exact log-likelihood of the probability-flow ODE and bits per dimension of 8-bit data.

The PF-ODE is a continuous normalizing flow. With ``y = x / alpha`` and ``lam = log(alpha/sigma)`` every
path's ODE reads ``dy/dlam = F(y, lam) = x0_hat(alpha y, t(lam)) - y``, and the instantaneous change
of variables (Chen et al., 2018) gives along a trajectory

    d log p_lam(y(lam)) / dlam = -div_y F = d - div_y x0_hat,

with ``d`` the number of elements of one sample. Integrating ``e' = div_y x0_hat - d`` from
``lam(t_min)`` (data) down to ``lam(t_max)`` (noise) alongside ``y`` and converting between the densities
of ``x`` and ``y`` (``log p_x(x) = log p_y(x / alpha) - d log alpha``) gives

    log p_{t_min}(x) = log prior(x_T) + d log alpha(t_max) - d log alpha(t_min) + e(lam(t_max)).

In ``lam`` the ODE is the same on every path (only the range of ``lam`` differs). The solver does not
step ``y`` in ``lam`` itself: ``y`` varies like ``e^{-lam}`` at the noise end, and ``lam`` stretches the
nearly linear data end. It steps the state of the trigonometric path with the same ``lam``,

    w = cos(theta) y = cos(theta) x0 + sin(theta) eps,      theta = atan(e^{-lam}) in (0, pi/2),

whose velocity and log-density rate

    dw/dtheta = v = cos(theta) eps_hat - sin(theta) x0_hat,      d log p_w / dtheta = -div_w v,

are bounded on every path (``v`` moves from ``eps_hat`` at the data end to ``-x0_hat`` at the noise end,
and ``div_w v`` vanishes at both ends, like ``theta`` at the data end and like ``cos(theta)`` at the noise
end): no part of the integrand is singular, nothing is integrated in closed form, and the adaptive steps
are spent where the network's output changes. The densities convert with
``log p_x = log p_w + d log(cos(theta) / alpha)``. The adaptive solver is Dormand-Prince 5(4) (the tableau
of :class:`pfode.solvers.Dopri5`) with the log-density inside the error norm (to ``atol`` nats per
dimension) and a PI step-size controller.

The divergence of ``v`` is exact (one vector-Jacobian product per element, batched with
``is_grads_batched``, for any tensor shape) or Hutchinson's estimate ``z^T (dv / dw) z`` with ``probes``
Rademacher or Gaussian vectors ``z`` fixed for the whole solve.

Samples must be processed independently by the network (no batch statistics): the divergence is
computed from gradients of batch sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import as_f64, check_choice, check_finite_float, check_int, check_state
from .engine import DOPRI5, PFODE, PIController, drive, rk_stages, solve_adaptive
from .grids import as_grid
from .predictions import Denoiser, check_denoiser
from .solvers.adaptive import batch_view, rms_norm
from .solvers.base import Solver, get

__all__ = ["LikelihoodOutput", "BitsPerDimOutput", "log_likelihood", "bits_per_dim", "DIVERGENCES", "NOISES"]

DIVERGENCES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
DEQUANTIZATIONS = ("uniform", "truncated-normal")
_LOG_2PI = math.log(2.0 * math.pi)
# elements of one batched vector-Jacobian product block (basis vectors x batch x features)
_VJP_BLOCK = 1 << 22


@dataclass
class LikelihoodOutput:
    """What :func:`log_likelihood` returns.

    Attributes:
        logp: ``[B]`` float64, ``log p_{t_min}(x)`` in nats.
        stderr: ``[B]`` float64 standard error of ``logp`` over the Hutchinson probes (``None`` with the
            exact divergence; NaN with a single probe, where it cannot be estimated).
        nfe: network evaluations (each one forward call plus its vector-Jacobian products).
        x_T: the latent at ``t_max`` the data maps to.
        prior_logp: ``[B]`` ``log prior(x_T)``.
        info: solver details (accepted/rejected steps of ``dopri5``, times, per-probe estimates).
    """

    logp: torch.Tensor
    stderr: torch.Tensor | None
    nfe: int
    x_T: torch.Tensor
    prior_logp: torch.Tensor
    info: dict = field(default_factory=dict)


def gaussian_prior(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``log N(x; 0, sigma^2 I)`` per sample (float64), the default prior at ``t_max``."""
    var = float(sigma) ** 2

    def logp(x: torch.Tensor) -> torch.Tensor:
        f = x.reshape(x.shape[0], -1).to(torch.float64)
        return -0.5 * ((f * f).sum(1) / var + f.shape[1] * (_LOG_2PI + math.log(var)))

    return logp


# -- divergence ---------------------------------------------------------------------------------------
def _batched_vjp(out: torch.Tensor, inp: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """``[m, *inp.shape]`` vector-Jacobian products of ``out`` w.r.t. ``inp`` for the ``m`` vectors ``vs``.

    Uses ``is_grads_batched`` (vmap over the backward pass) and falls back to a loop where an operation of
    the network has no batching rule.
    """
    try:
        (g,) = torch.autograd.grad(out, inp, vs, retain_graph=True, is_grads_batched=True, allow_unused=True)
    except RuntimeError:
        g = torch.stack([_vjp(out, inp, v) for v in vs.unbind(0)])
        return g
    return torch.zeros_like(vs) if g is None else g


def _vjp(out, inp, v):
    (g,) = torch.autograd.grad(out, inp, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(v) if g is None else g


def exact_divergence(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``sum_i d out[b, i] / d inp[b, i]`` per sample (``[B]``, float64), for tensors of any shape.

    One vector-Jacobian product per element of a sample (batched in blocks), with the one-hot vector
    set in every sample at once: exact when samples do not interact inside the network.
    """
    b = inp.shape[0]
    d = inp[0].numel()
    m = max(1, min(d, _VJP_BLOCK // max(1, b * d)))
    total = torch.zeros(b, dtype=torch.float64, device=inp.device)
    for start in range(0, d, m):
        idx = torch.arange(start, min(start + m, d), device=inp.device)
        k = idx.numel()
        basis = torch.zeros(k, b, d, dtype=out.dtype, device=out.device)
        basis[torch.arange(k, device=out.device), :, idx] = 1.0
        g = _batched_vjp(out, inp, basis.reshape(k, *inp.shape)).reshape(k, b, d)
        total += g[torch.arange(k, device=g.device), :, idx].to(torch.float64).sum(0)
    return total


def hutchinson_divergence(out: torch.Tensor, inp: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """``v_k^T (d out / d inp) v_k`` per probe and sample (``[K, B]`` float64; probes ``[K, *inp.shape]``)."""
    g = _batched_vjp(out, inp, probes.to(out.dtype))
    return (g * probes).reshape(probes.shape[0], inp.shape[0], -1).to(torch.float64).sum(-1)


def trig_velocity(den: Denoiser, w: torch.Tensor, theta: torch.Tensor, cond: dict | None) -> torch.Tensor:
    """``dw/dtheta = cos(theta) eps_hat - sin(theta) x0_hat`` at per-sample ``theta`` (``[B]`` float64).

    ``w = cos(theta) x / alpha(t)`` is the state of the trigonometric path with the same ``lam`` as the
    path time ``t`` (``tan(theta) = sigma / alpha``), so the network sees ``x = sqrt(alpha^2 + sigma^2) w``.
    Differentiable in ``w``. (:class:`pfode.engine.PFODE` in ``theta``.)
    """
    return PFODE(den, "theta", cond).velocity(w, theta)[0]


def _check_x(x: torch.Tensor) -> torch.Tensor:
    check_state("x", x)
    if x.dim() < 2:
        raise ValueError(
            f"x must have shape [B, ...] with at least one feature dimension, got {tuple(x.shape)}"
        )
    return x


def _first_eval(fn, name: str, x: torch.Tensor):
    """Run the first network evaluation; shape errors of the network become a ValueError naming ``x``."""
    try:
        return fn()
    except RuntimeError as e:
        msg = str(e)
        if any(k in msg for k in ("shape", "size", "dimension", "mat1", "expected")):
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} and dtype {x.dtype} does not fit the denoiser's network: "
                f"{msg}"
            ) from e
        raise


def _times(path, t_start, t_end):
    t1 = path.t_max if t_start is None else check_finite_float("t_start", t_start)
    t0 = path.t_min if t_end is None else check_finite_float("t_end", t_end)
    if not t0 < t1:
        raise ValueError(f"t_end={t0!r} (the data end) must be smaller than t_start={t1!r} (the noise end)")
    if t0 < path.t_lo or t1 > path.t_hi:
        raise ValueError(
            f"[t_end, t_start] = [{t0!r}, {t1!r}] lies outside the range [{path.t_lo:g}, {path.t_hi:g}]"
        )
    l0, l1 = float(path.lam(t0)), float(path.lam(t1))
    if not (math.isfinite(l0) and math.isfinite(l1)):
        raise ValueError(
            "the likelihood integrates between finite lam = log(alpha/sigma): "
            f"t_end={t0!r} has lam={l0} and t_start={t1!r} has lam={l1}; use times with alpha > 0 and sigma > 0"
        )
    return t0, t1


def _resolve(path, solver, grid, t0, t1):
    if grid is not None:
        if isinstance(grid, int) and not isinstance(grid, bool):
            raise TypeError(f"grid={grid!r} is a number; pass pfode.grid(path, {grid})")
        g = as_grid(path, grid)
        tol = 1e-9 * max(1.0, abs(t1))
        if abs(float(g[0]) - t1) > tol or abs(float(g[-1]) - t0) > 1e-9 * max(1.0, abs(t0)):
            raise ValueError(
                f"grid must span [t_end, t_start] = [{t0!r}, {t1!r}] (from t_start down to t_end), got "
                f"[{float(g[-1])!r}, {float(g[0])!r}]"
            )
        if solver is None:
            solver = "rk4"
    elif solver is None:
        solver = "dopri5"
    s = get(solver)
    if s.adaptive:
        if grid is not None:
            raise ValueError(
                f"solver={s.name!r} chooses its own steps; with grid= use a fixed-step solver: euler, heun, "
                "midpoint, rk4"
            )
        return s, None
    if getattr(s, "tableau", None) is None:
        raise ValueError(
            f"solver={getattr(s, 'name', solver)!r} cannot integrate the log-density; use 'dopri5' "
            "(adaptive) "
            "or a Runge-Kutta solver on a grid: 'euler', 'heun', 'midpoint', 'rk4'"
        )
    if grid is None:
        raise ValueError(
            f"solver={s.name!r} is fixed-step: give grid= (pfode.grid(path, steps)) spanning [t_end, t_start]"
        )
    return s, g


def _probes(x, k, noise, generator):
    shape = (k, *x.shape)
    dev = generator.device if generator is not None else torch.device("cpu")
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if noise == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=dev).to(dt) * 2.0 - 1.0
    else:
        v = torch.randn(shape, generator=generator, device=dev, dtype=dt)
    return v.to(device=x.device, dtype=x.dtype)


def log_likelihood(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    solver: str | Solver | None = None,
    grid=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    max_evals: int = 100_000,
    control: str = "sample",
    h0: float = 0.05,
) -> LikelihoodOutput:
    """Per-sample ``log p_{t_min}(x)`` in nats under the PF-ODE of ``denoiser``.

    Args:
        denoiser: a :class:`pfode.Denoiser` (any path, prediction type, tensor shape).
        x: ``[B, ...]`` states at ``t_min`` (data slightly noised to ``t_min``; use ``t_min`` near the
            path's zero-noise end).
        solver: ``"dopri5"`` (default without a grid): Dormand-Prince 5(4) in ``theta``, adaptive, with
            ``rtol``/``atol`` on the state and (exact divergence) the log-density; or a Runge-Kutta
            solver ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"`` (default with a grid) stepping in
            ``theta`` between the grid's times.
        grid: a decreasing time grid from ``t_max`` to ``t_min`` (e.g. ``pfode.grid(path, n)``) for
            fixed-step solvers; it must span exactly ``[t_min, t_max]``.
        divergence: ``"exact"`` (one vector-Jacobian product per element) or ``"hutchinson"``.
        probes: Hutchinson probes per evaluation (the same ``probes`` vectors for the whole solve; the
            standard error is estimated from their spread). Ignored with the exact divergence.
        noise: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        prior: ``log p_{t_max}`` as a callable ``prior(x_T) -> [B]``. Default ``N(0, sigma(t_max)^2 I)``:
            the noise part of ``x_T = alpha x0 + sigma eps``; it ignores ``alpha(t_max) x0``, which costs
            about ``alpha_T^2 E|x0|^2 / (2 sigma_T^2)`` nats (negligible where ``alpha_T`` is tiny,
            ``(E|x0|^2 / sigma_max^2)/2`` on EDM/VE paths). Pass the exact marginal where it is known.
        generator: draws the Hutchinson probes.
        cond: keyword arguments for the network.
        t_start, t_end: the noise end (default ``t_max``) and the data end (default ``t_min``) of the
            integration, as in :func:`pfode.sample`; both need ``alpha, sigma > 0``.
        max_evals: stop ``dopri5`` with an error after this many evaluations.
        control: ``dopri5`` step control: ``"sample"`` (each sample accepts or rejects its steps on its own
            error; results do not depend on the batch) or ``"batch"`` (one step size for the batch from
            the RMS of the samples' errors, as torchdiffeq: fewer batched evaluations, batch-dependent).
        h0: first ``dopri5`` step in ``theta = atan(sigma/alpha)`` (which spans less than ``pi/2``).
    Returns:
        a :class:`LikelihoodOutput`.

    The state integrated is ``w = cos(theta) x / alpha`` (the trigonometric path's state at the same
    ``lam``) in the time ``theta = atan(sigma/alpha)`` (module docs); fixed grids are stepped between the
    ``theta`` of their times. With the exact divergence ``dopri5`` controls the log-density to ``atol``
    nats per dimension per step besides ``u`` to ``rtol``/``atol``.
    """
    check_denoiser(denoiser)
    _check_x(x)
    divergence = check_choice("divergence", divergence, DIVERGENCES)
    noise = check_choice("noise", noise, NOISES)
    check_int("probes", probes, 1)
    if prior is not None and not callable(prior):
        raise TypeError(f"prior must be a callable prior(x_T) -> [B] log-density, got {type(prior).__name__}")
    path = denoiser.path
    t0, t1 = _times(path, t_start, t_end)
    s, g = _resolve(path, solver, grid, t0, t1)
    control = check_choice("control", control, ("sample", "batch"))
    h0 = check_finite_float("h0", h0, 0.0, strict=True)
    rtol = check_finite_float("rtol", rtol, 0.0, strict=True)
    atol = check_finite_float("atol", atol, 0.0, strict=True)
    check_int("max_evals", max_evals, 1)

    d = x[0].numel()
    k = probes if divergence == "hutchinson" else 1
    z = _probes(x, k, noise, generator) if divergence == "hutchinson" else None
    counter = {"n": 0}

    def rhs(w, theta, e_):
        counter["n"] += 1
        if counter["n"] == 1:  # the first evaluation turns the network's shape errors into a ValueError
            return _first_eval(lambda: _rhs(w, theta, e_), "x", x)
        return _rhs(w, theta, e_)

    def _rhs(w, theta, _e):
        theta = theta.to(torch.float64)
        with torch.enable_grad():
            ww = w.detach().requires_grad_(True)
            v = trig_velocity(denoiser, ww, theta, cond)
            if divergence == "exact":
                div = exact_divergence(v, ww)[None]
            else:
                div = hutchinson_divergence(v, ww, z)
        return v.detach().to(w.dtype), div

    ode = PFODE(denoiser, "theta", cond)
    a0, a1 = float(path.alpha(t0)), float(path.alpha(t1))
    th0, th1 = ode.v_of_t(t0), ode.v_of_t(t1)
    c0, c1 = math.cos(th0), math.cos(th1)
    w = x.detach() * (c0 / a0)
    e = torch.zeros(k, x.shape[0], dtype=torch.float64, device=x.device)
    info: dict = {"t_start": t1, "t_end": t0, "solver": s.name}
    views = [batch_view(w), lambda h: h]
    if s.adaptive:
        e_scale = d if divergence == "exact" else None
        b = x.shape[0]

        state_norm = rms_norm(b, rtol, atol)

        def norm(u, new, err):  # the state's RMS norm, and the log-density to atol nats per dimension
            n = state_norm(u, new, err)
            return n if e_scale is None else torch.maximum(n, (err[1] / (atol * e_scale)).abs().amax(0))

        (w, e), dinfo = solve_adaptive(
            lambda u, th: rhs(u[0], th, u[1]), [w, e], th0, th1, error_norm=norm, views=views, tab=DOPRI5,
            h0=torch.full((b,), h0, dtype=torch.float64, device=x.device), controller=PIController(),
            control=control, max_step=abs(th1 - th0), max_evals=max_evals, what="the likelihood solve",
        )
        info.update(dinfo)
    else:
        ths = [ode.v_of_t(float(tt)) for tt in g.flip(0)]
        ths[0], ths[-1] = th0, th1
        for v0, v1 in zip(ths[:-1], ths[1:]):
            h = v1 - v0

            def f(ui, i, v0=v0, v1=v1, h=h):
                ci = s.tableau.c[i]
                vi = v0 if ci == 0.0 else (v1 if ci == 1.0 else v0 + ci * h)
                return rhs(ui[0], torch.full((x.shape[0],), vi, dtype=torch.float64, device=x.device), ui[1])

            (w, e), _ = drive(rk_stages(s.tableau, [w, e], [h, h]), f)
        info["steps"] = len(ths) - 1
    nfe = counter["n"]
    x_T = w * (a1 / c1)
    prior_fn = gaussian_prior(float(path.sigma(t1))) if prior is None else prior
    lp_prior = as_f64(prior_fn(x_T)).reshape(-1)
    if lp_prior.shape[0] != x.shape[0]:
        raise ValueError(f"prior returned shape {tuple(lp_prior.shape)}, expected [B] = [{x.shape[0]}]")
    lp_prior = lp_prior.to(x.device)
    # log p_x(x) = log p_w(w0) + d log(c0/a0);  log p_w(w0) = log p_w(w1) + int div_w v;
    # log p_w(w1) = log prior(x_T) + d log(a1/c1)
    per_probe = lp_prior[None] + d * (math.log(a1 / c1) + math.log(c0 / a0)) + e  # [K, B]
    logp = per_probe.mean(0)
    stderr = None
    if divergence == "hutchinson":
        if k > 1:
            stderr = per_probe.std(0, unbiased=True) / math.sqrt(k)
        else:
            stderr = torch.full_like(logp, math.nan)
        info["per_probe"] = per_probe
    return LikelihoodOutput(logp, stderr, nfe, x_T, lp_prior, info)


# -- bits per dimension -------------------------------------------------------------------------------
@dataclass
class BitsPerDimOutput:
    """What :func:`bits_per_dim` returns.

    Attributes:
        bpd: ``[B]`` upper bound on ``-log2 P(x) / d`` (bits per dimension) of the 8-bit data.
        bound: ``[B]`` the lower bound on ``log P(x)`` in nats it comes from.
        stderr: ``[B]`` Monte-Carlo standard error of ``bpd`` over dequantization samples (NaN for one
            sample).
        nfe: network evaluations spent in all solves.
        t_eval: the path time at which the ODE density was evaluated.
    """

    bpd: torch.Tensor
    bound: torch.Tensor
    stderr: torch.Tensor
    nfe: int
    t_eval: float


def _std_normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def truncated_normal(shape, tau: float, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Standard normal truncated to ``[-tau, tau]`` by inverse-CDF sampling (float64 internally)."""
    lo = _std_normal_cdf(-tau)
    hi = _std_normal_cdf(tau)
    dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=dev)
    p = lo + (hi - lo) * u
    z = math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
    return z.clamp(-tau, tau).to(device=device if device is not None else dev, dtype=dtype)


def truncated_normal_logpdf(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample log-density of i.i.d. standard normals truncated to ``[-tau, tau]`` (``[B]``)."""
    f = z.reshape(z.shape[0], -1).to(torch.float64)
    log_z = math.log(_std_normal_cdf(tau) - _std_normal_cdf(-tau))
    return -0.5 * (f * f).sum(1) - f.shape[1] * (0.5 * _LOG_2PI + log_z)


def bits_per_dim(
    denoiser: Denoiser,
    x_uint8: torch.Tensor,
    *,
    dequantization: str = "truncated-normal",
    tau: float = 3.0,
    samples: int = 1,
    importance_weighted: bool = False,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    **likelihood_options,
) -> BitsPerDimOutput:
    """Bits per dimension of 8-bit data (values ``0..255``) under the PF-ODE of ``denoiser``: an upper bound.

    Integer ``k`` corresponds to the model value ``c(k) = lo + k (hi - lo) / 255`` (``data_range = (lo, hi)``,
    default ``[-1, 1]``: ``k / 127.5 - 1``) and owns the bin of half-width ``delta = (hi - lo) / 510``
    around it; ``P(k) = int_bin p(v) dv`` where ``p`` is the model's data density. Every estimate is a
    variational dequantization bound ``log P(k) >= E_q[log p(v) - log q(v | k)]`` (Theis et al., 2016;
    Ho et al., 2019) with ``q`` supported on the bin, so ``bpd = -bound / (d ln 2)`` bounds the true value
    from above:

    * ``"uniform"``: ``v = c + delta u``, ``u ~ U[-1, 1]^d``, model density of ``v`` from the ODE at
      ``t_min``: ``p(v) = alpha_min^d p_{t_min}(alpha_min v)``; the bound is
      ``E[log p(v)] + d log(2 delta)``.
    * ``"truncated-normal"`` (Zheng et al., "Improved Techniques for Maximum Likelihood Estimation for
      Diffusion ODEs", ICML 2023): ``v = c + (sigma_e / alpha_e) eps`` with ``eps ~ N(0, I)`` truncated
      to ``[-tau, tau]``, at the time ``t_e`` where ``sigma_e / alpha_e = delta / tau`` so that ``q``
      fills the bin exactly; then ``alpha_e v = alpha_e c + sigma_e eps`` is the forward process's own
      noising of ``c`` (truncated), which the model was trained on, and
      ``p(v) = alpha_e^d p_{t_e}(alpha_e v)``.
      The bound is ``E[log p_{t_e}(alpha_e c + sigma_e eps)] + d log sigma_e + H(TN_tau)`` where ``H`` is the
      entropy of the truncated normal, ``d (log(sqrt(2 pi) Z) + 1/2 - tau phi(tau) / Z)``,
      ``Z = Phi(tau) - Phi(-tau)``. No training is needed; ``t_e`` must lie inside the path's range.

    With ``samples > 1`` the bound is averaged over dequantization draws, or with
    ``importance_weighted=True`` combined as ``log mean exp`` (the tighter importance-weighted bound
    of Burda et al.). ``log q`` is evaluated at each draw (not replaced by the entropy): where the model's
    density in the bin resembles ``q`` (discrete training data) ``log p - log q`` hardly varies.

    Args:
        denoiser: a :class:`pfode.Denoiser`.
        x_uint8: ``[B, ...]`` integer tensor with values in ``0..255``.
        dequantization: ``"truncated-normal"`` or ``"uniform"``.
        tau: truncation of the normal (``> 0``; Zheng et al. use a few standard deviations).
        samples: dequantization draws per data point.
        importance_weighted: combine the draws as an importance-weighted bound.
        data_range: the model values of ``0`` and ``255``.
        dtype: floating dtype the network sees.
        generator: draws the dequantization noise (and Hutchinson probes).
        likelihood_options: passed to :func:`log_likelihood` (``solver``, ``rtol``, ``divergence``, ...).
    Returns:
        a :class:`BitsPerDimOutput`.
    """
    check_denoiser(denoiser)
    if not isinstance(x_uint8, torch.Tensor):
        raise TypeError(f"x_uint8 must be a torch.Tensor of 8-bit values, got {type(x_uint8).__name__}")
    if x_uint8.is_floating_point() or x_uint8.is_complex() or x_uint8.dtype == torch.bool:
        raise TypeError(f"x_uint8 must be an integer tensor with values 0..255, got dtype {x_uint8.dtype}")
    if x_uint8.dim() < 2:
        raise ValueError(f"x_uint8 must have shape [B, ...], got {tuple(x_uint8.shape)}")
    if int(x_uint8.min()) < 0 or int(x_uint8.max()) > 255:
        raise ValueError("x_uint8 must hold values in 0..255")
    dequantization = check_choice("dequantization", dequantization, DEQUANTIZATIONS)
    tau = check_finite_float("tau", tau, 0.0, strict=True)
    check_int("samples", samples, 1)
    if "t_end" in likelihood_options:
        raise ValueError("bits_per_dim sets t_end itself (t_min of the path, or t_e for truncated-normal)")
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range={data_range!r} must be two finite numbers, low < high")
    path = denoiser.path
    delta = (hi - lo) / 510.0
    c = lo + x_uint8.to(torch.float64) * (2.0 * delta)
    d = c[0].numel()
    b = c.shape[0]
    if dequantization == "truncated-normal":
        lam_e = -math.log(delta / tau)
        t_e = float(path.t_of_lam(torch.tensor(lam_e, dtype=torch.float64)))
        if not (path.t_lo < t_e < path.t_hi) or abs(float(path.lam(t_e)) - lam_e) > 1e-6 * max(
            1.0, abs(lam_e)
        ):
            raise ValueError(
                "the truncated-normal dequantization needs the time where sigma/alpha = delta/tau = "
                f"{delta / tau:.3g}; {path!r} does not reach it"
            )
        t_eval = t_e
    else:
        t_eval = path.t_min
    a_e = float(path.alpha(t_eval))
    s_e = float(path.sigma(t_eval))
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    bounds = []
    nfe = 0
    for _ in range(samples):
        if dequantization == "uniform":
            u = torch.rand(c.shape, generator=generator, dtype=torch.float64, device=gen_dev).to(c.device)
            v = c + delta * (2.0 * u - 1.0)
            xe = (a_e * v).to(dtype)
            log_q = torch.full((b,), -d * math.log(2.0 * delta), dtype=torch.float64, device=c.device)
            extra = d * math.log(a_e)
        else:
            z = truncated_normal(c.shape, tau, generator=generator, device=c.device)
            xe = (a_e * c + s_e * z).to(dtype)
            # q(v) = TN(z) / s^d with s = sigma_e / alpha_e; p(v) = alpha_e^d p_e(alpha_e v)
            s_ratio = s_e / a_e
            log_q = truncated_normal_logpdf(z, tau) - d * math.log(s_ratio)
            extra = d * math.log(a_e)
        out = log_likelihood(denoiser, xe, t_end=t_eval, generator=generator, **likelihood_options)
        nfe += out.nfe
        bounds.append(out.logp + extra - log_q)
    w = torch.stack(bounds)  # [S, B]
    if importance_weighted and samples > 1:
        bound = torch.logsumexp(w, 0) - math.log(samples)
        stderr = torch.full((b,), math.nan, dtype=torch.float64)
    else:
        bound = w.mean(0)
        stderr = (
            (w.std(0) / math.sqrt(samples))
            if samples > 1
            else torch.full((b,), math.nan, dtype=torch.float64)
        )
    scale = 1.0 / (d * math.log(2.0))
    return BitsPerDimOutput(-bound * scale, bound, stderr * scale, nfe, float(t_eval))
