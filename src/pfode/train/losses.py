"""Training objectives for every path and prediction type.

Denoising score matching (:class:`DenoisingScoreMatching`)
    Draw data ``x0``, noise ``eps`` (from a coupling) and a time ``t`` (from a time sampler), form
    ``x_t = alpha(t) x0 + sigma(t) eps`` and regress the network output onto
    ``target = from_x0_eps(prediction, x0, eps, coeffs(t))`` -- the output a perfect network of that
    prediction type would give for this ``(x0, eps)`` (``eps``, ``x0``, ``v = alpha eps - sigma x0``,
    ``score = -eps / sigma`` or the conditional velocity ``alpha' x0 + sigma' eps``).

Flow matching (:class:`FlowMatching`)
    Conditional flow matching / rectified flow (Lipman et al., 2023; Liu et al., 2023): the same with
    the velocity prediction on the :class:`~pfode.paths.Linear` path (target ``eps - x0``), the
    ``"native"`` weighting, optionally the pseudo-Huber metric of Lee et al. (2024), and any coupling.

Consistency models (:class:`Consistency`)
    Consistency training and distillation (Song et al., 2023) with the improvements of Song & Dhariwal
    (2024): stop-gradient target, pseudo-Huber metric, ``1 / (s_{i+1} - s_i)`` weighting, discretisation
    curriculum and discretised log-normal step sampling, on any path (in ``s = sigma / alpha``).

Weighting convention
--------------------
Every weighting is a weight ``w(t)`` on the **x0-space** squared error ``|x0_hat - x0|^2``, a function
of ``SNR = alpha^2 / sigma^2`` (EDM's ``sigma`` is ``s = sigma / alpha = SNR^(-1/2)``):

=============  =======================================  ======================================
name           ``w`` on ``|x0_hat - x0|^2``              equals
=============  =======================================  ======================================
``uniform``    ``1``                                     x0-MSE
``snr``        ``SNR``                                   eps-MSE (DDPM's L_simple)
``min-snr``    ``min(SNR, gamma)``                       Hang et al. (2023), gamma = 5
``edm``        ``SNR + 1 / sigma_data^2``                Karras et al. (2022) ``lambda(sigma)``
``sigmoid``    ``SNR * sigmoid(bias - log SNR)``         Kingma & Gao (2023), eps-space sigmoid
``native``     --                                        plain MSE on the network's own output
=============  =======================================  ======================================

At a fixed ``x_t`` each prediction's error is a per-time multiple of the x0 error:
``|out - target|^2 = k(t) |x0_hat - x0|^2`` with ``k = 1`` (x0), ``SNR`` (eps),
``((alpha^2 + sigma^2) / sigma)^2`` (v), ``alpha^2 / sigma^4`` (score) and
``((alpha sigma' - sigma alpha') / sigma)^2`` (velocity). The loss on the network's output is therefore
``w(t) / k(t) * |out - target|^2`` (:func:`loss_weight`), which makes the same weighting name give the
same objective (the same minimiser *and* the same gradient scale per time) for every prediction type.
``"native"`` skips the conversion (factor 1). Metrics act on the scaled error
``e = sqrt(w / k) (out - target)``: ``"l2"`` is ``mean(e^2)`` over the sample's elements;
``"pseudo-huber"`` is ``sqrt(|e|^2 + c^2) - c`` with ``c = 0.00054 sqrt(d)`` by default (Song &
Dhariwal, 2024; used for rectified flows by Lee et al., 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..nets.consistency import ConsistencyModel
from ..paths import Path, get_path
from ..predictions import PREDICTIONS, TIME_INPUTS, Coeffs, Denoiser, from_x0_eps
from .couplings import Coupling, get_coupling

__all__ = [
    "WEIGHTINGS",
    "TIME_SAMPLERS",
    "METRICS",
    "OBJECTIVES",
    "x0_weight",
    "error_scale",
    "loss_weight",
    "metric",
    "TimeSampler",
    "Objective",
    "DenoisingScoreMatching",
    "FlowMatching",
    "Consistency",
    "ConsistencyModel",
    "consistency_sample",
    "get_objective",
]

WEIGHTINGS = ("native", "uniform", "snr", "min-snr", "edm", "sigmoid")
TIME_SAMPLERS = ("uniform", "logit-normal", "edm-lognormal", "u-shaped")
METRICS = ("l2", "pseudo-huber")
OBJECTIVES = (
    "dsm",
    "flow-matching",
    "consistency-training",
    "consistency-distillation",
    "mean-reverting",
    "interpolant",
    "distill",
    "rectified-diffusion",
    "idode",
    "dsm-fp",
    "consistency-fm",
    "ctm",
)


# --- weightings ---------------------------------------------------------------------------------
def _log_snr(c: Coeffs) -> torch.Tensor:
    a, s = as_f64(c.alpha), as_f64(c.sigma)
    return 2.0 * (torch.log(a) - torch.log(s))


def x0_weight(weighting: str, c: Coeffs, *, gamma: float = 5.0, sigma_data: float = 0.5, bias: float = 0.0):
    """The weight ``w(t)`` on ``|x0_hat - x0|^2`` (float64) for coefficients ``c`` (see the module table)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "native":
        raise ValueError("weighting='native' has no x0-space form: it is the plain MSE on the network output")
    ls = _log_snr(c)
    if weighting == "uniform":
        return torch.ones_like(ls)
    if weighting == "snr":
        return torch.exp(ls)
    if weighting == "min-snr":
        return torch.clamp(torch.exp(ls), max=float(gamma))
    if weighting == "edm":
        return torch.exp(ls) + 1.0 / float(sigma_data) ** 2
    return torch.exp(ls + torch.nn.functional.logsigmoid(float(bias) - ls))  # sigmoid


