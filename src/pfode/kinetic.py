"""Kinetic energy of a Gaussian path and the kinetic-optimal (KO) Gaussian path.

Shaul, Chen, Nickel, Le & Lipman, "On Kinetic Optimal Probability Paths for Generative Models" (ICML 2023).

Kinetic energy
    For ``x_t = alpha(t) x0 + sigma(t) eps`` the marginal velocity is ``u_t(x) = alpha' E[x0|x] + sigma' E[eps|x]``
    and the kinetic energy is ``E = int E_{x ~ p_t} |u_t(x)|^2 dt``. It depends on how time is labelled, so
    here **time is the path's ``t`` mapped affinely onto [0, 1]** over ``t_range`` (default: the path's valid
    range ``[t_lo, t_hi]`` when it is finite -- the whole way from data to pure noise for Linear, cosine, Trig
    and :class:`KineticOptimal` -- else ``[t_min, t_max]``, e.g. EDM):
    ``E = (t_b - t_a) int_{t_a}^{t_b} E|u_t|^2 dt``.

Data separation
    Writing ``rho = alpha / sigma`` and ``m = E|x0|^2``, the tower property gives (derived here; it is the
    simplification the paper states, with the data entering through one scalar function of the SNR)

        E|u_t|^2 = m alpha'^2 + d sigma'^2 - (alpha' sigma - alpha sigma')^2 / sigma^2 * mmse(rho),

    ``mmse(rho) = E|x0 - E[x0 | rho x0 + eps]|^2``. The *data separation function* is
    ``lambda(rho) = 1 - mmse(rho) / m = E|E[x0|x]|^2 / E|x0|^2`` in ``[0, 1]``: 1 for perfectly separated data
    (each noisy point identifies its source, Cond-OT becomes kinetic optimal), small for overlapping data.
    Numerically we carry ``g(lam) = mmse(rho) (1 + rho^2) / d`` (``lam = log rho``), finite at both ends:
    ``E|u_t|^2 / d = mu2 alpha'^2 + sigma'^2 - (alpha' sigma - alpha sigma')^2 g / (alpha^2 + sigma^2)``
    with ``mu2 = m / d``.

Kinetic-optimal path
    Among curves ``(alpha, sigma)`` from data ``(1, 0)`` to noise ``(0, 1)`` the energy above is a Riemannian
    length problem (``E >= L^2`` with equality at constant speed). :class:`KineticOptimal` writes the curve in
    polar form ``alpha = r(v) cos(v pi / 2)``, ``sigma = r(v) sin(v pi / 2)`` with
    ``r = exp(sum_k c_k sin(k pi v)) / (cos + sin)`` (``c = 0`` is Cond-OT, the paper's KO path for
    ``lambda = 1``), minimises the length over ``c`` (L-BFGS on a composite Gauss-Legendre rule) and labels time
    by arc length, so the path has constant speed and ``E_KO = L^2``. ``t(v)`` is tabulated (cubic Hermite with
    exact end slopes on 1024 uniform knots); ``lam``, ``t_of_lam`` and the derivatives follow in closed form
    from it. A monotone ``v`` is imposed (the paper's KO paths are monotone in SNR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import as_f64, check_finite_float, check_int
from .analytic import Gaussian, GaussianMixture
from .paths import Path
from .predictions import Denoiser

__all__ = [
    "KineticEnergy",
    "kinetic_energy",
    "separation_function",
    "scaled_mmse",
    "KineticOptimal",
]

_HALF_PI = math.pi / 2


# --- the data: Gaussian, Gaussian mixture, or an empirical sample set -----------------------------
class _Mixture:
    """A mixture with diagonal variances (variances 0: an empirical point set), in float64."""

    def __init__(self, weights, means, variances):
        self.w, self.mu, self.var = weights, means, variances
        self.k, self.d = means.shape

    @classmethod
    def of(cls, source) -> _Mixture | Gaussian:
        if isinstance(source, Gaussian):
            return source
        if isinstance(source, GaussianMixture):
            return cls(source.weights, source.means, source.variances)
        if isinstance(source, torch.Tensor):
            x = source.detach().reshape(source.shape[0], -1).to(torch.float64).cpu()
            if x.shape[0] < 2 or not bool(torch.isfinite(x).all()):
                raise ValueError(
                    f"samples must be a finite [N, ...] tensor with N >= 2, got shape {tuple(source.shape)}"
                )
            n = x.shape[0]
            return cls(torch.full((n,), 1.0 / n, dtype=torch.float64), x, torch.zeros_like(x))
        raise TypeError(
            "the data must be a pfode.analytic.Gaussian, a GaussianMixture or a [N, ...] tensor of samples, "
            f"got {type(source).__name__}"
        )

    def second_moment(self) -> float:
        return float((self.w[:, None] * (self.mu**2 + self.var)).sum())

    def draw(self, n: int, generator) -> torch.Tensor:
        idx = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return self.mu[idx] + z * self.var[idx].sqrt()

    def post_var(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``tr Cov[x0 | x0 + s eps = x]`` per row of ``x`` ``[B, d]``, ``s`` ``[B]`` (closed form,
        Rao-Blackwellised)."""
        out = []
        logw = torch.log(self.w.clamp_min(1e-300))
        chunk = max(1, 2**21 // (self.k * self.d))
        for xb, sb in zip(x.split(chunk), s.split(chunk)):
            s2 = (sb * sb)[:, None, None]
            vt = self.var[None] + s2  # [b, K, d]
            diff = xb[:, None, :] - self.mu[None]  # [b, K, d]
            logn = -0.5 * ((diff * diff / vt) + torch.log(vt)).sum(-1) + logw[None]
            r = torch.softmax(logn, 1)  # [b, K]
            mk = self.mu[None] + self.var[None] / vt * diff  # component posterior means
            xhat = (r[:, :, None] * mk).sum(1)
            within = (self.var[None] * s2 / vt).sum(-1)  # [b, K]
            between = ((mk - xhat[:, None]) ** 2).sum(-1)  # [b, K]
            out.append((r * (within + between)).sum(1))
        return torch.cat(out)


def _scaled_mmse_src(src, lam: torch.Tensor, n_samples: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``g(lam) = mmse (1 + rho^2) / d`` and its standard error (0 for a Gaussian)."""
    if isinstance(src, Gaussian):
        s2 = torch.exp(-2.0 * lam)[:, None]  # 1 / rho^2
        ev = src.evals[None]
        g = (ev * (1.0 + s2) / (ev + s2)).sum(1) / src.d
        return g, torch.zeros_like(g)
    x0 = src.draw(n_samples, generator)
    z = torch.randn(n_samples, src.d, generator=generator, dtype=torch.float64)  # common random numbers
    finite = torch.isfinite(lam)
    s = torch.exp(-lam[finite]).repeat_interleave(n_samples)  # [J' * n]
    x = (x0[None] + torch.exp(-lam[finite])[:, None, None] * z[None]).reshape(-1, src.d)
    pv = (src.post_var(x, s) * (1.0 + 1.0 / (s * s)) / src.d).reshape(-1, n_samples)
    g, se = torch.zeros_like(lam), torch.zeros_like(lam)  # lam = +inf: no noise, mmse = 0
    g[finite] = pv.mean(1)
    se[finite] = pv.std(1) / math.sqrt(n_samples)
    if bool((lam == -math.inf).any()):
        raise ValueError("lam = -inf (alpha = 0) is outside the tabulated statistic; clamp lam first")
    return g, se


def scaled_mmse(data, lam, n_samples: int = 2048, generator: torch.Generator | None = None):
    """``g(lam) = mmse(rho) (1 + rho^2) / d`` at half log-SNRs ``lam = log rho`` (``[J]``), with standard errors.

    ``data``: a :class:`~pfode.analytic.Gaussian` (closed form), a :class:`~pfode.analytic.GaussianMixture` or
    ``[N, ...]`` samples (their empirical law). For mixtures and samples ``mmse`` is a Monte-Carlo mean over
    ``n_samples`` draws of the closed-form posterior variance (common random numbers across ``lam``).
    Returns ``(g [J], stderr [J])`` float64.
    """
    check_int("n_samples", n_samples, 2)
    return _scaled_mmse_src(_Mixture.of(data), as_f64(lam).reshape(-1).cpu(), n_samples, generator)


def separation_function(data, lam, n_samples: int = 2048, generator: torch.Generator | None = None):
    """The data separation function ``lambda(rho) = E|E[x0|x]|^2 / E|x0|^2`` at ``lam = log rho`` (``[J]``).

    ``x = rho x0 + eps`` (Shaul et al., 2023); 1 means every noisy point identifies its source. Returns
    ``(lambda [J], stderr [J])`` float64 (see :func:`scaled_mmse` for ``data`` and the estimator).
    """
    src = _Mixture.of(data)
    lam = as_f64(lam).reshape(-1).cpu()
    g, se = _scaled_mmse_src(src, lam, n_samples if n_samples >= 2 else 2, generator)
    m = src.second_moment() if isinstance(src, _Mixture) else float((src.mean**2).sum() + src.evals.sum())
    scale = src.d / m / (1.0 + torch.exp(2.0 * lam))
    return 1.0 - g * scale, se * scale


# --- kinetic energy -------------------------------------------------------------------------------
@dataclass
class KineticEnergy:
    """Result of :func:`kinetic_energy`.

    Attributes:
        value: ``E`` with time mapped to ``[0, 1]`` over ``t_range`` (a total over all ``d`` dimensions).
        stderr: Monte-Carlo standard error of ``value`` (0 for the closed form).
        t_range: the path times mapped to ``[0, 1]``.
        method: ``"closed-form"``, ``"separation"`` (Rao-Blackwellised mmse) or ``"monte-carlo"``.
        times, integrand: quadrature nodes (path times) and ``E|u_t|^2`` there.
    """

    value: float
    stderr: float
    t_range: tuple[float, float]
    method: str
    times: torch.Tensor = field(repr=False)
    integrand: torch.Tensor = field(repr=False)


def _leggauss(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(x), torch.from_numpy(w)


def _nodes(path: Path, t_a: float, t_b: float, panels: int, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre nodes/weights on ``[t_a, t_b]``: panel ends uniform in ``t`` and in (clamped) lam."""
    lam_a = float(path.lam(torch.tensor(t_a)).clamp(-12.0, 12.0))
    lam_b = float(path.lam(torch.tensor(t_b)).clamp(-12.0, 12.0))
    by_lam = path.t_of_lam(torch.linspace(lam_a, lam_b, panels + 1, dtype=torch.float64)).clamp(t_a, t_b)
    ends = torch.cat([torch.linspace(t_a, t_b, panels + 1, dtype=torch.float64), by_lam]).unique(sorted=True)
    ends = ends[torch.cat([torch.tensor([True]), ends[1:] - ends[:-1] > 1e-12 * max(1.0, abs(t_b))])]
    ends[0], ends[-1] = t_a, t_b
    x, w = _leggauss(order)
    lo, hi = ends[:-1, None], ends[1:, None]
    t = (lo + (hi - lo) * (x[None] + 1) / 2).reshape(-1)
    wt = ((hi - lo) / 2 * w[None]).reshape(-1)
    return t, wt


def _t_range(path: Path, t_range) -> tuple[float, float]:
    if t_range is None:
        if math.isfinite(path.t_lo) and math.isfinite(path.t_hi):
            return float(path.t_lo), float(path.t_hi)
        return float(path.t_min), float(path.t_max)
    if not (isinstance(t_range, (tuple, list)) and len(t_range) == 2):
        raise TypeError(f"t_range must be a pair (t_a, t_b), got {t_range!r}")
    t_a, t_b = (check_finite_float("t_range", v) for v in t_range)
    if not (path.t_lo <= t_a < t_b <= path.t_hi):
        raise ValueError(f"t_range={t_range!r}: need t_lo={path.t_lo} <= t_a < t_b <= t_hi={path.t_hi}")
    return t_a, t_b


def kinetic_energy(
    model_or_target,
    path: Path | None = None,
    *,
    data=None,
    t_range: tuple[float, float] | None = None,
    method: str | None = None,
    panels: int = 16,
    n_samples: int = 1024,
    generator: torch.Generator | None = None,
) -> KineticEnergy:
    """Kinetic energy ``E = int E|u_t(x_t)|^2 dt`` of a path (Shaul et al., 2023), time mapped to ``[0, 1]``.

    Args:
        model_or_target: a :class:`~pfode.analytic.Gaussian` (closed-form integrand), a
            :class:`~pfode.analytic.GaussianMixture` (the exact velocity ``alpha' x0_hat + sigma' eps_hat``,
            Monte Carlo over ``x_t``; or ``method="separation"``: the formula of the module docstring with a
            Rao-Blackwellised mmse), or a :class:`pfode.Denoiser` (its velocity, Monte Carlo over
            ``x_t = alpha x0 + sigma eps`` with ``x0`` drawn from ``data``).
        path: the path (required for targets; a denoiser brings its own).
        data: ``[N, ...]`` data samples (needed for a denoiser).
        t_range: path times mapped onto ``[0, 1]`` (default: ``[t_lo, t_hi]`` if finite, else
            ``[t_min, t_max]``).
        panels: quadrature panels (ends uniform in ``t`` and in lam); Gauss nodes per panel: 16 (closed form),
            8 (separation), 4 (Monte Carlo).
        n_samples: Monte-Carlo draws per quadrature node.

    Returns:
        :class:`KineticEnergy` (value, standard error, nodes and integrand ``E|u_t|^2``).
    """
    check_int("panels", panels, 1)
    check_int("n_samples", n_samples, 2)
    if isinstance(model_or_target, Denoiser):
        if path is not None and path is not model_or_target.path:
            raise ValueError("a Denoiser brings its own path; leave path=None")
        path = model_or_target.path
        if data is None:
            raise ValueError("data=: the kinetic energy of a network needs [N, ...] data samples to draw x_t")
        kind = "monte-carlo"
    elif isinstance(model_or_target, (Gaussian, GaussianMixture)):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a pfode.paths.Path for an analytic target, got {type(path).__name__}")
        kind = "closed-form" if isinstance(model_or_target, Gaussian) else "monte-carlo"
    else:
        raise TypeError(
            "model_or_target must be a pfode.Denoiser, pfode.analytic.Gaussian or GaussianMixture, "
            f"got {type(model_or_target).__name__}"
        )
    if method is not None:
        allowed = {"closed-form": ("closed-form", "monte-carlo")}.get(kind, ("monte-carlo", "separation"))
        if isinstance(model_or_target, Denoiser):
            allowed = ("monte-carlo",)
        if method not in allowed:
            raise ValueError(f"method={method!r} is not available here; valid: {', '.join(allowed)}")
        kind = method
    t_a, t_b = _t_range(path, t_range)
    t, w = _nodes(path, t_a, t_b, panels, {"closed-form": 16, "separation": 8}.get(kind, 4))
    a, s, da, ds = path.coefficients(t)
    if kind in ("closed-form", "separation"):
        src = _Mixture.of(model_or_target)
        d = src.d
        mu2 = (src.second_moment() if isinstance(src, _Mixture) else float((src.mean**2).sum() + src.evals.sum())) / d
        g, g_se = _scaled_mmse_src(src, path.lam(t), n_samples, generator)
        cross = (da * s - a * ds) ** 2 / (a * a + s * s)
        f = d * (mu2 * da * da + ds * ds - cross * g)
        f_se = d * cross * g_se
        scale = t_b - t_a
        value = scale * float((w * f).sum())
        # one common set of draws across nodes: errors add linearly (a bound), not in quadrature
        stderr = scale * float((w * f_se).sum())
        return KineticEnergy(value, stderr, (t_a, t_b), kind, t, f)
    vals, ses = [], []
    if isinstance(model_or_target, Denoiser):
        x_data = as_f64(data)
        den = model_or_target
    else:
        den = None
    for j in range(t.shape[0]):
        tj = float(t[j])
        if den is None:
            x0 = model_or_target.sample(n_samples, generator)
        else:
            idx = torch.randint(0, x_data.shape[0], (n_samples,), generator=generator)
            x0 = x_data[idx]
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x = float(a[j]) * x0 + float(s[j]) * eps
        if den is None:
            xh, eh = model_or_target.x0_eps(x, tj, path)
        else:
            with torch.no_grad():
                xh, eh = den(x.to(torch.float64), tj)
            xh, eh = xh.to(torch.float64), eh.to(torch.float64)
        u = float(da[j]) * xh + float(ds[j]) * eh
        sq = u.reshape(n_samples, -1).pow(2).sum(1)
        vals.append(float(sq.mean()))
        ses.append(float(sq.std() / math.sqrt(n_samples)))
    f = torch.tensor(vals, dtype=torch.float64)
    f_se = torch.tensor(ses, dtype=torch.float64)
    scale = t_b - t_a
    value = scale * float((w * f).sum())
    stderr = scale * float((w * w * f_se * f_se).sum()) ** 0.5  # independent draws per node
    return KineticEnergy(value, stderr, (t_a, t_b), "monte-carlo", t, f)


# --- the kinetic-optimal path ---------------------------------------------------------------------
def _newton(fn, c: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Minimise a smooth scalar ``fn()`` of the leaf ``c`` (a few dozen entries): damped Newton with an autograd
    Hessian and backtracking (torch.optim is avoided: its first construction costs seconds)."""
    k = c.numel()
    with torch.enable_grad():
        for _ in range(iters):
            f = fn()
            (g,) = torch.autograd.grad(f, c, create_graph=True)
            hess = torch.stack([torch.autograd.grad(g[i], c, retain_graph=True)[0] for i in range(k)])
            g, hess, f = g.detach(), 0.5 * (hess + hess.T).detach(), float(f.detach())
            if float(g.abs().max()) < 1e-13:
                break
            shift = max(0.0, -float(torch.linalg.eigvalsh(hess)[0])) * 1.1 + 1e-12
            step = torch.linalg.solve(hess + shift * torch.eye(k, dtype=hess.dtype), -g)
            lr, improved = 1.0, False
            while lr > 1e-8:
                with torch.no_grad():
                    trial = float(_fn_at(fn, c, c + lr * step))
                if trial < f:
                    improved = True
                    break
                lr *= 0.5
            if not improved:
                break
            with torch.no_grad():
                c += lr * step
    return c.detach()


def _fn_at(fn, c, value):
    """``fn()`` with ``c`` temporarily set to ``value``."""
    saved = c.detach().clone()
    with torch.no_grad():
        c.copy_(value)
        out = fn()
        c.copy_(saved)
    return out


def _hermite(y0, y1, m0, m1, tau, h):
    """Cubic Hermite on one segment (``tau`` in [0, 1], slopes per unit of the knot variable)."""
    t2, t3 = tau * tau, tau * tau * tau
    return (2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + tau) * h * m0 + (-2 * t3 + 3 * t2) * y1 + (t3 - t2) * h * m1


def _hermite_d(y0, y1, m0, m1, tau, h):
    t2 = tau * tau
    return (
        (6 * t2 - 6 * tau) * y0
        + (3 * t2 - 4 * tau + 1) * h * m0
        + (-6 * t2 + 6 * tau) * y1
        + (3 * t2 - 2 * tau) * h * m1
    ) / h


class KineticOptimal(Path):
    """Kinetic-optimal Gaussian path for given data (Shaul et al., ICML 2023); see the module docstring.

    ``t`` in ``[0, 1]``: data (``sigma = 0``) at 0, pure noise (``alpha = 0``) at 1, constant kinetic speed;
    grids default to ``[1e-3, 1 - 1e-3]`` like :class:`~pfode.paths.Linear`. Build it from data with
    :meth:`from_data`; the constructor takes the tabulated statistic so that :meth:`spec` is plain JSON.

    Args:
        mmse: per-dimension ``mmse(rho) / d`` on a uniform grid of ``lam = log rho`` over ``lam_range``
            (``J >= 2`` values, non-negative), or ``None``: perfectly separated data (``mmse = 0``, separation
            function 1), whose KO path is Cond-OT (:class:`~pfode.paths.Linear`).
        lam_range: ``(lam_lo, lam_hi)`` of the table; outside it ``g = mmse (1 + rho^2) / d`` is held constant.
        second_moment: ``E|x0|^2 / d`` of the data (> 0).
        modes: number of sine modes ``K`` of ``log r``.
    """

    name = "kinetic-optimal"
    KNOTS = 1024

    def __init__(
        self,
        mmse: list[float] | None = None,
        lam_range: tuple[float, float] = (-10.0, 10.0),
        second_moment: float = 1.0,
        modes: int = 12,
        t_min: float = 1e-3,
        t_max: float = 1.0 - 1e-3,
    ):
        self.second_moment = check_finite_float("second_moment", second_moment, 0.0, strict=True)
        self.modes = check_int("modes", modes, 0)
        if not (isinstance(lam_range, (tuple, list)) and len(lam_range) == 2):
            raise TypeError(f"lam_range must be a pair (lam_lo, lam_hi), got {lam_range!r}")
        lo, hi = (check_finite_float("lam_range", v) for v in lam_range)
        if not lo < hi:
            raise ValueError(f"lam_range={lam_range!r}: need lam_lo < lam_hi")
        self.lam_range = (lo, hi)
        if mmse is None:
            self.mmse = None
            table = torch.zeros(2, dtype=torch.float64)
        else:
            table = torch.as_tensor(mmse, dtype=torch.float64).reshape(-1)
            if table.numel() < 2 or not bool(torch.isfinite(table).all()) or bool((table < 0).any()):
                raise ValueError("mmse: need at least 2 finite values >= 0 (per-dimension mmse on the lam grid)")
            self.mmse = [float(v) for v in table]
        if not (0.0 < t_min < t_max < 1.0):
            raise ValueError(f"t_min={t_min!r}, t_max={t_max!r}: need 0 < t_min < t_max < 1")
        self.t_lo, self.t_hi = 0.0, 1.0
        self.t_min, self.t_max = float(t_min), float(t_max)
        lam_knots = torch.linspace(lo, hi, table.numel(), dtype=torch.float64)
        self._g_knots = table * (1.0 + torch.exp(2.0 * lam_knots))  # g = mmse (1 + rho^2) / d
        self._g_h = (hi - lo) / (table.numel() - 1)
        g = self._g_knots
        slopes = torch.zeros_like(g)  # Catmull-Rom slopes (zero at the ends: g is held constant outside)
        if g.numel() > 2:
            slopes[1:-1] = (g[2:] - g[:-2]) / (2 * self._g_h)
        self._g_slopes = slopes
        self._fit()

    # -- data -> path ------------------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        data,
        lam_range: tuple[float, float] = (-10.0, 10.0),
        points: int = 201,
        n_samples: int = 2048,
        generator: torch.Generator | None = None,
        **options,
    ) -> KineticOptimal:
        """The KO path of ``data``: a :class:`~pfode.analytic.Gaussian`, a
        :class:`~pfode.analytic.GaussianMixture` or ``[N, ...]`` samples (their empirical law, as the paper
        estimates the separation function from the training set). ``points`` lam values over ``lam_range``;
        ``n_samples`` Monte-Carlo draws for mixtures and samples; other options go to the constructor."""
        check_int("points", points, 2)
        src = _Mixture.of(data)
        lam = torch.linspace(float(lam_range[0]), float(lam_range[1]), points, dtype=torch.float64)
        g, _ = _scaled_mmse_src(src, lam, n_samples, generator)
        mmse = g / (1.0 + torch.exp(2.0 * lam))
        m = src.second_moment() if isinstance(src, _Mixture) else float((src.mean**2).sum() + src.evals.sum())
        return cls(mmse=mmse.tolist(), lam_range=tuple(lam_range), second_moment=m / src.d, **options)

    def _spec_args(self):
        return {
            "mmse": self.mmse,
            "lam_range": list(self.lam_range),
            "second_moment": self.second_moment,
            "modes": self.modes,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }

    def g(self, lam) -> torch.Tensor:
        """``mmse(rho) (1 + rho^2) / d`` at ``lam`` (cubic Hermite in lam, constant outside the table)."""
        lam = as_f64(lam)
        lo, hi = self.lam_range
        u = ((lam.clamp(lo, hi) - lo) / self._g_h).nan_to_num(0.0)
        n = self._g_knots.numel()
        k = torch.clamp(torch.floor(u), 0, n - 2).long()
        tau = u - k
        gk, sk = self._g_knots.to(lam.device), self._g_slopes.to(lam.device)
        return _hermite(gk[k], gk[k + 1], sk[k], sk[k + 1], tau, self._g_h).clamp_min(0.0)

    # -- geometry in v (0 = data, 1 = noise) --------------------------------------------------------
    def _geom(self, v, c):
        a = torch.sin((1.0 - v) * _HALF_PI)  # cos(v pi/2), exact 0 at v = 1
        b = torch.sin(v * _HALF_PI)  # exact 0 at v = 0
        k = torch.arange(1, c.numel() + 1, dtype=torch.float64, device=v.device)
        arg = math.pi * v[..., None] * k
        logr = -torch.log(a + b) + (torch.sin(arg) * c).sum(-1)
        dlogr = -_HALF_PI * (a - b) / (a + b) + (torch.cos(arg) * (c * k * math.pi)).sum(-1)
        r = torch.exp(logr)
        dr = r * dlogr
        al, sg = r * a, r * b
        dal = dr * a - r * _HALF_PI * b
        dsg = dr * b + r * _HALF_PI * a
        return al, sg, dal, dsg, r, a, b

    def _speed2(self, v, c):
        """Per-dimension kinetic energy density ``E|u|^2 / d`` per unit of ``v`` squared."""
        al, sg, dal, dsg, r, a, b = self._geom(v, c)
        lam = torch.log(a) - torch.log(b)
        return self.second_moment * dal * dal + dsg * dsg - (_HALF_PI * r) ** 2 * self.g(lam)

    def _fit(self):
        x, w = _leggauss(8)
        panels = 128
        ends = torch.linspace(0.0, 1.0, panels + 1, dtype=torch.float64)
        v = (ends[:-1, None] + (ends[1:, None] - ends[:-1, None]) * (x[None] + 1) / 2).reshape(-1)
        wv = (w[None] / (2 * panels)).expand(panels, -1).reshape(-1)
        c = torch.zeros(self.modes, dtype=torch.float64, requires_grad=True)

        def length():
            return (wv * torch.sqrt(self._speed2(v, c).clamp_min(1e-300))).sum()

        if self.modes > 0:
            c = _newton(length, c)
        self._c = c.detach()
        # tabulate t(v) = F(v) / L, F = int_0^v speed (Gauss per knot interval)
        n = self.KNOTS
        knots = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        vv = (knots[:-1, None] + (x[None] + 1) / (2 * n)).reshape(-1)
        seg = (torch.sqrt(self._speed2(vv, self._c).clamp_min(0.0)).reshape(n, -1) * w[None]).sum(1) / (2 * n)
        F = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(seg, 0)])
        self.length = float(F[-1])
        self._t_knots = F / F[-1]
        self._t_knots[-1] = 1.0
        self._t_slopes = torch.sqrt(self._speed2(knots, self._c).clamp_min(0.0)) / F[-1]
        self._h = 1.0 / n
        with torch.no_grad():
            self.energy_per_dim = self.length**2  # constant speed on [0, 1]: E / d = L^2

    # -- t <-> v --------------------------------------------------------------------------------
    def _seg(self, v):
        u = v / self._h
        k = torch.clamp(torch.floor(u), 0, self.KNOTS - 1).long()
        return k, u - k

    def _t_of_v(self, v):
        k, tau = self._seg(v)
        T, S = self._t_knots.to(v.device), self._t_slopes.to(v.device)
        return _hermite(T[k], T[k + 1], S[k], S[k + 1], tau, self._h)

    def _dt_dv(self, v):
        k, tau = self._seg(v)
        T, S = self._t_knots.to(v.device), self._t_slopes.to(v.device)
        return _hermite_d(T[k], T[k + 1], S[k], S[k + 1], tau, self._h)

    def _v_of_t(self, t):
        """Inverse of the tabulated ``t(v)``: the knot interval by search, then safeguarded Newton on its cubic."""
        t = as_f64(t)
        T, S = self._t_knots.to(t.device), self._t_slopes.to(t.device)
        tc = t.clamp(0.0, 1.0)
        k = torch.clamp(torch.searchsorted(T, tc.contiguous(), right=True) - 1, 0, self.KNOTS - 1)
        y0, y1, m0, m1 = T[k], T[k + 1], S[k], S[k + 1]
        lo, hi = torch.zeros_like(tc), torch.ones_like(tc)
        tau = ((tc - y0) / (y1 - y0)).clamp(0.0, 1.0)
        for _ in range(60):
            f = _hermite(y0, y1, m0, m1, tau, self._h) - tc
            lo = torch.where(f < 0, tau, lo)
            hi = torch.where(f < 0, hi, tau)
            if bool((hi - lo <= 4e-16).all()) or bool((f == 0).all()):
                break
            df = _hermite_d(y0, y1, m0, m1, tau, self._h) * self._h
            newton = tau - f / df
            bad = ~torch.isfinite(newton) | (newton <= lo) | (newton >= hi)
            tau = torch.where(bad, 0.5 * (lo + hi), newton)
        v = (k + tau) * self._h
        v = torch.where(t <= 0, torch.zeros_like(v), v)
        return torch.where(t >= 1, torch.ones_like(v), v)

    def _v_of_t_unique(self, t):
        t = as_f64(t)
        if t.numel() > 8:  # solvers and analytic targets pass one time expanded over a batch
            uniq, inv = torch.unique(t, return_inverse=True)
            return self._v_of_t(uniq)[inv]
        return self._v_of_t(t)

    def coefficients(self, t):
        v = self._v_of_t_unique(t)
        al, sg, dal, dsg, *_ = self._geom(v, self._c.to(v.device))
        dtdv = self._dt_dv(v)
        return al, sg, dal / dtdv, dsg / dtdv

    def alpha(self, t):
        return self.coefficients(t)[0]

    def sigma(self, t):
        return self.coefficients(t)[1]

    def d_alpha(self, t):
        return self.coefficients(t)[2]

    def d_sigma(self, t):
        return self.coefficients(t)[3]

    def lam(self, t):
        v = self._v_of_t_unique(t)
        return torch.log(torch.sin((1.0 - v) * _HALF_PI)) - torch.log(torch.sin(v * _HALF_PI))

    def t_of_lam(self, lam):
        lam = as_f64(lam)
        v = torch.atan(torch.exp(-lam)) / _HALF_PI  # tan(v pi / 2) = sigma / alpha = exp(-lam)
        return self._t_of_v(v).clamp(0.0, 1.0)

    def __repr__(self):
        kind = "cond-ot" if self.mmse is None else f"table of {len(self.mmse)}"
        return f"KineticOptimal({kind}, E/d={self.energy_per_dim:.4g})"
