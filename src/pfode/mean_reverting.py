"""Mean-reverting diffusion (IR-SDE / MR-SDE) and its fast samplers (MRS).

The mean-reverting SDE of Luo et al. (IR-SDE, "Image Restoration with Mean-Reverting Stochastic Differential
Equations", ICML 2023) pulls a clean image ``x_0`` towards a degraded one ``mu`` while adding noise:

    dx = theta_t (mu - x) dt + sigma_t dw,     sigma_t^2 / theta_t = 2 lambda^2,

so that, with ``thetabar_t = int_0^t theta``,

    x_t = mu + (x_0 - mu) e^{-thetabar_t} + lambda sqrt(1 - e^{-2 thetabar_t}) eps.

In the shifted variable ``y = x - mu`` this is the affine Gaussian path ``y_t = alpha y_0 + sigma eps`` with
``alpha = e^{-thetabar}`` and ``sigma = lambda sqrt(1 - alpha^2)`` -- a VP path scaled by ``lambda``
(:class:`MeanReverting`). Every pfode solver therefore applies unchanged to ``y``: the semi-analytic MRS
solvers of Li et al. ("MRS: A Fast Sampler for Mean Reverting Diffusion based on ODE and SDE Solvers", 2024)
are DDIM / DPM-Solver(++) / SDE-DPM-Solver++ on ``y`` (:data:`MRS_SOLVERS`; ``tests/test_mean_reverting.py``
checks step-for-step equality with the paper's updates written in ``x``).

Conventions (the network, the denoiser, the sampler):

* a network for this path is called ``net(y_t, t, mu=mu)``; its output is a prediction of the given type
  *for the shifted variable*: ``eps`` (IR-SDE's choice) and ``velocity``/``score`` are the same in ``x`` and
  ``y``; ``x0`` means the residual ``x_0 - mu``. :class:`MuConcat` adapts a plain ``(x, t)`` network: it feeds it
  ``cat([x_t, mu])`` along channels (features), as IR-SDE does, and keeps the first half of its output;
* ``pfode.Denoiser(net, MeanReverting(...), prediction)`` is then an ordinary pfode denoiser of ``y`` with
  ``cond={"mu": mu}``;
* :func:`sample` draws ``x_T = mu + sigma_T eps``, runs :func:`pfode.sample` on ``y = x - mu`` with ``mu`` as
  the condition and returns ``x = y + mu``; :func:`sample_euler_maruyama` is IR-SDE's own sampler (Euler-Maruyama
  of the reverse SDE in ``t``, 100 steps), the baseline;
* :func:`exact_denoiser` / :func:`flow_map`: the closed-form truth of :mod:`pfode.analytic` carried to the
  shifted variable (``x_0 ~ target`` independent of ``mu``).

This module imports only :mod:`pfode.paths` at import time (``pfode.paths`` imports it to register the path).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import as_f64, check_choice, check_finite_float, check_int
from .paths import Path

__all__ = [
    "MeanReverting",
    "MuConcat",
    "MRS_SOLVERS",
    "check_mu",
    "clipped",
    "degrade",
    "sample",
    "sample_euler_maruyama",
    "exact_denoiser",
    "flow_map",
]

SCHEDULES = ("cosine", "constant")


class MeanReverting(Path):
    """The mean-reverting path of IR-SDE in the shifted variable ``y = x - mu``.

    ``alpha(t) = exp(-thetabar(t))``, ``sigma(t) = stationary_std * sqrt(1 - alpha^2)``; ``t`` in ``[0, 1]``
    (``sigma = 0`` at ``t = 0``), ``thetabar(1) = -log(alpha_end)`` so ``E[x_1] = mu + alpha_end (x_0 - mu)``.

    Args:
        stationary_std: ``lambda``, the std of the stationary law ``N(mu, lambda^2 I)`` (``> 0``).
        schedule: ``"cosine"``: IR-SDE's ``theta_t = c (1 - cos^2(phi_t) / cos^2(phi_0))`` with
            ``phi_t = (t + cosine_offset) / (1 + cosine_offset) pi / 2`` (its discrete cosine table made
            continuous; ``thetabar`` in closed form); ``"constant"``: ``theta_t = c``.
        alpha_end: ``alpha(1)`` in ``(0, 1)`` (IR-SDE's ``eps``, default 0.005): what is left of ``x_0 - mu`` at
            the end; :func:`sample` neglects it.
        cosine_offset: the offset ``s`` of the cosine schedule.
        t_min: end of sampling grids; default: where ``sigma = 1e-3 lambda``.
        t_max: start of sampling grids (default 1).

    ``f(t) = -theta_t`` and ``g^2(t) = 2 lambda^2 theta_t``: the forward SDE of ``y`` is IR-SDE's.
    """

    name = "mean-reverting"

    def __init__(
        self,
        stationary_std: float = 0.5,
        schedule: str = "cosine",
        alpha_end: float = 0.005,
        cosine_offset: float = 0.008,
        t_min: float | None = None,
        t_max: float = 1.0,
    ):
        self.stationary_std = check_finite_float("stationary_std", stationary_std, 0.0, strict=True)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.alpha_end = check_finite_float("alpha_end", alpha_end, 0.0, strict=True)
        if self.alpha_end >= 1.0:
            raise ValueError(f"alpha_end={alpha_end!r} must be in (0, 1)")
        self.cosine_offset = check_finite_float("cosine_offset", cosine_offset, 0.0, strict=True)
        self.t_lo, self.t_hi = 0.0, 1.0
        self._k = (math.pi / 2) / (1.0 + self.cosine_offset)  # d phi / dt
        self._phi0 = self.cosine_offset * self._k
        self._c2 = math.cos(self._phi0) ** 2
        self._c = -math.log(self.alpha_end) / float(self._q_int(torch.tensor(1.0, dtype=torch.float64)))
        self.t_max = check_finite_float("t_max", t_max)
        if t_min is None:  # sigma = 1e-3 lambda: 1 - e^{-2 thetabar} = 1e-6
            t_min = float(self._t_of_thetabar(torch.tensor(0.5 * -math.log1p(-1e-6), dtype=torch.float64)))
        self.t_min = check_finite_float("t_min", t_min)
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"t_min={self.t_min!r}, t_max={self.t_max!r}: need 0 < t_min < t_max <= 1")

    # --- theta and its integral ---------------------------------------------------------------
    def _q(self, t):
        """The schedule's shape ``theta / c`` (``1`` for constant; ``sin(k t) sin(k t + 2 phi0) / cos^2 phi0``)."""
        t = as_f64(t)
        if self.schedule == "constant":
            return torch.ones_like(t)
        k, p0 = self._k, self._phi0
        return torch.sin(k * t) * torch.sin(k * t + 2.0 * p0) / self._c2

    def _q_int(self, t):
        """``int_0^t q``, in a form without cancellation at small ``t`` (``O(t^2)`` for the cosine schedule)."""
        t = as_f64(t)
        if self.schedule == "constant":
            return t.clone()
        k, p0 = self._k, self._phi0
        # int_0^t sin(ku) sin(ku + 2 p0) du = [cos 2p0 (t - sin(2kt)/(2k)) + sin 2p0 sin^2(kt) / k] / 2
        x = 2.0 * k * t
        x2 = x * x  # x - sin x: its Taylor series below 0.1 (the difference cancels there), else directly
        series = x * x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0)))
        x_sin = torch.where(x.abs() < 0.1, series, x - torch.sin(x))
        a = math.cos(2.0 * p0) * x_sin / (2.0 * k)
        b = math.sin(2.0 * p0) * torch.sin(k * t) ** 2 / k
        return 0.5 * (a + b) / self._c2

    def theta(self, t) -> torch.Tensor:
        """The mean-reversion rate ``theta_t`` (float64)."""
        return self._c * self._q(t)

    def thetabar(self, t) -> torch.Tensor:
        """``int_0^t theta`` (float64); ``alpha = exp(-thetabar)``."""
        return self._c * self._q_int(t)

    def _t_of_thetabar(self, tb):
        tb = as_f64(tb)
        if self.schedule == "constant":
            return torch.clamp(tb / self._c, self.t_lo, self.t_hi)
        # thetabar increases strictly on (0, 1] and grows like t^2 at 0: bracket by bisection, then Newton on
        # sqrt(thetabar(t)) = sqrt(tb), which is nearly linear in t down to 0 (quadratic convergence everywhere)
        tb = torch.clamp(tb, min=0.0)
        lo, hi = torch.zeros_like(tb), torch.ones_like(tb)
        for _ in range(8):
            mid = 0.5 * (lo + hi)
            below = self.thetabar(mid) < tb
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        t, r = 0.5 * (lo + hi), torch.sqrt(tb)
        for _ in range(6):
            root = torch.sqrt(self.thetabar(t))
            step = (root - r) * 2.0 * root / torch.clamp(self.theta(t), min=1e-300)
            t = torch.minimum(torch.maximum(t - step, lo), hi)
        return torch.where(tb == 0, torch.zeros_like(t), t)

    # --- the path -------------------------------------------------------------------------------
    def alpha(self, t):
        return torch.exp(-self.thetabar(t))

    def sigma(self, t):
        return self.stationary_std * torch.sqrt(-torch.expm1(-2.0 * self.thetabar(t)))

    def d_alpha(self, t):
        return -self.theta(t) * self.alpha(t)

    def d_sigma(self, t):
        # d sigma/dt = lambda^2 theta e^{-2 thetabar} / sigma
        tb = self.thetabar(t)
        lam2 = self.stationary_std**2
        return lam2 * self.theta(t) * torch.exp(-2.0 * tb) / (self.stationary_std * torch.sqrt(-torch.expm1(-2.0 * tb)))

    def lam(self, t):
        tb = self.thetabar(t)
        return -tb - math.log(self.stationary_std) - 0.5 * torch.log(-torch.expm1(-2.0 * tb))

    def t_of_lam(self, lam):
        lam = as_f64(lam)
        # e^{-2 thetabar} = sigmoid(2 (lam + log lambda))
        tb = 0.5 * torch.nn.functional.softplus(-2.0 * (lam + math.log(self.stationary_std)))
        out = self._t_of_thetabar(tb)
        out = torch.where(torch.isposinf(lam), torch.full_like(out, self.t_lo), out)
        return torch.where(torch.isneginf(lam), torch.full_like(out, self.t_hi), out)

    def f(self, t):
        return -self.theta(t)

    def g2(self, t):
        return 2.0 * self.stationary_std**2 * self.theta(t)

    def __repr__(self):
        return (
            f"MeanReverting(stationary_std={self.stationary_std:g}, schedule={self.schedule!r}, "
            f"alpha_end={self.alpha_end:g})"
        )


