"""The approximation-free ensemble sampler: weighted interacting particles that follow the posterior along the
diffusion.

Chen, Ren, Min, Ying & Izzo, "Solving Inverse Problems via Diffusion-Based Priors: An Approximation-Free Ensemble
Sampling Approach" (2025, arXiv:2506.03979). The prior's reverse diffusion (generation time ``tau``, from noise to
data) moves the marginals ``p_tau`` by the Fokker-Planck equation of

    dX = b(X, tau) dtau + sqrt(2 D) dW,    b = -f x + g^2 grad log p_t,    D = g^2 / 2      (f, g of the path).

Tilt every marginal by a likelihood-like factor, ``q_tau = p_tau exp(-phi_tau) / Z_tau`` with ``exp(-phi)`` equal to
the measurement likelihood ``p(y | x)`` at the data end. Substituting ``p = Z q exp(phi)`` in the Fokker-Planck
equation gives, with no approximation, the PDE of ``q``:

    d q / d tau = -div((b - 2 D grad phi) q) + D lap q + (R - E_q[R]) q,
    R = -b . grad phi - D lap phi + D |grad phi|^2 - d phi / d tau,

a *modified drift* (the score plus ``-grad phi``: a guided reverse SDE) and a *reweighting* (birth-death) term.
Simulating it with weighted particles -- move by the guided SDE, multiply weights by ``exp(R dtau)``, resample when
the effective sample size drops -- samples the posterior with an error set only by the score's error, the number of
particles and the time step; ``Z`` accumulates to the evidence ``p(y)`` (``E_q[R]`` is ``d log Z / d tau``).

Choices made here (the paper leaves them to the user; none biases the limit, which the reweighting corrects):

* ``phi_t(x) = ||y - A(c_t x)||^2 / (2 r_t^2) + (m / 2) log(2 pi r_t^2)`` with ``c_t = alpha v / (alpha^2 v +
  sigma^2)`` and ``r_t^2 = noise^2 + kappa v sigma^2 / (alpha^2 v + sigma^2)``: the measurement likelihood of
  ``E[x_0 | x_t]`` and its variance for a prior of variance ``v`` per coordinate (``prior_var``, default 1; ``kappa``
  defaults to ``||A||_2^2``) -- flat at ``t_max``, the true likelihood at ``t_min`` up to the noise left there. A
  noise-free measurement (``noise = 0``) uses ``min_noise`` as its width.
* Time stepping: the guided SDE moves by the exponential-integrator (DDPM-ancestral, DDIM ``eta = 1``) step with
  ``eps_hat + sigma grad phi`` in place of ``eps_hat``; in ``R dtau`` the transport terms
  ``-(b . grad phi + d phi / d tau) dtau`` are taken as the change of ``phi`` along the *unguided* step's mean,
  ``phi_t(x) - phi_{t'}(mean)`` (first-order consistent, and stable where ``alpha -> 0``), and ``D dtau`` is half the
  step's added variance. ``lap phi`` is exact for a linear operator (``c^2 ||A||_F^2 / r^2``) and a one-probe
  Hutchinson estimate otherwise.
* Resampling: systematic (or multinomial) within each ensemble when its effective sample size falls below
  ``ess`` times its size, and once at the end, so that the returned particles are equally weighted.

The ensemble of a measurement is the set of samples that share it (equal rows of ``y``): give one ``y`` with
``n=N`` for an ``N``-particle ensemble; or set ``particles=K`` to give every sample its own ``K``-particle ensemble
(``K`` times the evaluations, counted). ``nfe`` evaluations per particle: ``nfe - 1`` SDE steps on a grid from
``t_max`` to ``t_min`` and the final ``x0_hat``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_finite_float, check_int
from .base import register
from .flowchef import coefficients, data_grad, grid_times, lipschitz

__all__ = ["ensemble"]


def _group_lse(v: torch.Tensor, inv: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``logsumexp`` of ``v [B]`` within the groups ``inv [B]`` -> ``[G]``."""
    mx = torch.full((n_groups,), -math.inf, dtype=v.dtype).scatter_reduce(0, inv, v, "amax", include_self=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    tot = torch.zeros(n_groups, dtype=v.dtype).index_add_(0, inv, (v - mx[inv]).exp())
    return mx + tot.log()


def _resample(w: torch.Tensor, how: str, generator) -> torch.Tensor:
    """Indices ``[n]`` drawn by normalised weights ``w [n]``."""
    n = w.shape[0]
    if how == "multinomial":
        return torch.multinomial(w, n, replacement=True, generator=generator)
    u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp_max(n - 1)


def ensemble(
    ev,
    y,
    operator,
    *,
    nfe,
    x_T,
    generator=None,
    spacing: str = "logsnr",
    kappa: float | None = None,
    min_noise: float = 0.05,
    ess: float = 0.5,
    resample: str = "systematic",
    reweight: bool = True,
    particles: int = 1,
    prior_var: float = 1.0,
):
    """The approximation-free ensemble sampler (Chen et al. 2025); see the module docs for the scheme.

    Args (beyond the method contract of :mod:`pfode.inverse.base`):
        spacing: grid spacing of the ``nfe - 1`` SDE steps.
        kappa: weight of the state's noise in the likelihood width ``r_t^2 = noise^2 + kappa s_t^2`` (default
            ``||A||_2^2``, or 1 for a nonlinear operator); ``>= 0``.
        min_noise: likelihood width used when the operator's ``noise`` is 0 (``> 0``).
        ess: resample an ensemble when its effective sample size is below ``ess`` times its size, in ``(0, 1]``.
        resample: ``"systematic"`` or ``"multinomial"``.
        reweight: ``False`` drops the reweighting term (the guided SDE alone: biased; for comparison).
        particles: particles per sample (each sample its own ensemble, ``>= 1``).
        prior_var: the data's variance per coordinate ``v`` in the tilt ``phi`` (``> 0``; any value is exact in
            the limit, a fair one keeps the weights even).
    Returns:
        ``x [B, *shape]`` (equally weighted posterior draws) and ``info`` with ``log_evidence`` (``[G]``, one per
        ensemble: the estimate of ``log p(y)``), ``resamples`` (how many times any ensemble was resampled),
        ``min_ess`` (the smallest relative effective sample size seen) and ``groups`` (the ensemble of each sample).
    """
    if nfe < 2:
        raise ValueError(f"nfe={nfe} is too small: the ensemble sampler needs nfe >= 2 (steps plus the final x0_hat)")
    resample = check_choice("resample", resample, ("systematic", "multinomial"))
    ess = check_finite_float("ess", ess, 0.0, strict=True)
    if ess > 1.0:
        raise ValueError(f"ess={ess!r} must be in (0, 1]")
    min_noise = check_finite_float("min_noise", min_noise, 0.0, strict=True)
    particles = check_int("particles", particles, 1)
    if kappa is None:
        kappa = lipschitz(operator) or 1.0
    kappa = check_finite_float("kappa", kappa, 0.0)
    v = check_finite_float("prior_var", prior_var, 0.0, strict=True)
    spacing = check_choice("spacing", spacing, ("logsnr", "uniform", "karras", "quadratic"))
    path = ev.path
    b0 = x_T.shape[0]
    if particles > 1:
        x_T = torch.cat([x_T, x_T.new_zeros((b0 * (particles - 1), *x_T.shape[1:]))])
        sig = float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64)))
        extra = sig * torch.randn((b0 * (particles - 1), *x_T.shape[1:]), generator=generator, dtype=x_T.dtype)
        x_T[b0:] = extra.to(x_T.device)
        y = y.repeat(particles, 1)
        inv = torch.arange(b0).repeat(particles)
        n_groups = b0
    else:
        _, inv = torch.unique(y.detach().cpu(), dim=0, return_inverse=True)
        n_groups = int(inv.max()) + 1
    sizes = torch.bincount(inv, minlength=n_groups)
    noise = operator.noise if operator.noise > 0 else min_noise
    m = y.shape[1]
    fro2 = float((operator.matrix() ** 2).sum()) if operator.linear else None

    def phi(x, a, r2):
        res = operator.forward(x * a) - y
        val = 0.5 * (res.double() ** 2).reshape(res.shape[0], -1).sum(1) / r2
        return val + 0.5 * m * math.log(2 * math.pi * r2)

    def lap_phi(x, a, r2):
        if fro2 is not None:
            return torch.full((x.shape[0],), fro2 * a * a / r2, dtype=torch.float64)
        z = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x.dtype)
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(phi(xx, a, r2).sum(), xx, create_graph=True)
            (hz,) = torch.autograd.grad((g * z).sum(), xx)
        return (hz * z).reshape(x.shape[0], -1).sum(1).double()

    def tilt(a, s):
        """``(c_t, r_t^2)`` of the tilt at ``alpha = a, sigma = s``."""
        return a * v / (a * a * v + s * s), noise**2 + kappa * v * s * s / (a * a * v + s * s)

    ts = grid_times(path, nfe, spacing)
    alphas, sigmas, lams = coefficients(path, ts)
    x = x_T
    a, s = alphas[0], sigmas[0]
    logw = -phi(x, *tilt(a, s)) if reweight else torch.zeros(x.shape[0], dtype=torch.float64)
    log_z = _group_lse(logw, inv, n_groups) - sizes.double().log()
    logw = logw - _group_lse(logw, inv, n_groups)[inv]  # normalised log-weights within each ensemble
    resamples, min_ess = 0, 1.0

    def maybe_resample(x, logw, force):
        nonlocal resamples, min_ess
        w = logw.exp()
        ess_g = 1.0 / torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, w * w) / sizes.double()
        min_ess = min(min_ess, float(ess_g.min()))
        for g in torch.nonzero((ess_g < ess) | torch.tensor(force)).flatten().tolist():
            idx = torch.nonzero(inv == g).flatten()
            if idx.numel() < 2:
                continue
            j = idx[_resample(w[idx] / w[idx].sum(), resample, generator)]
            x[idx] = x[j]
            logw[idx] = -math.log(idx.numel())
            resamples += 1
        return x, logw

    for k in range(len(ts) - 1):
        t, tn = ts[k], ts[k + 1]
        a, s, lam = alphas[k], sigmas[k], lams[k]
        an, sn, lamn = alphas[k + 1], sigmas[k + 1], lams[k + 1]
        (ct, r2), (ctn, r2n) = tilt(a, s), tilt(an, sn)
        x0, eps = ev.pair(x, t)
        gphi = data_grad(operator, x * ct, y) * (ct / r2)
        eps_m = eps + s * gphi
        x0_m = (x - s * eps_m) / a
        e = math.exp(-(lamn - lam))
        c = sn * math.sqrt(max(0.0, 1.0 - e * e))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_new = an * x0_m + sn * e * eps_m + c * z
        if reweight:
            mean = an * x0 + sn * e * eps
            grad2 = (gphi.double() ** 2).reshape(x.shape[0], -1).sum(1)
            inc = phi(x, ct, r2) - phi(mean, ctn, r2n) + 0.5 * c * c * (grad2 - lap_phi(x, ct, r2))
            step = _group_lse(logw + inc, inv, n_groups)
            log_z = log_z + step
            logw = logw + inc - step[inv]
            x_new, logw = maybe_resample(x_new.clone(), logw, False)
        x = x_new
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"ensemble: the particles became non-finite at t={tn:g}")
    if reweight:
        x, logw = maybe_resample(x.clone(), logw, True)
    x0, _ = ev.pair(x, ts[-1])
    if particles > 1:
        ev.nfe += (particles - 1) * len(ts)
        x0 = x0[:b0]
    info = {
        "log_evidence": log_z,
        "resamples": resamples,
        "min_ess": min_ess,
        "groups": inv[:b0],
        "particles": particles,
        "kappa": kappa,
        "times": ts,
    }
    return x0, info


register(
    "ensemble",
    ensemble,
    "Chen et al. 2025, Solving Inverse Problems via Diffusion-Based Priors: an "
    "Approximation-Free Ensemble Sampling Approach",
    "any",
)