def error_scale(prediction: str, c: Coeffs) -> torch.Tensor:
    """``k(t)`` with ``|out - target|^2 = k |x0_hat - x0|^2`` at fixed ``x_t`` (float64)."""
    check_choice("prediction", prediction, PREDICTIONS)
    a, s = as_f64(c.alpha), as_f64(c.sigma)
    if prediction == "x0":
        return torch.ones_like(a * s)
    if prediction == "eps":
        return (a / s) ** 2
    if prediction == "v":
        return ((a * a + s * s) / s) ** 2
    if prediction == "score":
        return (a / (s * s)) ** 2
    return ((a * as_f64(c.d_sigma) - s * as_f64(c.d_alpha)) / s) ** 2


def loss_weight(weighting: str, prediction: str, c: Coeffs, **options) -> torch.Tensor:
    """Factor ``w(t) / k(t)`` on ``|out - target|^2`` for a ``prediction``-type network (1 for ``native``)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "native":
        return torch.ones_like(as_f64(c.alpha) * as_f64(c.sigma))
    return x0_weight(weighting, c, **options) / error_scale(prediction, c)


def metric(name: str, err: torch.Tensor, huber_c: float | None = None) -> torch.Tensor:
    """Per-sample distance from an error ``[B, ...]``: ``"l2"`` (mean of squares) or ``"pseudo-huber"``."""
    check_choice("metric", name, METRICS)
    flat = err.reshape(err.shape[0], -1)
    if name == "l2":
        return flat.pow(2).mean(1)
    c = 0.00054 * math.sqrt(flat.shape[1]) if huber_c is None else float(huber_c)
    return torch.sqrt(flat.pow(2).sum(1) + c * c) - c


# --- time samplers ------------------------------------------------------------------------------
class TimeSampler:
    """Training times ``t`` on a path (float64 ``[n]``).

    * ``"uniform"``: uniform on ``t_range``;
    * ``"logit-normal"``: ``u = sigmoid(mean + std n)`` mapped affinely onto ``t_range`` (Esser et al., 2024);
    * ``"edm-lognormal"``: ``log s ~ N(p_mean, p_std^2)`` with ``s = sigma / alpha`` (Karras et al., 2022;
      ``s`` is EDM's sigma on every path), ``t = path.t_of_s(s)`` clipped to ``t_range``;
    * ``"u-shaped"``: density proportional to ``cosh(a (u - 1/2))`` on ``u`` in ``[0, 1]`` (Lee et al., 2024,
      ``a = 4``: the mixture of ``exp(a u)`` and its mirror image), drawn by inverting its CDF
      ``u = 1/2 + asinh((2 r - 1) sinh(a / 2)) / a``, then mapped onto ``t_range``.

    Args:
        name: one of :data:`TIME_SAMPLERS`.
        path: the path (for ``t_of_s`` and the default range).
        t_range: ``(t0, t1)``; default ``(path.t_min, path.t_max)``.
    """

    def __init__(
        self,
        name: str = "uniform",
        path: Path | None = None,
        t_range: tuple[float, float] | None = None,
        *,
        mean: float = 0.0,
        std: float = 1.0,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        a: float = 4.0,
    ):
        self.name = check_choice("time_sampler", name, TIME_SAMPLERS)
        self.path = get_path(path) if path is not None else None
        if t_range is None:
            if self.path is None:
                raise ValueError("TimeSampler needs path= or t_range=")
            t_range = (self.path.t_min, self.path.t_max)
        t0, t1 = (check_finite_float("t_range", float(v)) for v in t_range)
        if not t0 < t1:
            raise ValueError(f"t_range={t_range!r}: need t0 < t1")
        if self.path is not None and not (self.path.t_lo <= t0 and t1 <= self.path.t_hi):
            raise ValueError(f"t_range={t_range!r} lies outside [{self.path.t_lo}, {self.path.t_hi}] of {self.path!r}")
        if name == "edm-lognormal" and self.path is None:
            raise ValueError("time_sampler='edm-lognormal' needs the path (to map s = sigma/alpha to t)")
        self.t_range = (t0, t1)
        self.mean, self.std = (
            check_finite_float("mean", mean),
            check_finite_float("std", std, 0.0, strict=True),
        )
        self.p_mean = check_finite_float("p_mean", p_mean)
        self.p_std = check_finite_float("p_std", p_std, 0.0, strict=True)
        self.a = check_finite_float("a", a, 0.0, strict=True)

    def unit(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The draw on ``[0, 1]`` before mapping onto ``t_range`` (not for ``edm-lognormal``)."""
        if self.name == "uniform":
            return torch.rand(n, generator=generator, dtype=torch.float64)
        if self.name == "logit-normal":
            return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))
        if self.name == "u-shaped":
            r = torch.rand(n, generator=generator, dtype=torch.float64)
            return 0.5 + torch.asinh((2.0 * r - 1.0) * math.sinh(self.a / 2)) / self.a
        raise ValueError("edm-lognormal draws s, not a unit variable")

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        check_int("n", n, 1)
        t0, t1 = self.t_range
        if self.name == "edm-lognormal":
            s = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64))
            return self.path.t_of_s(s).clamp(t0, t1)
        return t0 + (t1 - t0) * self.unit(n, generator)

    def spec(self) -> dict:
        out = {"name": self.name, "t_range": list(self.t_range)}
        if self.name == "logit-normal":
            out.update(mean=self.mean, std=self.std)
        elif self.name == "edm-lognormal":
            out.update(p_mean=self.p_mean, p_std=self.p_std)
        elif self.name == "u-shaped":
            out.update(a=self.a)
        return out