# --- the network's view of mu ---------------------------------------------------------------------
def check_mu(mu, like: torch.Tensor | None = None, name: str = "mu") -> torch.Tensor:
    """``mu`` checked: a finite floating-point tensor ``[B, ...]`` shaped like ``like`` (when given).

    A mean-reverting model is conditioned on ``mu`` (the degraded input, the stationary mean): a missing one is a
    ``ValueError`` naming it.
    """
    if mu is None:
        raise ValueError(
            f"{name} is missing: a mean-reverting model needs the degraded input mu (the SDE's mean), "
            "e.g. pfode.mean_reverting.sample(den, mu=degraded, nfe=10) or cond={'mu': degraded}"
        )
    if not isinstance(mu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, ...], got {type(mu).__name__}")
    if not mu.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {mu.dtype}")
    if mu.dim() < 1 or mu.shape[0] < 1:
        raise ValueError(f"{name} must have a non-empty batch dimension first, got shape {tuple(mu.shape)}")
    if like is not None and mu.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mu.shape)}; it must match the state's shape {tuple(like.shape)}")
    if not bool(torch.isfinite(mu).all()):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return mu


class MuConcat(nn.Module):
    """A mean-reverting network from a plain ``(x, t)`` network: ``(y_t, t, mu) -> net(cat([y_t + mu, mu]), t)[:C]``.

    The wrapped network sees the state ``x_t = y_t + mu`` and the condition ``mu`` concatenated along dimension 1
    (channels of an image, features of a vector), as IR-SDE's ConditionalUNet does, and is built for twice the
    channels (``data_shape = (2C, H, W)`` or ``(2d,)``); the first ``C`` channels of its output are the prediction
    (the rest is discarded). ``shift_input=False`` feeds ``cat([y_t, mu])`` instead.

    Args:
        net: a module ``net(z [B, 2C, ...], t [B]) -> [B, 2C, ...]`` (with a ``data_shape`` attribute when it has
            one), or the configuration of a reference network of :mod:`pfode.nets` (``{"name": "unet", ...}``), built
            here for ``2C`` channels.
        shift_input: whether the network sees ``x_t`` (default) or ``y_t``.
        data_shape: the data's shape ``(C, ...)`` (with a configuration; a training configuration fills it in);
            a given module's shape must be ``(2C, ...)``.

    Registered as the network ``"mu-concat"`` of :func:`pfode.nets.build` (``model: {name: mu-concat, net: {name:
    unet, base: 16}}`` in a training configuration).
    """

    name = "mu-concat"

    def __init__(self, net, shift_input: bool = True, data_shape=None):
        super().__init__()
        if isinstance(net, dict):
            net = self._build(dict(net), data_shape)
        if not callable(net):
            raise TypeError(f"net must be a module callable as net(x, t) or a network configuration, got {net!r}")
        self.net = net
        self.shift_input = bool(shift_input)
        inner = getattr(net, "data_shape", None)
        if inner is not None:
            inner = tuple(int(d) for d in inner)
            if inner[0] % 2:
                raise ValueError(
                    f"the wrapped network has data_shape={inner}; MuConcat feeds it cat([x_t, mu]) along dimension 1, "
                    "so it must be built for twice the channels of the data (e.g. data_shape=(2, 8, 8) for 1x8x8)"
                )
            self.data_shape = (inner[0] // 2, *inner[1:])
            if data_shape is not None and tuple(int(d) for d in data_shape) != self.data_shape:
                raise ValueError(f"data_shape={tuple(data_shape)} does not match the network's {inner} (2C channels)")

    @staticmethod
    def _build(cfg: dict, data_shape):
        from .nets import build

        if "name" not in cfg:
            raise ValueError(f"net={cfg!r}: a network configuration needs a 'name'")
        name = cfg.pop("name")
        if data_shape is None and "data_shape" not in cfg:  # the network's default data shape is the data's
            data_shape = build(name, **cfg).data_shape
        if data_shape is not None:
            if isinstance(data_shape, int):
                data_shape = (data_shape,)
            data_shape = tuple(int(d) for d in data_shape)
            cfg["data_shape"] = [2 * data_shape[0], *data_shape[1:]]
        return build(name, **cfg)

    def config(self) -> dict:
        """``{"name": "mu-concat", "net": net.config(), "shift_input"}`` (rebuilt by :func:`pfode.nets.build`)."""
        if not hasattr(self.net, "config"):
            raise ValueError(f"the wrapped {type(self.net).__name__} has no config() to describe it")
        return {"name": self.name, "net": self.net.config(), "shift_input": self.shift_input}

    def forward(self, y: torch.Tensor, t: torch.Tensor, mu: torch.Tensor | None = None, **cond) -> torch.Tensor:
        mu = check_mu(mu, y)
        mu = mu.to(y.dtype)
        z = torch.cat([y + mu if self.shift_input else y, mu], dim=1)
        out = self.net(z, t, **cond)
        return out[:, : y.shape[1]]


# --- degradations (for training pairs and the demo) -------------------------------------------------
DEGRADATIONS = ("noise", "blur", "blur-noise")


def degrade(x0: torch.Tensor, kind: str = "noise", *, std: float = 0.3, blur: float = 1.0, generator=None):
    """A degraded copy ``mu`` of clean data ``x0`` ``[B, ...]``.

    ``"noise"``: ``x0 + std * N(0, I)``; ``"blur"``: a Gaussian blur of width ``blur`` pixels over the last two
    dimensions (images ``[B, C, H, W]``, reflect padding); ``"blur-noise"``: both. Noise is drawn on the CPU from
    ``generator`` (the same on every device).
    """
    check_choice("kind", kind, DEGRADATIONS)
    std = check_finite_float("std", std, 0.0)
    out = x0
    if kind in ("blur", "blur-noise"):
        blur = check_finite_float("blur", blur, 0.0, strict=True)
        if x0.dim() != 4:
            raise ValueError(f"kind={kind!r} needs images [B, C, H, W], got shape {tuple(x0.shape)}")
        r = max(1, math.ceil(2 * blur))
        u = torch.arange(-r, r + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (u / blur) ** 2)
        w = (w / w.sum()).to(device=x0.device, dtype=x0.dtype)
        c = x0.shape[1]
        pad = torch.nn.functional.pad(out, (r, r, r, r), mode="reflect" if min(x0.shape[-2:]) > r else "replicate")
        pad = torch.nn.functional.conv2d(pad, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = torch.nn.functional.conv2d(pad, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if kind in ("noise", "blur-noise") and std > 0:
        dt = torch.float64 if x0.dtype == torch.float64 else torch.float32
        z = torch.randn(x0.shape, generator=generator, dtype=dt).to(device=x0.device, dtype=x0.dtype)
        out = out + std * z
    return out


# --- sampling ----------------------------------------------------------------------------------------
#: The MRS samplers of Li et al. (2024) as pfode solvers on ``y = x - mu`` (each is the paper's update in the
#: shifted variable; tests/test_mean_reverting.py checks the equality step for step).
MRS_SOLVERS = {
    "mrs-ode-1": "ddim",  # first order, data or noise prediction (the same update)
    "mrs-ode-2-noise": "dpm2",  # noise prediction, second-order singlestep (DPM-Solver-2)
    "mrs-ode-2-data": "dpm++2m",  # data prediction, second-order multistep (DPM-Solver++(2M))
    "mrs-ode-3-data": "dpm++3m",  # data prediction, third-order multistep
    "mrs-sde-1-noise": "euler-maruyama",  # noise prediction SDE, first order (eta = 1)
    "mrs-sde-1-data": "ddpm",  # data prediction SDE, first order (SDE-DPM-Solver++1 = DDIM with eta = 1)
    # data prediction SDE, second-order multistep: SDE-DPM-Solver++(2M) with the paper's (midpoint) correction
    "mrs-sde-2-data": ("dpm++2m-sde", {"solver_type": "midpoint"}),
}


def _solver(solver):
    from .solvers import get

    if isinstance(solver, str) and solver in MRS_SOLVERS:
        entry = MRS_SOLVERS[solver]
        name, opts = (entry, {}) if isinstance(entry, str) else entry
        return get(name, **opts)
    return get("dpm++2m" if solver is None else solver)


def _check_den(den):
    from .predictions import check_denoiser

    check_denoiser(den, "den")
    if not isinstance(den.path, MeanReverting):
        raise ValueError(
            f"den.path is {den.path!r}; mean-reverting sampling needs a pfode.mean_reverting.MeanReverting path"
        )


def clipped(den, lo: float = -1.0, hi: float = 1.0):
    """``den`` with its data estimate clipped to the data range: ``x0_hat = clamp(mu + y0_hat, lo, hi)``.

    Static thresholding (Ho et al., 2020; DPM-Solver++'s ``thresholding`` for pixel data) in ``x``: the bounds act on
    ``x0 = y0 + mu``, so they differ per sample in ``y``. Returns an x0-prediction :class:`pfode.Denoiser` on the same
    path (its network takes ``mu=``). A network of noise prediction turns its error into ``x0_hat`` divided by
    ``alpha``, which is ``alpha_end`` (0.005 by default) at ``t_max``: clipping keeps few-step samplers stable.
    """
    from .predictions import Denoiser

    _check_den(den)
    lo, hi = check_finite_float("lo", lo), check_finite_float("hi", hi)
    if not lo < hi:
        raise ValueError(f"lo={lo!r}, hi={hi!r}: need lo < hi")

    def net(y, t, mu=None, **cond):
        mu = check_mu(mu, y)
        x0, _ = den.pair_at(y, as_f64(t), {**cond, "mu": mu})
        return (torch.clamp(x0 + mu, lo, hi) - mu).to(y.dtype)

    return Denoiser(net, den.path, prediction="x0", time_input="t")


def _start(den, mu, x_T, t_start, generator):
    """``(y_T, t_start)``: ``x_T - mu``, or ``sigma(t_start) eps`` drawn from ``generator``."""
    path = den.path
    ts = path.t_max if t_start is None else float(t_start)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or x_T.shape != mu.shape:
            raise ValueError(f"x_T must be a tensor shaped like mu {tuple(mu.shape)}")
        return x_T - mu, ts
    dt = torch.float64 if mu.dtype == torch.float64 else torch.float32
    eps = torch.randn(mu.shape, generator=generator, dtype=dt).to(device=mu.device, dtype=mu.dtype)
    return float(path.sigma(ts)) * eps, ts


def sample(
    den,
    mu: torch.Tensor,
    grid=None,
    solver=None,
    *,
    nfe: int | None = None,
    x_T: torch.Tensor | None = None,
    t_start: float | None = None,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    clip: tuple[float, float] | None = None,
    **options,
) -> torch.Tensor:
    """Restore ``x_0`` from ``mu`` with a mean-reverting model: any pfode solver on ``y = x - mu`` (MRS).

    Args:
        den: a :class:`pfode.Denoiser` on a :class:`MeanReverting` path whose network takes ``mu=`` (e.g. a
            :class:`MuConcat`).
        mu: the degraded inputs ``[B, ...]`` (the mean the forward SDE reverts to).
        grid, solver, nfe: as :func:`pfode.sample`; ``solver`` may also be an MRS name of :data:`MRS_SOLVERS`
            (default ``"dpm++2m"`` = MRS-ODE data prediction, second-order multistep).
        x_T: the starting state in ``x`` (default ``mu + sigma(t_start) eps`` with ``eps`` from ``generator``,
            the stationary law's sample; ``alpha(t_start) (x_0 - mu)`` is neglected, as in IR-SDE and MRS).
        t_start: the starting time (default ``path.t_max``; also the grid's start when ``nfe`` is given).
        generator: seeds ``eps`` and the noise of stochastic solvers.
        cond: further conditioning for the network (``mu`` is added).
        clip: ``(lo, hi)``: clip the data estimate ``x0_hat`` to the data range (:func:`clipped`); default none.
        options: passed to :func:`pfode.sample` (``denoise``, ``spacing``, ``t_end``, ``return_info``, ...).
    Returns:
        ``x`` shaped like ``mu`` (or a :class:`pfode.SampleOutput` with ``return_info``/``return_trajectory``,
        whose states are in ``x`` too).

    Paper: Li et al., MRS: A Fast Sampler for Mean Reverting Diffusion based on ODE and SDE Solvers, 2024.
    """
    from .sample import SampleOutput
    from .sample import sample as pf_sample

    _check_den(den)
    mu = check_mu(mu)
    if clip is not None:
        den = clipped(den, *clip)
    if cond is not None and "mu" in cond:
        raise ValueError("give mu once, as the mu argument (not in cond)")
    y_T, ts = _start(den, mu, x_T, t_start, generator)
    if grid is None and t_start is not None:
        options["t_start"] = ts
    out = pf_sample(
        den, y_T, grid, _solver(solver), nfe=nfe, generator=generator, cond={**(cond or {}), "mu": mu}, **options
    )
    if isinstance(out, SampleOutput):
        out.x = out.x + mu
        if out.trajectory is not None:
            out.trajectory = [y + mu for y in out.trajectory]
        return out
    return out + mu


@torch.no_grad()
def sample_euler_maruyama(
    den,
    mu: torch.Tensor,
    steps: int = 100,
    *,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    noise=None,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """IR-SDE's sampler: Euler-Maruyama of the reverse MR-SDE in ``t`` on a uniform grid (``steps`` evaluations).

    ``dx = [theta_t (mu - x) - g_t^2 grad log p_t(x)] dt + g_t dw`` backwards from ``t_max`` to ``0`` with
    ``g_t^2 = 2 lambda^2 theta_t`` and the score ``-eps_hat / sigma``: each step
    ``x <- x - [theta (mu - x) + g^2 eps_hat / sigma] dt + g sqrt(dt) z`` (the last one too, as IR-SDE does).
    Weak order 1; the baseline the MRS samplers are compared with (Luo et al. use 100 steps).

    Args:
        den, mu, x_T, generator, cond: as :func:`sample`.
        steps: grid intervals = network evaluations (``>= 1``).
        noise: optional callable returning standard normal noise shaped like ``mu`` (default: ``generator``).
        clip: ``(lo, hi)``: clip ``x0_hat`` to the data range (:func:`clipped`; ``eps_hat`` follows it).
    Returns:
        ``x`` ``[B, ...]`` shaped like ``mu``.

    Paper: Luo et al., Image Restoration with Mean-Reverting Stochastic Differential Equations, ICML 2023.
    """
    _check_den(den)
    mu = check_mu(mu)
    check_int("steps", steps, 1)
    if clip is not None:
        den = clipped(den, *clip)
    path = den.path
    y, ts = _start(den, mu, x_T, None, generator)
    times = torch.linspace(ts, 0.0, steps + 1, dtype=torch.float64)
    theta = path.theta(times).tolist()
    g2 = path.g2(times).tolist()
    sig = path.sigma(times).tolist()
    dt_ = torch.float64 if mu.dtype == torch.float64 else torch.float32
    if noise is None:

        def noise():
            return torch.randn(mu.shape, generator=generator, dtype=dt_).to(device=mu.device, dtype=mu.dtype)

    c = {**(cond or {}), "mu": mu}
    for i in range(steps):
        dt = float(times[i] - times[i + 1])
        _, eps = den.pair_at(y, times[i], c)
        # reverse drift of y: f y - g^2 score = -theta y + g^2 eps / sigma, integrated over -dt
        y = y * (1.0 + theta[i] * dt) - (g2[i] * dt / sig[i]) * eps.to(y.dtype) + math.sqrt(g2[i] * dt) * noise()
    return y + mu


# --- closed-form truth --------------------------------------------------------------------------------
def exact_denoiser(target, path: MeanReverting):
    """The exact denoiser of a mean-reverting model for data ``x_0 ~ target`` independent of ``mu``.

    ``target``: a :class:`pfode.analytic.Gaussian` or :class:`~pfode.analytic.GaussianMixture` (``d`` features).
    With ``y_0 = x_0 - mu``, ``y_t + alpha mu = alpha x_0 + sigma eps`` is ``target`` on the same affine path, so
    ``E[y_0 | y_t, mu] = E[x_0 | x'_t = y_t + alpha mu] - mu`` by :mod:`pfode.analytic`; ``mu`` may differ per
    sample. Returns an x0-prediction :class:`pfode.Denoiser` (its network takes ``mu=``), float64.
    """
    from .predictions import Denoiser

    if not isinstance(path, MeanReverting):
        raise TypeError(f"path must be a MeanReverting path, got {type(path).__name__}")

    def net(y, t, mu=None):
        mu = check_mu(mu, y)
        t = as_f64(t).to(y.device)
        a = path.alpha(t).reshape((-1,) + (1,) * (y.dim() - 1)).to(y.device)
        x0, _ = target.x0_eps(y.to(torch.float64) + a * mu.to(torch.float64), t, path)
        return (x0 - mu.to(torch.float64)).to(y.dtype)

    return Denoiser(net, path, prediction="x0", time_input="t")


def flow_map(target, x_T: torch.Tensor, mu: torch.Tensor, T, t, path: MeanReverting) -> torch.Tensor:
    """The exact PF-ODE solution of the mean-reverting model at time ``t`` from ``x_T`` at ``T`` (in ``x``).

    ``target``: a :class:`pfode.analytic.Gaussian` of ``x_0`` (independent of ``mu``); the flow of
    ``y + alpha mu`` is the Gaussian's flow map on the same path. Float64, shaped like ``x_T``.
    """
    b = x_T.shape[0]
    shape = (-1,) + (1,) * (x_T.dim() - 1)
    aT = path.alpha(as_f64(T)).expand(b).reshape(shape)
    at = path.alpha(as_f64(t)).expand(b).reshape(shape)
    mu = mu.to(torch.float64)
    y_T = x_T.to(torch.float64) - mu
    z = target.flow_map(y_T + aT * mu, T, t, path)
    return z - at * mu + mu
