"""Denoising MCMC (Kim & Ye): MCMC over (data x noise level), then the PF-ODE from the level reached.

The chains target the joint density ``p(x, t) = r(t) p_t(x)`` on ``x`` and a set of noise levels ``t_1..t_K``
(``r``: a prior over the levels), by Denoising Langevin Gibbs (DLG) sweeps:

1. a Gibbs move in the noise level, ``t ~ p(t | x) = r(t) p_t(x) / sum_k r(t_k) p_{t_k}(x)``, from a *noise
   classifier* (the paper trains one; :func:`density_noise_classifier` builds the exact one from marginal
   log-densities, e.g. of a :mod:`pfode.analytic` target);
2. ``moves`` Langevin moves in ``x`` at the level drawn, with the score ``-eps_hat / sigma`` of the denoiser and
   Song et al.'s signal-to-noise step rule (:class:`pfode.solvers.Langevin`, one network evaluation each).

When the chain is stationary, ``x`` given its level ``t`` is distributed as ``p_t``, so integrating the PF-ODE
from ``t`` with any pfode solver gives a data sample; since the chain stays near the data manifold the levels
are moderate and the integration is short. After ``burn_in`` sweeps every ``thin``-th state is denoised, so one
chain yields ``samples`` (correlated) samples and its evaluations are shared among them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .._checks import as_f64, check_choice, check_finite_float, check_int, check_state
from ..grids import SPACINGS
from .base import get
from .correctors import Langevin, _check_point, langevin_move

__all__ = ["DenoisingMCMC", "DMCMCOutput", "density_noise_classifier"]


def density_noise_classifier(log_prob: Callable, levels: Sequence[float], prior=None) -> Callable:
    """The exact noise classifier ``x -> log p(t_k | x)`` (``[B, K]``) from marginal log-densities.

    Args:
        log_prob: ``log_prob(x, t) -> [B]``, the log-density of the marginal at path time ``t`` (e.g.
            ``lambda x, t: target.log_prob(x, t, path)`` for a :mod:`pfode.analytic` target).
        levels: the ``K`` path times.
        prior: ``[K]`` non-negative weights ``r(t_k)`` (default uniform).
    """
    times = as_f64(levels).flatten().tolist()
    k = len(times)
    if prior is None:
        log_r = torch.zeros(k, dtype=torch.float64)
    else:
        r = as_f64(prior).flatten()
        if r.numel() != k or not bool(torch.isfinite(r).all()) or bool((r < 0).any()) or float(r.sum()) <= 0:
            raise ValueError(f"prior must be {k} non-negative finite weights (one per level), got {r.tolist()}")
        log_r = torch.log(r / r.sum())

    def classify(x: torch.Tensor) -> torch.Tensor:
        lp = torch.stack([as_f64(log_prob(x, t)).reshape(-1) for t in times], dim=1) + log_r.to(x.device)
        return lp - torch.logsumexp(lp, dim=1, keepdim=True)

    return classify


@dataclass
class DMCMCOutput:
    """What :class:`DenoisingMCMC` returns.

    Attributes:
        x: the samples ``[S * B, ...]`` (``S`` per chain, iteration-major: row ``s * B + b`` is chain ``b``'s
            ``s``-th sample).
        levels: ``[S * B]`` path times the samples were denoised from.
        nfe_per_sample: network evaluations spent per sample: the chain's, shared among its samples, plus the
            PF-ODE's (``info`` splits them).
        info: ``nfe_chain`` (evaluations of one chain), ``nfe_ode`` (of one denoising), ``network_calls`` (batched
            calls in all), ``classifier_calls``, ``level_counts`` (samples per level).
    """

    x: torch.Tensor
    levels: torch.Tensor
    nfe_per_sample: float
    info: dict = field(default_factory=dict)


class DenoisingMCMC:
    """Denoising MCMC with Denoising Langevin Gibbs sweeps (see the module docs).

    Args:
        levels: the noise levels ``t_1..t_K`` (path times with ``alpha, sigma > 0``, above the ODE's end).
        noise_classifier: ``x [B, ...] -> [B, K]`` log-probabilities (or logits) of the levels given ``x``.
        solver: the PF-ODE solver that denoises the chain's states (name or object; any fixed-step solver).
        nfe: evaluations of each denoising (from the state's level to ``t_end``, with the final denoising step).
        snr: the Langevin moves' signal-to-noise ratio.
        norms: the step rule's norms (:class:`pfode.solvers.Langevin`); ``"batch"`` averages them over the chains
            at the same level.
        moves: Langevin moves per sweep (network evaluations).
        burn_in: sweeps before the first sample is taken.
        thin: sweeps between samples of a chain.
        spacing: the denoising grids' spacing.
        t_end: where the denoising grids end (default the path's ``t_min``).
    """

    name = "dmcmc"
    paper = "Kim & Ye, Denoising MCMC for Accelerating Diffusion-Based Generative Models, ICML 2023"
    stochastic = True
    adaptive = False

    def __init__(self, levels, noise_classifier: Callable, *, solver="dpm++2m", nfe: int = 6, snr: float = 0.16,
                 moves: int = 1, burn_in: int = 20, thin: int = 1, spacing: str = "logsnr",
                 t_end: float | None = None, norms: str = "batch"):
        lv = as_f64(levels).detach().cpu().flatten()
        if lv.numel() < 1 or not bool(torch.isfinite(lv).all()):
            raise ValueError(f"levels must be one or more finite path times, got {lv.tolist()}")
        self.levels = lv
        if not callable(noise_classifier):
            raise TypeError(f"noise_classifier must be callable as classifier(x) -> [B, K], got {noise_classifier!r}")
        self.noise_classifier = noise_classifier
        self.solver = get(solver)
        if self.solver.adaptive:
            raise ValueError(f"solver {self.solver.name!r} is adaptive; DMCMC denoises with a fixed nfe budget")
        self.nfe = check_int("nfe", nfe, 1)
        self.langevin = Langevin(snr, norms)
        self.moves = check_int("moves", moves, 1)
        self.burn_in = check_int("burn_in", burn_in, 0)
        self.thin = check_int("thin", thin, 1)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.t_end = None if t_end is None else check_finite_float("t_end", t_end)

    def describe(self) -> dict:
        return {"name": self.name, "paper": self.paper, "stochastic": True, "levels": self.levels.tolist(),
                "moves": self.moves, "nfe": self.nfe, "solver": self.solver.name}

    def __repr__(self):
        return f"DenoisingMCMC(K={self.levels.numel()}, solver={self.solver.name!r}, nfe={self.nfe})"

    def _coefficients(self, path):
        lv = self.levels
        t_end = path.t_min if self.t_end is None else self.t_end
        a, s = path.alpha(lv), path.sigma(lv)
        for t, ai, si in zip(lv.tolist(), a.tolist(), s.tolist()):
            if not (path.t_lo <= t <= path.t_hi):
                raise ValueError(f"level t={t:g} lies outside the range [{path.t_lo:g}, {path.t_hi:g}] of {path!r}")
            _check_point(self.langevin, path, t, ai, si)
            if t <= t_end:
                raise ValueError(f"level t={t:g} must lie above the denoising grids' end t_end={t_end:g}")
        return a, s

    def __call__(self, den, x: torch.Tensor, samples: int = 1, *, generator: torch.Generator | None = None,
                 cond: dict | None = None) -> DMCMCOutput:
        """Run ``B`` chains from ``x [B, ...]`` (any start, e.g. ``sigma(t_max) * randn``) and return ``samples``
        denoised samples per chain (a :class:`DMCMCOutput`)."""
        from ..sample import PerSampleNoise, sample

        check_state("x", x)
        check_int("samples", samples, 1)
        _, sigma = self._coefficients(den.path)
        K, B = self.levels.numel(), x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        dev = x.device
        lv, sigma = self.levels.to(dev), sigma.to(dev)
        noise = PerSampleNoise(x, generator)
        work = torch.promote_types(x.dtype, torch.float32)
        sweeps = self.burn_in + (samples - 1) * self.thin + 1
        kept_x, kept_k = [], []
        calls = 0
        for it in range(sweeps):
            # Gibbs move in the level: inverse-CDF draw from the classifier's p(t | x), a per-sample uniform
            logits = self.noise_classifier(x)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (B, K):
                raise ValueError(
                    f"noise_classifier(x) must return a [B, K] = [{B}, {K}] tensor, got "
                    f"{getattr(logits, 'shape', type(logits).__name__)}"
                )
            cdf = torch.softmax(as_f64(logits).to(dev), dim=1).cumsum(1)
            u = 0.5 * (1.0 + torch.erf(as_f64(noise()).reshape(B, -1)[:, :1] / math.sqrt(2.0)))
            k = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_max(K - 1).flatten()
            t, s = lv[k], sigma[k].reshape(view).to(work)
            # Langevin moves in x at the level drawn
            for _ in range(self.moves):
                _, eps = den.pair_at(x, t, cond)
                x = langevin_move(x, eps, s, 1.0, self.langevin.snr, noise(), norms=self.langevin.norms, groups=k)
                calls += 1
            if it >= self.burn_in and (it - self.burn_in) % self.thin == 0:
                kept_x.append(x)
                kept_k.append(k)
        states, idx = torch.cat(kept_x), torch.cat(kept_k)
        out = torch.empty_like(states)
        counts = {}
        ode_calls = 0
        for j in torch.unique(idx).tolist():
            sel = idx == j
            res = sample(den, states[sel], nfe=self.nfe, solver=self.solver, spacing=self.spacing,
                         t_start=float(self.levels[j]), t_end=self.t_end, generator=generator, cond=cond,
                         return_info=True)
            out[sel] = res.x
            ode_calls += res.nfe
            counts[float(self.levels[j])] = int(sel.sum())
        chain = sweeps * self.moves
        info = {"nfe_chain": chain, "nfe_ode": self.nfe, "network_calls": calls + ode_calls,
                "classifier_calls": sweeps, "level_counts": counts, "sweeps": sweeps}
        return DMCMCOutput(out, lv[idx], chain / samples + self.nfe, info)