# --- objectives ---------------------------------------------------------------------------------
class Objective:
    """Base class: ``prepare`` draws the random parts of a global batch; ``loss`` evaluates a (local) batch.

    The trainer calls ``prepare(batch, generator, step)`` with the *global* batch on every process (the
    same generator state everywhere), slices the result per process and calls
    ``loss(model, local_batch, step=..., target_model=...)`` which returns ``(mean, per_sample)``.
    """

    name = "objective"
    path: Path
    coupling: Coupling
    target_kind = "stopgrad"  # "ema": the trainer passes its EMA model to ``loss`` as ``target_model``

    def prepare(self, batch, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model, batch: dict, *, step: int = 0, target_model=None):
        raise NotImplementedError

    def wrap(self, net: nn.Module) -> nn.Module:
        """The module the trainer optimises for network ``net`` (itself, except for consistency)."""
        return net

    def denoiser(self, model) -> Denoiser:
        """The trained ``model`` as a :class:`pfode.Denoiser` (its path, prediction type and time input)."""
        raise NotImplementedError

    def denoiser_spec(self) -> dict:
        """The JSON description (:meth:`pfode.Denoiser.spec`) of the denoiser a model trained here is;
        ``ValueError`` for an :class:`~pfode.paths.Affine` path or a callable ``time_input``."""
        return self.denoiser(_no_net).spec()

    def sample(self, model, z: torch.Tensor, **options) -> torch.Tensor:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError


