"""Training a mean-reverting (IR-SDE) model: denoising score matching on ``y = x_0 - mu`` conditioned on ``mu``.

For a pair (clean ``x_0``, degraded ``mu``) the forward MR-SDE gives ``x_t - mu = alpha (x_0 - mu) + sigma eps``
(:class:`pfode.mean_reverting.MeanReverting`), so the objective is the ordinary denoising score matching of
:class:`~pfode.train.losses.DenoisingScoreMatching` on data ``y_0 = x_0 - mu`` with the network called as
``net(y_t, t, mu=mu)``: any prediction type and weighting. With ``prediction="eps"`` and the ``"native"``
weighting it is IR-SDE's noise-matching loss (Luo et al., 2023; the paper's maximum-likelihood loss
regresses the same mean of ``x_{t-1}``, and is equivalent up to a per-time weight).

Pairs reach the objective in one of two ways:

* the data are pairs ``(x_0, mu)`` (``Trainer(model, objective, (x0, mu))``): the objective's coupling is
  *paired*, so the trainer takes tuples and slices both;
* the data are clean ``x_0`` and ``degradation={"name": "noise", "std": 0.3}`` (or ``"blur"``, ``"blur-noise"``
  with ``blur``): ``mu`` is drawn afresh for every batch from the trainer's generator
  (:func:`pfode.mean_reverting.degrade`).

:meth:`MeanRevertingObjective.wrap` makes the trained module a :class:`~pfode.mean_reverting.MuConcat` (the
network sees ``cat([x_t, mu])``), so checkpoints carry ``{"name": "mu-concat", "net": ...}`` and the
:class:`~pfode.mean_reverting.MeanReverting` path description; :func:`pfode.models.load` rebuilds both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_finite_float
from ..mean_reverting import DEGRADATIONS, MeanReverting, MuConcat, check_mu, degrade
from ..paths import Path, get_path
from .couplings import Coupling, _noise_like
from .losses import DenoisingScoreMatching, TimeSampler, metric

__all__ = ["MeanRevertingObjective", "MuPairs"]


class MuPairs(Coupling):
    """How ``mu`` reaches a batch: data pairs ``(x_0, mu)`` (``paired``) or a degradation of ``x_0``.

    Called as ``coupling(x0, mu_or_None, generator) -> (x0, mu)``.
    """

    name = "mu-pairs"

    def __init__(self, degradation: dict | None = None):
        self.degradation = None
        if degradation is not None:
            if not isinstance(degradation, dict) or "name" not in degradation:
                raise ValueError(
                    f"degradation={degradation!r} must be a mapping with a 'name' ({', '.join(DEGRADATIONS)}) and "
                    "options std (noise std) and blur (blur width in pixels)"
                )
            opts = dict(degradation)
            kind = opts.pop("name")
            bad = sorted(set(opts) - {"std", "blur"})
            if bad:
                raise ValueError(f"degradation key {bad[0]!r} is unknown; valid keys: name, std, blur")
            if kind not in DEGRADATIONS:
                raise ValueError(f"degradation name={kind!r} is unknown; valid names: {', '.join(DEGRADATIONS)}")
            for k, v in opts.items():
                check_finite_float(f"degradation.{k}", v, 0.0, strict=k == "blur")
            self.degradation = {"name": kind, **{k: float(v) for k, v in opts.items()}}
        self.paired = self.degradation is None

    def __call__(self, x0, mu, generator):
        if mu is None:
            if self.degradation is None:
                raise ValueError(
                    "mu is missing: a mean-reverting objective needs (x0, mu) pairs as data, or a degradation= "
                    "to make mu from x0 (e.g. degradation={'name': 'noise', 'std': 0.3})"
                )
            opts = {k: v for k, v in self.degradation.items() if k != "name"}
            return x0, degrade(x0, self.degradation["name"], generator=generator, **opts)
        if self.degradation is not None:
            raise ValueError("the data are (x0, mu) pairs and degradation= is set: give one of them")
        return x0, check_mu(mu, x0)

    def data(self):
        raise ValueError("a mean-reverting objective trained on pairs needs the (x0, mu) tensors as the data")

    def spec(self) -> dict:
        return {"name": self.name, "degradation": self.degradation}


class MeanRevertingObjective(DenoisingScoreMatching):
    """Denoising score matching of a mean-reverting model on ``y_0 = x_0 - mu`` (see the module docs).

    Args:
        path: a :class:`~pfode.mean_reverting.MeanReverting` path or its description (``"mean-reverting"`` or
            ``{"name": "mean-reverting", "stationary_std": 0.5, ...}``).
        prediction: what the network outputs, for the shifted variable (``eps``: IR-SDE's choice; ``x0``: the
            residual ``x_0 - mu``; ``v``, ``score``, ``velocity``).
        degradation: ``None`` (the data are ``(x_0, mu)`` pairs) or ``{"name": "noise" | "blur" | "blur-noise",
            "std": ..., "blur": ...}`` to draw ``mu`` from ``x_0`` for every batch.
        shift_input: passed to :class:`~pfode.mean_reverting.MuConcat` by :meth:`wrap`.
        weighting, time_sampler, time_input, metric, t_range, gamma, sigma_data, sigmoid_bias, huber_c,
            sampler_options: as :class:`~pfode.train.losses.DenoisingScoreMatching`.

    Paper: Luo et al., Image Restoration with Mean-Reverting Stochastic Differential Equations, ICML 2023.
    """

    name = "mean-reverting"

    def __init__(
        self,
        path: Path | str | dict = "mean-reverting",
        prediction: str = "eps",
        weighting: str = "native",
        time_sampler: str | TimeSampler = "uniform",
        time_input: str | Callable = "t",
        degradation: dict | None = None,
        shift_input: bool = True,
        metric: str = "l2",
        t_range: tuple[float, float] | None = None,
        gamma: float = 5.0,
        sigma_data: float = 0.5,
        sigmoid_bias: float = 0.0,
        huber_c: float | None = None,
        sampler_options: dict | None = None,
    ):
        p = get_path(path)
        if not isinstance(p, MeanReverting):
            raise ValueError(f"path={p!r}: the mean-reverting objective needs a MeanReverting path ('mean-reverting')")
        super().__init__(
            p,
            prediction,
            weighting,
            time_sampler,
            time_input,
            "independent",
            metric,
            t_range,
            gamma,
            sigma_data,
            sigmoid_bias,
            huber_c,
            sampler_options,
        )
        self.coupling = MuPairs(degradation)
        self.shift_input = bool(shift_input)

    def prepare(self, batch, generator, step: int = 0):
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"a mean-reverting batch is (x0, mu), got {len(batch)} tensors")
            x0, mu = batch
        else:
            x0, mu = batch, None
        x0, mu = self.coupling(x0, mu, generator)
        eps = _noise_like(x0, generator)
        t = self.time_sampler(x0.shape[0], generator)
        self._recent_mu = mu[:64].detach()  # what the Trainer's sample plots restore (they pass no mu)
        return {"x0": x0, "mu": mu, "eps": eps, "t": t}

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` as a :class:`~pfode.mean_reverting.MuConcat` (unless it is one already)."""
        return net if isinstance(net, MuConcat) else MuConcat(net, self.shift_input)

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, mu, eps, t = batch["x0"], batch["mu"], batch["eps"], batch["t"]
        y_t, target = self.target(x0 - mu, eps, t)
        den = self.denoiser(model)
        out = den.raw(y_t, den.time_tensor(t.to(x0.device), y_t), {"mu": mu})
        scale = self.weight(t).to(device=x0.device, dtype=torch.float32)
        err = (out.float() - target.float()) * scale.sqrt().reshape((-1,) + (1,) * (x0.dim() - 1))
        per = metric(self.metric, err, self.huber_c)
        return per.mean(), per

    def sample(self, model, z, *, mu=None, nfe: int = 20, solver="dpm++2m", grid=None, **options):
        """Restorations of ``mu`` (``[B, ...]``) with :func:`pfode.mean_reverting.sample`; ``x_T = mu +
        sigma(T) z``. Without ``mu`` (the Trainer's sample plots) the degraded inputs of the most recent training
        batch are restored, repeated to ``z``'s batch; before any batch, ``mu`` is required."""
        from ..mean_reverting import sample as mr_sample

        recent = getattr(self, "_recent_mu", None)
        if mu is None and recent is not None:
            reps = -(-z.shape[0] // recent.shape[0])
            mu = recent.repeat((reps,) + (1,) * (recent.dim() - 1))[: z.shape[0]].to(z.device, z.dtype)
        mu = check_mu(mu, z)
        t_start = float(grid[0]) if grid is not None else options.pop("t_start", None) or self.path.t_max
        x_T = mu + float(self.path.sigma(t_start)) * z
        if grid is not None:
            return mr_sample(self.denoiser(model), mu, grid, solver, x_T=x_T, **options)
        return mr_sample(self.denoiser(model), mu, solver=solver, nfe=nfe, x_T=x_T, t_start=t_start, **options)

    def spec(self) -> dict:
        return {**super().spec(), "path": self.path.spec(), "shift_input": self.shift_input}
