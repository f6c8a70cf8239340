"""Training on a teacher's fixed (noise, sample) pairs: InstaFlow distillation and Rectified Diffusion.

Both objectives take the pairs ``(x0, z)`` of :func:`pfode.train.generate_reflow_pairs` -- ``z ~ N(0, I)`` and
``x0`` the teacher's PF-ODE solution from ``x_T = sigma(T) z`` -- through a *paired* coupling.

The paired trajectory
---------------------
In the scaled coordinates ``y = x / alpha``, ``s = sigma / alpha`` every affine path's PF-ODE reads
``dy/ds = eps_hat``. A pair is reproduced *exactly* by a model whose trajectory through it is the first-order
("DDIM-straight") path ``x_t = alpha_t x0 + sigma_t e`` with one fixed noise ``e``. The sampler starts at
``x_T = sigma_T z`` (no ``alpha_T x0`` term), so the path through the start point has

    e = z - x0 / s_T,       s_T = sigma_T / alpha_T  (``e = z`` when ``alpha_T = 0``),

and then ``alpha_T x0 + sigma_T e = sigma_T z``. :func:`paired_noise` computes ``e``; both objectives train on
``x_t = alpha_t x0 + sigma_t e``, which makes the pair map an exact optimum (zero loss) of each.

Distillation (:class:`Distillation`, name ``"distill"``)
    InstaFlow (Liu et al., ICLR 2024, Sec. 3): after reflow, regress a one-step student ``x = f(z)`` on the
    pairs with a distance ``D(f(z), x0)`` -- ``"l2"``, ``"pseudo-huber"`` (Song & Dhariwal, 2024) or
    ``"features"`` (a distance in a fixed feature space, the LPIPS stand-in: random Fourier features or any
    frozen network such as a classifier's penultimate layer). The student is an ordinary pfode network of
    any path and prediction type (InstaFlow: the 2-RF velocity network, initialised from it); ``f(z)`` is its
    denoiser output ``x0_hat(sigma_T z, T)`` -- one Euler step to ``t = 0`` for a Linear-path velocity model.
    With ``nfe = k > 1`` (or explicit ``times``) the student is trained at the ``k`` start times of a k-step
    DDIM sampler on the paired trajectory, so it samples in exactly ``k`` evaluations (:func:`ddim_sample`).

Rectified Diffusion (:class:`RectifiedDiffusion`, name ``"rectified-diffusion"``)
    Wang et al. (2024): rectification needs the teacher's matched (noise, sample) pairs, not a straight path
    or v-prediction. It is denoising score matching on the teacher's *own* path and prediction type
    (e.g. cosine-VP with eps-prediction) with ``x_t = alpha_t x0 + sigma_t e`` for the paired ``e``: on the
    Linear path with velocity prediction this is 2-rectified flow, elsewhere a curved path whose PF-ODE is
    first-order (DDIM-exact), so few-step DDIM samples it well.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..paths import Path, get_path
from ..predictions import PREDICTIONS, TIME_INPUTS, Coeffs, Denoiser
from .couplings import Coupling, get_coupling
from .losses import DenoisingScoreMatching, Objective, TimeSampler, _split, metric

__all__ = [
    "DISTANCES",
    "Distillation",
    "RandomFourierFeatures",
    "RectifiedDiffusion",
    "ddim_sample",
    "distill_config",
    "init_student",
    "paired_noise",
    "uniform_times",
]

DISTANCES = ("l2", "pseudo-huber", "features")


# --- shared pieces ------------------------------------------------------------------------------
def paired_noise(x0: torch.Tensor, z: torch.Tensor, s_start: float) -> torch.Tensor:
    """The noise ``e = z - x0 / s_T`` of the first-order path through a pair (see the module docstring).

    Args:
        x0: teacher samples ``[B, ...]``.
        z: the standard normal draws they came from, shaped like ``x0``.
        s_start: ``s_T = sigma_T / alpha_T`` at the sampler's start time (``inf`` gives ``e = z``).
    """
    if x0.shape != z.shape:
        raise ValueError(f"paired noise shape {tuple(z.shape)} differs from the sample shape {tuple(x0.shape)}")
    s_start = float(s_start)
    if not s_start > 0:
        raise ValueError(f"s_start={s_start!r} must be > 0 (sigma/alpha at the start time)")
    return z if math.isinf(s_start) else z - x0 / s_start


def _need_pairs(who: str, eps) -> None:
    if eps is None:
        raise ValueError(
            f"{who} trains on fixed (noise, sample) pairs but the batch has samples only (no paired noise); "
            "give the data as (sample, noise) tensors, e.g. PairStore(dir).load() from "
            "pfode.train.generate_reflow_pairs, with coupling='paired'"
        )


def _check_paired(who: str, coupling: Coupling) -> Coupling:
    if not coupling.paired:
        raise ValueError(
            f"{who} needs a paired coupling ('paired'/'reflow' with the teacher's (sample, noise) pairs), "
            f"got coupling={coupling.name!r}"
        )
    return coupling


def uniform_times(path: Path, nfe: int, t_start: float | None = None) -> torch.Tensor:
    """``nfe`` decreasing start times of a k-step sampler: uniform in ``t`` from ``t_start`` (default
    ``path.t_max``) down to, but not including, ``path.t_min`` (float64 ``[nfe]``)."""
    check_int("nfe", nfe, 1)
    t0 = float(path.t_max if t_start is None else t_start)
    return torch.linspace(t0, float(path.t_min), nfe + 1, dtype=torch.float64)[:-1]


def _check_times(path: Path, times) -> torch.Tensor:
    t = as_f64(times).reshape(-1).cpu()
    if t.numel() < 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"times must be a non-empty list of finite path times, got {t.tolist()}")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"times must decrease strictly (noise to data), got {t.tolist()}")
    if not (float(t.min()) > path.t_lo and float(t.max()) <= path.t_hi):
        raise ValueError(f"times {t.tolist()} must lie in ({path.t_lo}, {path.t_hi}] of {path!r}")
    return t


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, z: torch.Tensor, times) -> torch.Tensor:
    """DDIM (first-order, exponential Euler; Song et al., 2021) on the given start times, ending with the
    denoiser's ``x0_hat``: ``len(times)`` evaluations.

    ``x = sigma(t_0) z``; at each ``t_i``: ``(x0_hat, eps_hat) = D(x, t_i)`` and
    ``x = alpha(t_{i+1}) x0_hat + sigma(t_{i+1}) eps_hat``; after the last time the result is ``x0_hat``. On
    the Linear path with a velocity model this is Euler in ``t`` with the last step to ``t = 0``.

    Args:
        denoiser: a :class:`pfode.Denoiser` (any path and prediction).
        z: standard normal ``[B, ...]``.
        times: decreasing path times ``[k]`` (float64).
    """
    path = denoiser.path
    t = _check_times(path, times)
    ts = t.tolist()
    x = float(path.sigma(ts[0])) * z
    for i, ti in enumerate(ts):
        x0, eps = denoiser.pair_at(x, torch.full((z.shape[0],), ti, dtype=torch.float64))
        if i + 1 == len(ts):
            return x0.to(z.dtype)
        tn = ts[i + 1]
        x = (float(path.alpha(tn)) * x0 + float(path.sigma(tn)) * eps).to(z.dtype)
    return x  # pragma: no cover - the loop always returns


class RandomFourierFeatures(nn.Module):
    """A fixed random feature map ``phi(x) = sqrt(2 / F) cos(W x / l + b)`` (Rahimi & Recht, 2007).

    ``|phi(a) - phi(b)|^2 ~= 2 (1 - exp(-|a - b|^2 / (2 l^2)))`` -- a bounded, robust distance that is
    ``|a - b|^2 / l^2`` for small errors. ``l = bandwidth * sqrt(d)`` for ``d`` features per sample, so for small
    errors the feature distance is the per-element mean squared error over ``bandwidth^2``. ``W ~ N(0, I)``,
    ``b ~ U[0, 2 pi)`` are drawn from ``seed`` on first use (the same on every process and after resume).
    Output ``[B, F]`` for input ``[B, ...]``.
    """

    def __init__(self, dim: int = 512, bandwidth: float = 1.0, seed: int = 0):
        super().__init__()
        self.dim = check_int("features.dim", dim, 1)
        self.bandwidth = check_finite_float("features.bandwidth", bandwidth, 0.0, strict=True)
        self.seed = check_int("features.seed", seed, 0)
        self._wb: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.reshape(x.shape[0], -1)
        d = f.shape[1]
        if self._wb is None or self._wb[0].shape[0] != d:
            g = torch.Generator().manual_seed(self.seed)
            w = torch.randn(d, self.dim, generator=g, dtype=torch.float64) / (self.bandwidth * math.sqrt(d))
            b = 2 * math.pi * torch.rand(self.dim, generator=g, dtype=torch.float64)
            self._wb = (w, b)
        w, b = (v.to(device=f.device, dtype=f.dtype) for v in self._wb)
        return math.sqrt(2.0 / self.dim) * torch.cos(f @ w + b)

    def spec(self) -> dict:
        return {"kind": "random-fourier", "dim": self.dim, "bandwidth": self.bandwidth, "seed": self.seed}


def _features(features):
    if features is None:
        return RandomFourierFeatures()
    if isinstance(features, dict):
        opts = dict(features)
        kind = opts.pop("kind", "random-fourier")
        check_choice("features.kind", kind, ("random-fourier",))
        bad = sorted(set(opts) - {"dim", "bandwidth", "seed"})
        if bad:
            raise ValueError(f"unknown features key(s) {bad}; valid keys: kind, dim, bandwidth, seed")
        return RandomFourierFeatures(**opts)
    if callable(features):
        return features
    raise TypeError(
        "features must be None, a mapping {kind: random-fourier, dim, bandwidth, seed} or a callable "
        f"[B, ...] -> [B, F] (e.g. a frozen network), got {type(features).__name__}"
    )


# --- distillation -------------------------------------------------------------------------------
class Distillation(Objective):
    """InstaFlow-style distillation: a student regressed on fixed (noise, sample) pairs.

    Each sample of a batch draws one of the ``k`` start times ``t_i`` (uniformly), the student sees the state
    ``x_{t_i} = alpha_i x0 + sigma_i e`` of the paired first-order path (``e`` from :func:`paired_noise` with
    ``s_T = s(t_0)``; at ``t_0`` this is exactly the sampler's ``sigma(t_0) z``) and its denoiser output
    ``x0_hat`` is compared with the teacher's sample ``x0`` by the distance:

    * ``"l2"``: mean of squares over the sample's elements;
    * ``"pseudo-huber"``: ``sqrt(|x0_hat - x0|^2 + c^2) - c`` (``c = 0.00054 sqrt(d)`` unless ``huber_c``);
    * ``"features"``: ``sum_j (phi_j(x0_hat) - phi_j(x0))^2`` for :class:`RandomFourierFeatures` (default, or a
      mapping of its options), or the mean over features for a given frozen callable ``phi``.

    ``k = 1`` (default) is InstaFlow's one-step student ``x = f(z) = x0_hat(sigma_T z, T)``; the exact minimiser
    of every distance is the pair map ``z -> x0``. Sampling (:meth:`sample`) runs :func:`ddim_sample` on the
    trained times.

    Args:
        path, prediction, time_input: what the student network is (as :class:`pfode.Denoiser`); InstaFlow:
            ``"linear"``, ``"velocity"``.
        distance: one of :data:`DISTANCES`.
        nfe: number of start times ``k`` (uniform in ``t`` from ``t_start``), or give ``times``.
        times: explicit decreasing start times (path times).
        t_start: first time (default ``path.t_max``).
        coupling: must be paired (``"paired"``/``"reflow"`` or a :class:`~pfode.train.Paired`).
        huber_c: pseudo-Huber constant. features: see above.
    """

    name = "distill"

    def __init__(
        self,
        path: Path | str = "linear",
        prediction: str = "velocity",
        time_input: str | Callable = "t",
        distance: str = "l2",
        nfe: int = 1,
        times=None,
        t_start: float | None = None,
        coupling: str | Coupling = "paired",
        huber_c: float | None = None,
        features=None,
    ):
        self.path = get_path(path)
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        if not callable(time_input):
            check_choice("time_input", time_input, TIME_INPUTS)
        self.time_input = time_input
        self.distance = check_choice("distance", distance, DISTANCES)
        self.coupling = _check_paired("distillation", get_coupling(coupling))
        if times is not None:
            self.times = _check_times(self.path, times)
        else:
            if t_start is not None:
                check_finite_float("t_start", t_start)
            self.times = _check_times(self.path, uniform_times(self.path, check_int("nfe", nfe, 1), t_start))
        self.s_start = float(self.path.s(float(self.times[0])))
        self.huber_c = None if huber_c is None else check_finite_float("huber_c", huber_c, 0.0, strict=True)
        if features is not None and self.distance != "features":
            raise ValueError(f"features= is only used with distance='features', not {self.distance!r}")
        self.features = _features(features) if self.distance == "features" else None
        self.denoiser(_identity)  # validates the path / prediction / time-input combination

    def prepare(self, batch, generator, step: int = 0):
        x0, z = _split(batch)
        _need_pairs("distillation", z)
        x0, z = self.coupling(x0, z, generator)
        i = torch.randint(0, self.times.numel(), (x0.shape[0],), generator=generator)
        return {"x0": x0, "eps": paired_noise(x0, z, self.s_start), "t": self.times[i]}

    def distance_per_sample(self, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``D(x0_hat, x0)`` per sample ``[B]`` (differentiable in ``x0_hat``)."""
        if self.distance in ("l2", "pseudo-huber"):
            return metric(self.distance, x0_hat.float() - x0.float(), self.huber_c)
        fa, fb = self.features(x0_hat.float()), self.features(x0.float()).detach()
        sq = (fa - fb).pow(2).reshape(fa.shape[0], -1)
        return sq.sum(1) if isinstance(self.features, RandomFourierFeatures) else sq.mean(1)

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, e, t = batch["x0"], batch["eps"], batch["t"]
        c = Coeffs.at(self.path, as_f64(t).to(x0.device), like=x0)
        x_t = c.alpha * x0 + c.sigma * e
        x0_hat, _ = self.denoiser(model).pair_at(x_t, as_f64(t).to(x0.device), coeffs=c)
        per = self.distance_per_sample(x0_hat, x0)
        return per.mean(), per

    def denoiser(self, model) -> Denoiser:
        return Denoiser(model, self.path, self.prediction, self.time_input)

    def sample(self, model, z, *, nfe: int | None = None, times=None, **_):
        """:func:`ddim_sample` on the trained start times (``nfe`` other than theirs: a uniform grid of ``nfe``)."""
        if times is None:
            times = self.times if nfe is None or nfe == self.times.numel() else uniform_times(self.path, nfe)
        return ddim_sample(self.denoiser(model), z, times)

    def spec(self) -> dict:
        f = self.features
        return {
            "name": self.name,
            "path": repr(self.path),
            "prediction": self.prediction,
            "time_input": self.time_input if isinstance(self.time_input, str) else "callable",
            "distance": self.distance,
            "times": self.times.tolist(),
            "huber_c": self.huber_c,
            "features": None if f is None else (f.spec() if hasattr(f, "spec") else "callable"),
            "coupling": self.coupling.spec(),
        }


def _identity(x, t):
    return x


# --- rectified diffusion ------------------------------------------------------------------------
class RectifiedDiffusion(DenoisingScoreMatching):
    """Rectified Diffusion (Wang et al., 2024): DSM on the teacher's path and prediction type with its pairs.

    The batch is the teacher's ``(x0, z)`` pairs; the regression uses ``x_t = alpha_t x0 + sigma_t e`` with the
    paired noise ``e = z - x0 / s(t_start)`` (:func:`paired_noise`; ``t_start`` is where sampling starts, by
    default ``path.t_max``, which is also :func:`generate_reflow_pairs`'s default when the teacher has this
    path). Every other argument is :class:`~pfode.train.DenoisingScoreMatching`'s. On the Gaussian pair map the
    exact minimiser gives ``eps_hat(x_t) = e`` along each pair, so DDIM from ``sigma(t_start) z`` reproduces the
    pair in any number of steps; :meth:`sample` runs :func:`ddim_sample` on ``nfe`` uniform times.
    """

    name = "rectified-diffusion"

    def __init__(
        self,
        path: Path | str = "vp",
        prediction: str = "eps",
        weighting: str = "native",
        time_sampler: str | TimeSampler = "uniform",
        time_input: str | Callable = "t",
        coupling: str | Coupling = "paired",
        metric: str = "l2",
        t_range: tuple[float, float] | None = None,
        t_start: float | None = None,
        gamma: float = 5.0,
        sigma_data: float = 0.5,
        sigmoid_bias: float = 0.0,
        huber_c: float | None = None,
        sampler_options: dict | None = None,
    ):
        super().__init__(
            path,
            prediction,
            weighting,
            time_sampler,
            time_input,
            coupling,
            metric,
            t_range,
            gamma,
            sigma_data,
            sigmoid_bias,
            huber_c,
            sampler_options,
        )
        _check_paired("rectified diffusion", self.coupling)
        t0 = self.path.t_max if t_start is None else check_finite_float("t_start", t_start)
        _check_times(self.path, [t0])
        self.t_start = float(t0)
        self.s_start = float(self.path.s(self.t_start))

    def prepare(self, batch, generator, step: int = 0):
        x0, z = _split(batch)
        _need_pairs("rectified diffusion", z)
        x0, z = self.coupling(x0, z, generator)
        t = self.time_sampler(x0.shape[0], generator)
        return {"x0": x0, "eps": paired_noise(x0, z, self.s_start), "t": t}

    def sample(self, model, z, *, nfe: int = 1, times=None, **_):
        """:func:`ddim_sample` on ``times`` or ``nfe`` times uniform in ``t`` from ``t_start``."""
        times = uniform_times(self.path, nfe, self.t_start) if times is None else times
        return ddim_sample(self.denoiser(model), z, times)

    def spec(self) -> dict:
        return {**super().spec(), "t_start": self.t_start}


# --- the reflow -> distillation pipeline ---------------------------------------------------------
def distill_config(cfg: dict, pairs_dir, distance: str = "l2", **objective) -> dict:
    """The configuration of the distillation stage after a reflow run with configuration ``cfg``.

    The student keeps the reflow model's network (``model``), path, prediction type and time input, trains on
    the pair store ``pairs_dir`` (the reflow model's own pairs, as in InstaFlow) with :class:`Distillation`
    and ``distance``; ``train`` is copied. ``objective`` adds :class:`Distillation` options (``nfe``, ...).
    """
    obj = dict(cfg.get("objective") or {})
    name = obj.get("name")
    if name == "flow-matching":
        path, prediction = obj.get("path", "linear"), "velocity"
    elif name in ("dsm", "rectified-diffusion"):
        path, prediction = obj.get("path", "vp"), obj.get("prediction", "eps")
    else:
        raise ValueError(
            f"objective.name={name!r}: distillation follows a flow-matching, dsm or rectified-diffusion reflow"
        )
    dobj = {"name": "distill", "path": path, "prediction": prediction, "distance": distance, "coupling": "reflow"}
    if "time_input" in obj:
        dobj["time_input"] = obj["time_input"]
    dobj.update(objective)
    return {
        "data": {"name": "reflow-pairs", "path": str(pairs_dir)},
        "model": dict(cfg.get("model") or {}),
        "objective": dobj,
        "train": dict(cfg.get("train") or {}),
    }


def init_student(trainer, net: nn.Module) -> None:
    """Start ``trainer``'s model and EMA from ``net``'s weights (InstaFlow initialises the student from 2-RF).

    Only at step 0: a resumed run keeps its checkpoint's weights.
    """
    if trainer.step != 0:
        return
    state = net.state_dict()
    trainer.model.load_state_dict(state, strict=True)
    trainer.ema.load_state_dict(state, strict=True)