def _no_net(x, t):
    return x


def _split(batch):
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a paired batch must be (x0, eps), got {len(batch)} tensors")
        return batch[0], batch[1]
    return batch, None


class DenoisingScoreMatching(Objective):
    """Denoising score matching in any prediction type on any path.

    Args:
        path: a :class:`~pfode.paths.Path` or a name for :func:`pfode.paths.get_path`.
        prediction: what the network outputs (``eps``, ``x0``, ``v``, ``score``, ``velocity``).
        weighting: a name from :data:`WEIGHTINGS` (see the module's convention).
        time_sampler: a name from :data:`TIME_SAMPLERS` or a :class:`TimeSampler`.
        time_input: what the network sees as time (as :class:`pfode.Denoiser`).
        coupling: ``"independent"``, ``"minibatch-ot"``, ``"reflow"``/``"paired"`` or a coupling object.
        metric: ``"l2"`` or ``"pseudo-huber"``.
        t_range: training times (default ``(path.t_min, path.t_max)``).
        gamma, sigma_data, sigmoid_bias: weighting parameters; ``huber_c``: pseudo-Huber constant.
        sampler_options: extra options of :class:`TimeSampler` (``mean``, ``std``, ``p_mean``, ``p_std``,
            ``a``).
    """

    name = "dsm"

    def __init__(
        self,
        path: Path | str = "vp",
        prediction: str = "eps",
        weighting: str = "native",
        time_sampler: str | TimeSampler = "uniform",
        time_input: str | Callable = "t",
        coupling: str | Coupling = "independent",
        metric: str = "l2",
        t_range: tuple[float, float] | None = None,
        gamma: float = 5.0,
        sigma_data: float = 0.5,
        sigmoid_bias: float = 0.0,
        huber_c: float | None = None,
        sampler_options: dict | None = None,
    ):
        self.path = get_path(path)
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        if not callable(time_input):
            check_choice("time_input", time_input, TIME_INPUTS)
        self.time_input = time_input
        if isinstance(time_sampler, TimeSampler):
            self.time_sampler = time_sampler
        else:
            self.time_sampler = TimeSampler(time_sampler, self.path, t_range, **(sampler_options or {}))
        self.coupling = get_coupling(coupling)
        self.metric = check_choice("metric", metric, METRICS)
        self.weight_options = {
            "gamma": check_finite_float("gamma", gamma, 0.0, strict=True),
            "sigma_data": check_finite_float("sigma_data", sigma_data, 0.0, strict=True),
            "bias": check_finite_float("sigmoid_bias", sigmoid_bias),
        }
        self.huber_c = None if huber_c is None else check_finite_float("huber_c", huber_c, 0.0, strict=True)
        self.denoiser(_no_net)  # validates the combination

    # -- batch -------------------------------------------------------------------------------
    def prepare(self, batch, generator, step: int = 0):
        x0, eps = _split(batch)
        x0, eps = self.coupling(x0, eps, generator)
        t = self.time_sampler(x0.shape[0], generator)
        own_noise = getattr(self.path, "noise_from_gaussian", None)  # a path with its own kernel (PFGM++)
        if own_noise is not None:
            eps = own_noise(eps, generator)  # still x_t = alpha x0 + sigma eps: every target stays consistent
        return {"x0": x0, "eps": eps, "t": t}

    def coeffs(self, t: torch.Tensor, like: torch.Tensor) -> Coeffs:
        return Coeffs.at(self.path, as_f64(t).to(like.device), like=like)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)`` for data ``x0``, noise ``eps`` and times ``t`` ``[B]``."""
        c = self.coeffs(t, x0)
        return c.alpha * x0 + c.sigma * eps, from_x0_eps(self.prediction, x0, eps, c)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample factor on ``|out - target|^2`` (float64 ``[B]``)."""
        c = Coeffs.at(self.path, as_f64(t))
        return loss_weight(self.weighting, self.prediction, c, **self.weight_options)

    def denoiser(self, model) -> Denoiser:
        return Denoiser(model, self.path, self.prediction, self.time_input)

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, eps, t = batch["x0"], batch["eps"], batch["t"]
        x_t, target = self.target(x0, eps, t)
        den = self.denoiser(model)
        out = den.raw(x_t, den.time_tensor(t.to(x0.device), x_t))
        scale = self.weight(t).to(device=x0.device, dtype=torch.float32)
        err = (out.float() - target.float()) * scale.sqrt().reshape((-1,) + (1,) * (x0.dim() - 1))
        per = metric(self.metric, err, self.huber_c)
        return per.mean(), per

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, model, z, *, nfe: int = 20, solver="dpm++2m", grid=None, **options):
        """Samples from standard normal ``z`` with :func:`pfode.sample` (``x_T = sigma(T) z``)."""
        from ..sample import sample as pf_sample

        den = self.denoiser(model)
        t_start = float(grid[0]) if grid is not None else options.get("t_start") or self.path.t_max
        if hasattr(self.path, "noise_from_gaussian"):  # PFGM++: the prior is the path's own kernel
            z = self.path.noise_from_gaussian(z, options.get("generator"))
        x_T = float(self.path.sigma(t_start)) * z
        if grid is not None:
            return pf_sample(den, x_T, grid, solver, **options)
        return pf_sample(den, x_T, solver=solver, nfe=nfe, **options)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": repr(self.path),
            "prediction": self.prediction,
            "weighting": self.weighting,
            "time_sampler": self.time_sampler.spec(),
            "time_input": self.time_input if isinstance(self.time_input, str) else "callable",
            "coupling": self.coupling.spec(),
            "metric": self.metric,
            **self.weight_options,
        }


