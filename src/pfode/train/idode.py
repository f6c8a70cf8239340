"""Likelihood training of diffusion ODEs: i-DODE (Zheng, Lu, Chen & Zhu, ICML 2023).

Likelihood weighting
    The diffusion part of the bound on ``-log p`` of a score model (Song et al., 2021, "Maximum likelihood
    training of score-based diffusion models", Thm. 1) is ``J = int (g^2 / 2) E|s_theta - grad log p_0t|^2 dt``.
    With ``s = -eps / sigma``, ``g^2 = -2 sigma^2 dlam/dt`` and ``|eps_hat - eps|^2 = SNR |x0_hat - x0|^2`` the
    weight on the **x0-space** error per unit ``t`` is

        w_lik(t) = SNR(t) * (-dlam/dt),     so that     J = int_{lam(t1)}^{lam(t0)} E|eps_hat - eps|^2 dlam

    (:func:`likelihood_weight`; uniform in ``lam`` on the eps error: the bound does not depend on how the path
    labels its time). A network of prediction type ``p`` sees the factor ``w_lik / k_p`` on its own squared
    error (``k_p`` of :func:`pfode.train.losses.error_scale`).

Velocity parameterization and importance-sampled times (i-DODE, Sec. 3.1 and 3.3)
    The network predicts the velocity of the path: ``"v"`` (``alpha eps - sigma x0``, ``dx/dtheta`` of the
    trigonometric path with the same ``lam``: i-DODE's parameterization on VP) or ``"velocity"``
    (``alpha' x0 + sigma' eps``, i-DODE's on the straight path). Times are drawn from ``q(t)`` proportional to
    the weight on the network's own error, ``w_lik / k``, so that each sample's factor ``w_lik / (k q)`` is the
    constant ``Z = int w_lik / k dt`` (the variance reduction: the loss is a plain MSE on the velocity). In
    ``lam`` that density is ``SNR / k`` (``alpha^2`` for ``v`` on VP, i-DODE's proposal; uniform for eps).
    :class:`LikelihoodTimeSampler` builds ``q`` for any path and prediction as a piecewise-constant density
    on 4096 cells in ``lam`` (inverted exactly; the factor uses the density actually sampled, so the
    estimate is unbiased whatever the resolution). ``"uniform-t"`` and ``"uniform-lambda"`` keep the same
    likelihood weighting without the importance sampling.

Error-bounded high-order flow matching (i-DODE, Sec. 3.2; second order as Lu et al., 2022)
    The second-order Tweedie identity ``Cov[eps | x_t] = I - sigma grad_x eps_hat`` gives, on the trace,
    ``sigma div_x eps_hat(x_t) = d - E[|eps - eps_hat|^2 | x_t]``. Its residual on one sample,

        r = sigma div_x eps_hat - (d - sg(|eps - eps_hat|^2))        (sg: stop-gradient),

    is regressed to zero with the likelihood weight in eps space, ``w_lik / (SNR q)``, and the factor
    ``second_order`` (i-DODE fine-tunes with 0.1): per sample the loss adds
    ``second_order * w_lik / (SNR q) * r^2 / d^2`` to the first-order ``w_lik / (k q) * |out - target|^2 / d``
    (the two in i-DODE's relative scale; for ``v`` on VP, ``r = alpha (sigma div F - alpha (d - |F - F*|^2))``
    with ``F`` the velocity output, i-DODE's residual). The divergence is exact on small samples
    (``divergence="auto"``: at most 16 elements) and Hutchinson's estimate with Rademacher probes otherwise.
    At the exact denoiser the expected residual vanishes for every ``x_t`` (the minimiser of the squared
    residual is the conditional mean), so the exact model minimises both terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..paths import Path, get_path
from ..predictions import PREDICTIONS, Coeffs, from_x0_eps, to_x0_eps
from .couplings import Coupling
from .losses import DenoisingScoreMatching, TimeSampler, error_scale, metric

__all__ = [
    "TIME_SAMPLINGS",
    "likelihood_weight",
    "LikelihoodTimeSampler",
    "LikelihoodDSM",
    "Reparameterized",
    "divergence",
]

TIME_SAMPLINGS = ("importance", "uniform-t", "uniform-lambda")
DIVERGENCE_MODES = ("auto", "exact", "hutchinson")
#: samples with at most this many elements get the exact divergence under ``divergence="auto"``
EXACT_MAX = 16


def likelihood_weight(path: Path, t) -> torch.Tensor:
    """``w_lik(t) = SNR(t) (-dlam/dt)``: the likelihood weight on ``|x0_hat - x0|^2`` per unit ``t`` (float64).

    From Song et al. (2021), Thm. 1: ``(g^2 / 2) |s_theta - s|^2 = w_lik |x0_hat - x0|^2``.
    """
    t = as_f64(t)
    return torch.exp(2.0 * path.lam(t)) * (-path.d_lam(t))


def _coeffs(path: Path, t: torch.Tensor) -> Coeffs:
    return Coeffs.at(path, as_f64(t))


def _snr_over_k(path: Path, prediction: str, t: torch.Tensor) -> torch.Tensor:
    """``SNR / k``: the density in ``lam`` proportional to the weight on the ``prediction`` error."""
    c = _coeffs(path, t)
    return torch.exp(2.0 * path.lam(t)) / error_scale(prediction, c)


class LikelihoodTimeSampler(TimeSampler):
    """Training times for the likelihood weighting, and each time's factor ``w_lik / (k q)`` (float64).

    Args:
        path: the path (name or :class:`~pfode.paths.Path`).
        prediction: the network's prediction type (sets ``k`` and the importance proposal).
        mode: ``"importance"`` (``q`` proportional to ``w_lik / k``, i-DODE), ``"uniform-t"`` or
            ``"uniform-lambda"``.
        t_range: ``(t0, t1)`` with finite ``lam`` at both ends (the likelihood weight integrates to
            ``lam(t0) - lam(t1)`` on the eps error: the data end must keep some noise); default
            ``(path.t_min, path.t_max)``.
        cells: cells of the piecewise-constant importance density in ``lam``.

    ``density(t)`` is the density in ``t`` of the draws; ``factor(t)`` the per-sample factor on the mean
    squared error of the network's output, so ``E_q[factor(t) h(t)] = int w_lik / k h dt`` for any ``h``.
    """

    def __init__(
        self,
        path: Path | str = "vp",
        prediction: str = "v",
        mode: str = "importance",
        t_range: tuple[float, float] | None = None,
        cells: int = 4096,
    ):
        self.path = get_path(path)
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        self.name = self.mode = check_choice("time_sampling", mode, TIME_SAMPLINGS)
        self.cells = check_int("cells", cells, 8)
        t0, t1 = t_range if t_range is not None else (self.path.t_min, self.path.t_max)
        t0, t1 = check_finite_float("t_range[0]", float(t0)), check_finite_float("t_range[1]", float(t1))
        if not t0 < t1:
            raise ValueError(f"t_range={(t0, t1)!r}: need t0 < t1")
        if not (self.path.t_lo <= t0 and t1 <= self.path.t_hi):
            raise ValueError(f"t_range={(t0, t1)!r} lies outside [{self.path.t_lo}, {self.path.t_hi}] of {self.path!r}")
        lam0, lam1 = float(self.path.lam(t0)), float(self.path.lam(t1))
        if not (math.isfinite(lam0) and math.isfinite(lam1)):
            raise ValueError(
                f"t_range={(t0, t1)!r}: the likelihood weighting needs a finite log-SNR at both ends (got lam = "
                f"{lam0}, {lam1}); start above zero noise and stop below pure noise (e.g. the path's t_min, t_max)"
            )
        self.t_range = (t0, t1)
        self.lam_range = (lam1, lam0)  # increasing
        if self.mode == "importance":
            lam = torch.linspace(lam1, lam0, self.cells + 1, dtype=torch.float64)
            h = _snr_over_k(self.path, self.prediction, self.path.t_of_lam(lam))
            if not bool(torch.isfinite(h).all() & (h > 0).all()):
                raise ValueError(f"the weight of prediction={prediction!r} is not finite and positive on {t_range}")
            mass = 0.5 * (h[1:] + h[:-1]) * (lam[1:] - lam[:-1])
            self._edges = lam
            self._mass = mass / mass.sum()
            self._cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self._mass, 0)])
            self._cdf[-1] = 1.0

    # -- density in lam and in t ----------------------------------------------------------------
    def density_lam(self, lam) -> torch.Tensor:
        """Density of the draws in ``lam`` (float64, 0 outside the range)."""
        lam = as_f64(lam)
        lo, hi = self.lam_range
        inside = (lam >= lo) & (lam <= hi)
        if self.mode == "uniform-lambda":
            q = torch.full_like(lam, 1.0 / (hi - lo))
        elif self.mode == "uniform-t":
            t = self.path.t_of_lam(lam.clamp(lo, hi))
            q = (-1.0 / self.path.d_lam(t)) / (self.t_range[1] - self.t_range[0])
        else:
            width = (hi - lo) / self.cells
            i = ((lam - lo) / width).floor().clamp(0, self.cells - 1).long()
            q = self._mass[i.cpu()].to(lam.device) / width
        return torch.where(inside, q, torch.zeros_like(q))

    def density(self, t) -> torch.Tensor:
        """Density of the draws in path time ``t`` (float64, 0 outside ``t_range``)."""
        t = as_f64(t)
        inside = (t >= self.t_range[0]) & (t <= self.t_range[1])
        if self.mode == "uniform-t":
            q = torch.full_like(t, 1.0 / (self.t_range[1] - self.t_range[0]))
        else:
            tc = t.clamp(*self.t_range)
            q = self.density_lam(self.path.lam(tc).clamp(*self.lam_range)) * (-self.path.d_lam(tc))
        return torch.where(inside, q, torch.zeros_like(q))

    def factor(self, t) -> torch.Tensor:
        """``w_lik(t) / (k(t) q(t))``: the factor on the mean squared output error (float64)."""
        t = as_f64(t)
        lam = self.path.lam(t).clamp(*self.lam_range)
        return _snr_over_k(self.path, self.prediction, t) / self.density_lam(lam)

    def eps_factor(self, t) -> torch.Tensor:
        """``w_lik(t) / (SNR(t) q(t))``: the same weight on the eps-space error (float64)."""
        t = as_f64(t)
        return 1.0 / self.density_lam(self.path.lam(t).clamp(*self.lam_range))

    # -- draws -----------------------------------------------------------------------------------
    def unit(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise ValueError("the likelihood time sampler draws times, not a unit variable")

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        check_int("n", n, 1)
        r = torch.rand(n, generator=generator, dtype=torch.float64)
        t0, t1 = self.t_range
        if self.mode == "uniform-t":
            return t0 + (t1 - t0) * r
        lo, hi = self.lam_range
        if self.mode == "uniform-lambda":
            lam = lo + (hi - lo) * r
        else:
            i = (torch.searchsorted(self._cdf, r, right=True) - 1).clamp(0, self.cells - 1)
            frac = (r - self._cdf[i]) / self._mass[i].clamp_min(1e-300)
            lam = self._edges[i] + frac.clamp(0, 1) * (self._edges[i + 1] - self._edges[i])
        return self.path.t_of_lam(lam).clamp(t0, t1)

    def spec(self) -> dict:
        return {"name": "likelihood", "mode": self.mode, "prediction": self.prediction, "t_range": list(self.t_range)}


# --- divergence ----------------------------------------------------------------------------------
def divergence(
    out: torch.Tensor,
    inp: torch.Tensor,
    mode: str = "auto",
    probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """``div_inp out`` per sample ``[B]`` (in ``out``'s dtype), differentiable when ``create_graph``.

    ``"exact"``: one vector-Jacobian product per element; ``"hutchinson"``: ``mean_k z_k^T (d out / d inp) z_k``
    with ``probes`` Rademacher vectors (unbiased); ``"auto"``: exact up to :data:`EXACT_MAX` elements a sample.
    Samples must not interact inside the network.
    """
    check_choice("divergence", mode, DIVERGENCE_MODES)
    check_int("probes", probes, 1)
    b, d = inp.shape[0], inp[0].numel()
    if mode == "auto":
        mode = "exact" if d <= EXACT_MAX else "hutchinson"
    of = out.reshape(b, -1)
    if mode == "exact":
        total = torch.zeros(b, dtype=out.dtype, device=out.device)
        for i in range(d):
            (g,) = torch.autograd.grad(of[:, i].sum(), inp, create_graph=create_graph, retain_graph=True)
            total = total + g.reshape(b, -1)[:, i]
        return total
    total = torch.zeros(b, dtype=out.dtype, device=out.device)
    for _ in range(probes):
        z = torch.randint(0, 2, inp.shape, generator=generator, dtype=torch.int64).to(inp.device, out.dtype) * 2 - 1
        (g,) = torch.autograd.grad((out * z).sum(), inp, create_graph=create_graph, retain_graph=True)
        total = total + (g * z).reshape(b, -1).sum(1)
    return total / probes


# --- the objective -------------------------------------------------------------------------------
class LikelihoodDSM(DenoisingScoreMatching):
    """i-DODE training: likelihood weighting, velocity parameterization, importance-sampled times and the
    optional second-order (high-order flow matching) term; registered as objective ``"idode"``.

    Args:
        path: any :class:`~pfode.paths.Path` (name or object).
        prediction: ``"v"`` (default: i-DODE's velocity on VP-type paths), ``"velocity"`` (the path's own
            ``dx/dt``; i-DODE's on the straight path) or any other prediction type (the weighting is the
            same objective for every type; only the importance proposal changes).
        time_sampling: ``"importance"``, ``"uniform-t"`` or ``"uniform-lambda"`` (:class:`LikelihoodTimeSampler`).
        second_order: weight of the second-order residual (0 = first order only; i-DODE fine-tunes with 0.1).
        divergence: ``"auto"``, ``"exact"`` or ``"hutchinson"`` for the second-order term; ``probes``: its
            Rademacher probes.
        t_range, time_input, coupling, cells: as :class:`~pfode.train.losses.DenoisingScoreMatching` and
            :class:`LikelihoodTimeSampler`.

    ``loss`` returns per-sample ``factor * mean((out - target)^2) + second_order * eps_factor * r^2 / d^2``:
    in expectation ``(J + second-order term) / d`` in nats per element (``J`` of the module docstring, up to
    the constant that does not depend on the network).
    """

    name = "idode"

    def __init__(
        self,
        path: Path | str = "vp",
        prediction: str = "v",
        time_sampling: str = "importance",
        second_order: float = 0.0,
        divergence: str = "auto",
        probes: int = 1,
        t_range: tuple[float, float] | None = None,
        time_input: str | Callable = "t",
        coupling: str | Coupling = "independent",
        cells: int = 4096,
    ):
        p = get_path(path)
        sampler = LikelihoodTimeSampler(p, prediction, time_sampling, t_range, cells)
        super().__init__(p, prediction, "native", sampler, time_input, coupling, "l2")
        self.time_sampling = time_sampling
        self.second_order = check_finite_float("second_order", second_order, 0.0)
        self.divergence = check_choice("divergence", divergence, DIVERGENCE_MODES)
        self.probes = check_int("probes", probes, 1)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample factor ``w_lik / (k q)`` on ``|out - target|^2`` (float64 ``[B]``)."""
        return self.time_sampler.factor(t)

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        if self.second_order == 0.0:
            return super().loss(model, batch, step=step, target_model=target_model)
        x0, eps, t = batch["x0"], batch["eps"], batch["t"]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        den = self.denoiser(model)
        with torch.enable_grad():
            x_t, target = self.target(x0, eps, t)
            x_t = x_t.detach().requires_grad_(True)
            c = self.coeffs(t, x_t)
            out = den.raw(x_t, den.time_tensor(t.to(x0.device), x_t))
            _, eps_hat = to_x0_eps(self.prediction, out, x_t, c)
            div = divergence(eps_hat.float(), x_t, self.divergence, self.probes)
        d = x0[0].numel()
        scale = self.weight(t).to(device=x0.device, dtype=torch.float32)
        err = (out.float() - target.float()) * scale.sqrt().reshape(shape)
        first = metric("l2", err)
        mse_eps = (eps.float() - eps_hat.float()).reshape(x0.shape[0], -1).pow(2).sum(1).detach()
        sig = as_f64(self.path.sigma(as_f64(t))).to(device=x0.device, dtype=torch.float32)
        r = sig * div - (d - mse_eps)
        second = self.time_sampler.eps_factor(t).to(device=x0.device, dtype=torch.float32) * r.pow(2) / (d * d)
        per = first + self.second_order * second
        return per.mean(), per

    def spec(self) -> dict:
        out = super().spec()
        out.update(
            time_sampling=self.time_sampling,
            second_order=self.second_order,
            divergence=self.divergence,
            probes=self.probes,
        )
        return out


class Reparameterized(nn.Module):
    """A network of one prediction type presented as another (e.g. a trained eps network fine-tuned in the
    velocity parameterization): ``out' = from_x0_eps(target, to_x0_eps(source, net(x, t), x))``.

    Args:
        net: ``net(x, t, **cond)``; ``path``: its path; ``source``/``target``: prediction types. The network's
            time input must be path time ``t``.
    """

    def __init__(self, net: nn.Module, path: Path | str, source: str, target: str):
        super().__init__()
        self.net = net
        self.path = get_path(path)
        self.source = check_choice("source", source, PREDICTIONS)
        self.target = check_choice("target", target, PREDICTIONS)

    def forward(self, x, t, **cond):
        c = Coeffs.at(self.path, as_f64(t).to(x.device), like=x)
        x0, eps = to_x0_eps(self.source, self.net(x, t, **cond), x, c)
        return from_x0_eps(self.target, x0, eps, c)