class FlowMatching(DenoisingScoreMatching):
    """Conditional flow matching / rectified flow: velocity regression, by default on the Linear path.

    Target ``u = alpha' x0 + sigma' eps`` (``eps - x0`` on the Linear path ``x_t = (1 - t) x0 + t eps``),
    ``"native"`` weighting, times on the path's whole range ``[t_lo, t_hi]`` where it is finite.
    ``metric="pseudo-huber"`` gives the loss of Lee et al. (2024); ``coupling="minibatch-ot"`` OT-CFM
    (Tong et al., 2024); ``coupling="reflow"`` the reflow of Liu et al. (2023).
    """

    name = "flow-matching"

    def __init__(
        self,
        path: Path | str = "linear",
        time_sampler: str | TimeSampler = "uniform",
        coupling: str | Coupling = "independent",
        metric: str = "l2",
        t_range: tuple[float, float] | None = None,
        time_input: str | Callable = "t",
        huber_c: float | None = None,
        weighting: str = "native",
        sampler_options: dict | None = None,
        **options,
    ):
        p = get_path(path)
        if t_range is None and not isinstance(time_sampler, TimeSampler):
            t_range = (p.t_lo, p.t_hi) if math.isfinite(p.t_hi) else (p.t_min, p.t_max)
        super().__init__(
            p,
            "velocity",
            weighting,
            time_sampler,
            time_input,
            coupling,
            metric,
            t_range,
            huber_c=huber_c,
            sampler_options=sampler_options,
            **options,
        )

    def sample(self, model, z, *, nfe: int = 20, solver=None, grid=None, **options):
        """Euler (in path time) on a uniform grid from ``t_hi`` to ``t_lo`` by default: ``nfe`` steps."""
        from ..solvers import get

        if solver is None and grid is None and self.path.reaches_zero and math.isfinite(self.path.t_hi):
            solver = get("euler", variable="t")
            grid = torch.linspace(self.path.t_hi, self.path.t_lo, nfe + 1, dtype=torch.float64)
        return super().sample(model, z, nfe=nfe, solver=solver or "dpm++2m", grid=grid, **options)


# --- consistency models -------------------------------------------------------------------------
def consistency_sample(model, path: Path, z: torch.Tensor, times, generator: torch.Generator | None = None):
    """Multistep consistency sampling (Song et al., 2023, Algorithm 1) with ``len(times)`` evaluations.

    ``x = f(sigma(T) z, T)`` at ``T = times[0]``, then for each later time ``tau``: re-noise
    ``x_tau = alpha(tau) x + sigma(tau) z'`` and denoise ``x = f(x_tau, tau)``. Times are path times
    (decreasing); fresh noise comes from ``generator``.
    """
    times = [float(t) for t in as_f64(times).reshape(-1).tolist()]
    if not times or any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"times must be a non-empty decreasing list of path times, got {times}")
    with torch.no_grad():
        x = model(float(path.sigma(times[0])) * z, torch.full((z.shape[0],), times[0], dtype=torch.float64))
        for tau in times[1:]:
            n = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            x_tau = float(path.alpha(tau)) * x + float(path.sigma(tau)) * n
            x = model(x_tau, torch.full((z.shape[0],), tau, dtype=torch.float64))
    return x


class Consistency(Objective):
    """Consistency training (``mode="training"``) or distillation (``mode="distillation"``).

    The boundaries are ``s_i`` (``s = sigma / alpha``), ``i = 0..N-1``, Karras-spaced (``rho``) from
    ``s(t_min)`` to ``s(t_max)``; ``t_i = path.t_of_s(s_i)``. Each sample draws a step ``i``
    (``index_sampler``: ``"uniform"`` or ``"lognormal"`` -- the discretised log-normal of Song & Dhariwal,
    2024) and pairs ``x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} eps`` with

    * training: ``x_i = alpha_i x0 + sigma_i eps`` (the same ``eps``: the conditional PF-ODE trajectory);
    * distillation: one step of the ``teacher`` (a :class:`pfode.Denoiser`, any path and prediction) from
      ``x_{i+1}`` to ``t_i``: DDIM (``teacher_solver="ddim"``, Euler in ``s``) or Heun in ``s``.

    The loss is ``lambda_i d(f(x_{i+1}, t_{i+1}), f^-(x_i, t_i))`` with ``lambda_i = 1 / (s_{i+1} - s_i)``,
    ``d`` the metric and ``f^-`` the stop-gradient model (``target="stopgrad"``, iCT) or the trainer's EMA
    (``target="ema"``, as in Song et al., 2023). ``N`` follows the curriculum ``N(k) = min(s0 2^floor(k /
    K'), s1) + 1``, ``K' = floor(K / (log2(s1 / s0) + 1))`` over ``total_steps = K`` when ``curriculum=True``,
    else ``N = steps``.
    """

    def __init__(
        self,
        path: Path | str = "edm",
        mode: str = "training",
        teacher: Denoiser | None = None,
        sigma_data: float = 0.5,
        steps: int = 18,
        curriculum: bool = False,
        s0: int = 10,
        s1: int = 1280,
        total_steps: int = 10_000,
        rho: float = 7.0,
        index_sampler: str = "uniform",
        p_mean: float = -1.1,
        p_std: float = 2.0,
        metric: str = "pseudo-huber",
        huber_c: float | None = None,
        target: str = "stopgrad",
        teacher_solver: str = "ddim",
        time_input: str | Callable = "t",
        coupling: str | Coupling = "independent",
        t_range: tuple[float, float] | None = None,
    ):
        self.path = get_path(path)
        self.mode = check_choice("mode", mode, ("training", "distillation"))
        self.name = f"consistency-{self.mode}"
        if self.mode == "distillation" and not isinstance(teacher, Denoiser):
            raise TypeError("mode='distillation' needs teacher= a pfode.Denoiser (any path and prediction)")
        self.teacher = teacher
        self.sigma_data = check_finite_float("sigma_data", sigma_data, 0.0, strict=True)
        self.steps = check_int("steps", steps, 2)
        self.curriculum = bool(curriculum)
        self.s0, self.s1 = check_int("s0", s0, 1), check_int("s1", s1, 1)
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.rho = check_finite_float("rho", rho, 0.0, strict=True)
        self.index_sampler = check_choice("index_sampler", index_sampler, ("uniform", "lognormal"))
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.metric = check_choice("metric", metric, METRICS)
        self.huber_c = huber_c
        self.target_kind = check_choice("target", target, ("stopgrad", "ema"))
        self.teacher_solver = check_choice("teacher_solver", teacher_solver, ("ddim", "heun"))
        self.time_input = time_input
        self.coupling = get_coupling(coupling)
        t0, t1 = t_range if t_range is not None else (self.path.t_min, self.path.t_max)
        self.t_range = (float(t0), float(t1))
        self.s_lo, self.s_hi = float(self.path.s(self.t_range[0])), float(self.path.s(self.t_range[1]))
        if not (0 < self.s_lo < self.s_hi < math.inf):
            raise ValueError(
                f"t_range={self.t_range}: consistency models need 0 < s(t0) < s(t1) < inf (s = sigma/alpha); "
                "keep t0 above zero noise and t1 below pure noise"
            )
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def wrap(self, net):
        if isinstance(net, ConsistencyModel):
            return net
        return ConsistencyModel(net, self.path, self.sigma_data, self.t_range[0], self.time_input)

    def n_points(self, step: int) -> int:
        """Number of discretisation points ``N`` at training step ``step``."""
        if not self.curriculum:
            return self.steps
        kp = max(1, math.floor(self.total_steps / (math.log2(self.s1 / self.s0) + 1)))
        return min(self.s0 * 2 ** (step // kp), self.s1) + 1

    def boundaries(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_i, t_i)`` for ``i = 0..n-1`` (float64, increasing)."""
        if n not in self._cache:
            r = 1.0 / self.rho
            u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
            s = (self.s_lo**r + u * (self.s_hi**r - self.s_lo**r)) ** self.rho
            s[0], s[-1] = self.s_lo, self.s_hi
            t = self.path.t_of_s(s)
            t[0], t[-1] = self.t_range
            self._cache[n] = (s, t)
        return self._cache[n]

    def prepare(self, batch, generator, step: int = 0):
        x0, eps = _split(batch)
        x0, eps = self.coupling(x0, eps, generator)
        n = self.n_points(step)
        s, t = self.boundaries(n)
        b = x0.shape[0]
        if self.index_sampler == "uniform":
            i = torch.randint(0, n - 1, (b,), generator=generator)
        else:
            erf = torch.special.erf((torch.log(s) - self.p_mean) / (math.sqrt(2) * self.p_std))
            p = (erf[1:] - erf[:-1]).clamp_min(0)
            p = p / p.sum() if float(p.sum()) > 0 else torch.full_like(p, 1.0 / (n - 1))
            i = torch.multinomial(p, b, replacement=True, generator=generator)
        return {"x0": x0, "eps": eps, "t_lo": t[i], "t_hi": t[i + 1], "w": 1.0 / (s[i + 1] - s[i])}

    def _teacher_step(self, x_hi, t_hi, t_lo):
        c_hi = Coeffs.at(self.path, t_hi, like=x_hi)
        c_lo = Coeffs.at(self.path, t_lo, like=x_hi)
        tp = self.teacher.path
        # the teacher may live on another path: move to its state at the same s = sigma / alpha
        t_hi_tp = tp.t_of_s(self.path.s(t_hi))
        t_lo_tp = tp.t_of_s(self.path.s(t_lo))
        shape = (-1,) + (1,) * (x_hi.dim() - 1)
        a_tp_hi = tp.alpha(t_hi_tp).to(x_hi).reshape(shape)
        y = x_hi / c_hi.alpha
        x0a, e1 = self.teacher(y * a_tp_hi, t_hi_tp)
        if self.teacher_solver == "ddim":
            return c_lo.alpha * x0a + c_lo.sigma * e1
        h = (self.path.s(t_lo) - self.path.s(t_hi)).to(x_hi).reshape(shape)
        y_e = y + h * e1
        _, e2 = self.teacher(y_e * tp.alpha(t_lo_tp).to(x_hi).reshape(shape), t_lo_tp)
        return c_lo.alpha * (y + 0.5 * h * (e1 + e2))

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, eps = batch["x0"], batch["eps"]
        t_lo, t_hi = batch["t_lo"].to(x0.device), batch["t_hi"].to(x0.device)
        c_hi = Coeffs.at(self.path, t_hi, like=x0)
        x_hi = c_hi.alpha * x0 + c_hi.sigma * eps
        with torch.no_grad():
            if self.mode == "training":
                c_lo = Coeffs.at(self.path, t_lo, like=x0)
                x_lo = c_lo.alpha * x0 + c_lo.sigma * eps
            else:
                x_lo = self._teacher_step(x_hi, t_hi, t_lo)
            tgt_model = target_model if target_model is not None else model
            tgt = tgt_model(x_lo, t_lo)
        pred = model(x_hi, t_hi)
        per = metric(self.metric, pred.float() - tgt.float().detach(), self.huber_c)
        per = per * batch["w"].to(device=per.device, dtype=per.dtype)
        return per.mean(), per

    def denoiser(self, model) -> Denoiser:
        """The consistency model as an x0-predicting :class:`pfode.Denoiser` (path time input)."""
        return Denoiser(model, self.path, "x0", "t")

    def sample_times(self, nfe: int, s_mid: list[float] | None = None) -> torch.Tensor:
        """Path times for ``nfe``-step sampling: ``t_max`` then ``s_mid`` (default Karras-spaced) levels."""
        check_int("nfe", nfe, 1)
        if s_mid is None:
            s, _ = self.boundaries(nfe + 1)
            s_mid = s[1:-1].flip(0).tolist()
        if len(s_mid) != nfe - 1:
            raise ValueError(f"nfe={nfe} needs {nfe - 1} intermediate noise levels, got {len(s_mid)}")
        mids = self.path.t_of_s(torch.tensor(s_mid, dtype=torch.float64)) if s_mid else torch.zeros(0)
        return torch.cat([torch.tensor([self.t_range[1]], dtype=torch.float64), mids.to(torch.float64)])

    def sample(self, model, z, *, nfe: int = 1, times=None, s_mid=None, generator=None, **_):
        """Multistep consistency sampling with ``nfe`` evaluations (or explicit path ``times``)."""
        times = self.sample_times(nfe, s_mid) if times is None else times
        return consistency_sample(model, self.path, z, times, generator)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": repr(self.path),
            "sigma_data": self.sigma_data,
            "steps": self.steps,
            "curriculum": self.curriculum,
            "index_sampler": self.index_sampler,
            "metric": self.metric,
            "target": self.target_kind,
            "teacher_solver": self.teacher_solver if self.teacher else None,
            "teacher": repr(self.teacher) if self.teacher else None,
            "coupling": self.coupling.spec(),
            "t_range": list(self.t_range),
        }


_OBJECTIVES = {
    "dsm": DenoisingScoreMatching,
    "flow-matching": FlowMatching,
    "consistency-training": lambda **o: Consistency(mode="training", **o),
    "consistency-distillation": lambda **o: Consistency(mode="distillation", **o),
    "mean-reverting": lambda **o: _mean_reverting_objective(**o),
    "interpolant": lambda **o: _interpolant_objective(**o),
    "distill": lambda **o: _pairs_objective("Distillation", **o),
    "rectified-diffusion": lambda **o: _pairs_objective("RectifiedDiffusion", **o),
    "idode": lambda **o: _likelihood_objective("idode", **o),
    "dsm-fp": lambda **o: _likelihood_objective("dsm-fp", **o),
    "consistency-fm": lambda **o: _few_step_objective("consistency-fm", **o),
    "ctm": lambda **o: _few_step_objective("ctm", **o),
}


def _few_step_objective(name: str, **options) -> Objective:
    from .consistency_fm import ConsistencyFM  # both import this module
    from .ctm import CTM

    return (ConsistencyFM if name == "consistency-fm" else CTM)(**options)


def _likelihood_objective(name: str, **options) -> Objective:
    from ..fokker_planck import FokkerPlanckDSM  # both import this module
    from .idode import LikelihoodDSM

    return (LikelihoodDSM if name == "idode" else FokkerPlanckDSM)(**options)


def _pairs_objective(cls: str, **options) -> Objective:
    from . import distill  # imports this module

    return getattr(distill, cls)(**options)


def _interpolant_objective(**options) -> Objective:
    from ..interpolants import InterpolantObjective  # imports this module

    return InterpolantObjective(**options)


def _mean_reverting_objective(**options) -> Objective:
    from .mean_reverting import MeanRevertingObjective  # imports this module

    return MeanRevertingObjective(**options)


def get_objective(name: str | Objective, **options) -> Objective:
    """Build an objective by name: ``"dsm"``, ``"flow-matching"``, ``"consistency-training"``,
    ``"consistency-distillation"``."""
    if isinstance(name, Objective):
        if options:
            raise ValueError("options can only be given with an objective name")
        return name
    check_choice("loss", name, OBJECTIVES)
    return _OBJECTIVES[name](**options)
