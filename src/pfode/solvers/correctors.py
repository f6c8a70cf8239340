"""Correctors: Langevin moves at a fixed noise level, composable with any fixed-step predictor.

A corrector runs MCMC on the marginal ``p_t`` of the path at one point, in the path's own state ``x``. Its
score is read off the denoiser: with ``eps_hat = (x - alpha x0_hat) / sigma``,

    grad_x log p_t(x) = -eps_hat / sigma,

so a corrector needs ``alpha > 0`` and ``sigma > 0`` where it runs (it is refused elsewhere, naming the corrector,
the path and the point).

* :class:`Langevin`: the Langevin corrector of Song et al. (2021), Algorithms 4 (VE) and 5 (VP). One move, with
  ``z ~ N(0, I)`` and ``g`` the score,

      eps_step = 2 a (r ||z|| / ||g||)^2,        x <- x + eps_step g + sqrt(2 eps_step) z,

  ``r`` the target signal-to-noise ratio ``snr``. ``a`` is Algorithm 5's ``alpha_i`` (the DDPM ``1 - beta_i``):
  on a grid it is the squared ratio ``(alpha(t_prev) / alpha(t))^2`` of the step just taken, the per-step
  ``alpha_bar`` ratio, so that one rule covers every path (it is 1 on VE and EDM, which is Algorithm 4); the
  paper's ``alpha_i`` belongs to the next, lower-noise interval, and on the 1000-step tables of the paper the two
  differ by ``O(beta^2)``. ``alpha_scaling=False`` drops it (on coarse VP grids it is small at high noise).

  Norms: the algorithms write per-sample norms (``norms="sample"``: a sample's result is then independent of the
  batch it is in); Song et al.'s code averages each norm over the batch (``norms="batch"``, the default). In low
  dimension the per-sample ratio ``||z|| / ||g||`` is heavy-tailed (in d = 2, ``1/||g||^2`` has no mean), and a
  sample near a mode takes a huge step: measured on a 2-D Gaussian, 100 moves with per-sample norms inflate the
  covariance 15x, while batch norms keep it within 4%. Use ``"sample"`` for high-dimensional data only.
* :class:`LML`: the Levenberg-Marquardt-Langevin move of Wang et al. (2025). The curvature of ``-log p_t`` is
  approximated by a damped rank-one (Gauss-Newton) matrix built from the model's noise predictions,
  ``lambda I + u u^T`` with ``u = kappa eps_prev + (1 - kappa) eps_hat`` (``eps_prev``: the run's previous noise
  prediction), and the drift direction is the damped Newton direction, by Sherman-Morrison

      d = lambda (lambda I + u u^T)^{-1} eps_hat = eps_hat - u (u . eps_hat) / (lambda + ||u||^2),

  rescaled to the length of ``eps_hat`` (the normalisation of the authors' implementation). The move is the
  Langevin move above with ``-d / sigma`` in place of the score. ``lambda -> inf`` (no curvature) and
  ``kappa = 0`` (``u`` parallel to ``eps_hat``, so ``d`` is ``eps_hat``) give the Langevin corrector exactly.
  The paper applies the direction inside the predictor's update (DDIM, DPM-Solver: no extra evaluation); here it
  is a corrector move, one evaluation (a deliberate choice: a move at a fixed level composes with every predictor
  and its effect on the marginal is measurable, below). Checked against the authors' released schedulers
  (zituitui/LML-diffusion-sampler): the direction formula, the per-sample rescaling to ``||eps_hat||``, the damping
  in the units of the summed squares ``||u||^2`` (no per-element normalisation) and ``u`` as the ``kappa``-blend of
  the previous *plain* prediction (not of the previous direction) are the same here. There, the DDIM scheduler puts
  the direction in place of ``eps_hat`` in DDIM's "direction to x_t" term (optionally only below a ``freeze``
  time), and the DPM-Solver(++) scheduler applies the same formula to the whole first-order increment (for
  DPM-Solver++ ``alpha_next (1 - e^{-h}) x0_hat``, a data-prediction quantity, not ``eps_hat``). Their defaults are
  ``kappa = 0`` (then ``d = eps_hat`` exactly and the sampler is unchanged; the effect needs ``kappa > 0``, given on
  the command line) and ``lamb`` 1 (CIFAR-10 pixels) or 5 (Stable Diffusion latents, ``||eps_hat||^2`` about 16,384:
  relative damping about 3e-4). It is not an exact MCMC move: ``d`` is not the score, the noise is
  isotropic, and ``u`` depends on the state. Measured on a 2-D Gaussian at a fixed level (100 moves from exact
  samples): the covariance grows 4% with Langevin, 6.5% with LML at ``damping=1`` (d = 2, ``||u||^2 < 2``) and
  3.7x at ``damping=0.01``: keep ``damping`` comparable to ``||eps_hat||^2`` (about the number of elements per
  sample). At the paper's scale (1e-4 to 1e-3 on images, nearly undamped) ``d`` is essentially the component of
  ``eps_hat`` orthogonal to ``u``, blown up to ``eps_hat``'s length.

Weak order (``tests/test_solvers_correctors.py::test_corrector_bias_is_first_order_in_its_step``): with the exact
score a Langevin move is the unadjusted Langevin algorithm, whose stationary law on a Gaussian marginal ``N(m, c I)``
has variance ``c / (1 - e / (2c))``, ``e`` the step: a relative excess ``snr^2 + O(snr^4)``, first order in the step.
The step follows ``snr``, not the predictor's grid, so a predictor-corrector sampler at a fixed ``snr`` converges to
an ``O(snr^2)`` floor as its grid is refined, not to zero. LML is first order too when its damping is about
``||eps_hat||^2``; nearly undamped it is not (measured excess 2.2, 1.18, 0.49 at snr 0.3, 0.15, 0.075, d = 16).

:class:`Corrected` wraps any fixed-step predictor: each step runs the predictor's step program, then ``steps``
corrector moves at the step's end point, each one network evaluation (counted in ``Step.evals``, so
``Sampler.nfe`` and ``nfe=`` budgets include them). The step to zero noise (the final denoising step) is never
corrected. :func:`correct` runs a corrector at one noise level.

Multistep predictors: the corrected state is the state the next step starts from, so the predictor evaluates
there and its history (``x0_hat`` at the start of each step) holds values at corrected states; corrector
evaluations never enter the history (their ``x0_hat`` is taken before the move that follows it). A move jumps
between ODE trajectories, so the history's finite differences carry it: measured on a 2-D Gaussian on EDM with the
exact denoiser (W2 to the data, 4000 samples), one Langevin move per step lowers the error of single-step predictors
(DDIM 10 steps 0.21 -> 0.11, Heun 0.18 -> 0.12) and raises that of DPM-Solver++(2M) (0.049 -> 0.109).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_finite_float, check_int, check_state
from ..engine import drive
from .base import Evaluator, Solver, Step, Table, get, register

__all__ = [
    "Corrector",
    "Langevin",
    "LML",
    "Corrected",
    "correct",
    "CORRECTORS",
    "DenoisingMCMC",
    "DMCMCOutput",
    "density_noise_classifier",
]


def _work(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is a half-precision tensor (norms and ratios overflow there), else ``x``."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm, shaped ``[B, 1, ..., 1]`` to broadcast against ``v`` (any trailing shape)."""
    return v.reshape(v.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.reshape(u.shape[0], -1) * v.reshape(v.shape[0], -1)).sum(1).reshape((-1,) + (1,) * (u.dim() - 1))


def _eps(x: torch.Tensor, d: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """``eps_hat = (x - alpha x0_hat) / sigma`` (``x / sigma`` where ``alpha = 0``: ``x0_hat`` plays no part), in
    float32 for half-precision states (the difference cancels at low noise)."""
    if alpha == 0.0:
        return _work(x) / sigma
    return (_work(x) - alpha * _work(d)) / sigma


_TINY = 1e-30


NORMS = ("batch", "sample")


def _group_mean(v: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``v [B]`` over the batch, or over the samples sharing a group id (``groups [B]``)."""
    if groups is None:
        return v.mean().expand_as(v)
    n = int(groups.max()) + 1
    tot = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, groups, v)
    cnt = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, groups, torch.ones_like(v))
    return (tot / cnt.clamp_min(1.0))[groups]


def langevin_move(x, eps, sigma, a: float, snr: float, z, direction=None, norms: str = "batch", groups=None):
    """One Langevin move at noise level ``sigma`` (a float, or per-sample ``[B, 1, ...]``); tensor ops only, the
    state's dtype is kept.

    ``eps``: ``eps_hat`` at ``x`` (the score is ``g = -eps / sigma``); ``z``: standard normal noise; ``a``: the step
    factor; ``direction``: a replacement for ``eps`` in the drift, of the same per-sample norm (LML). The step is
    ``2 a (snr ||z|| / ||g||)^2`` with per-sample norms (``norms="sample"``) or with each norm averaged over the
    batch (``"batch"``; over the samples of one group if ``groups [B]`` gives group ids).
    """
    w, e, zw = _work(x), _work(eps), _work(z)
    view = (-1,) + (1,) * (w.dim() - 1)
    zn, gn = _norm(zw).flatten(), (_norm(e) / sigma).flatten()
    if norms == "batch":
        zn, gn = _group_mean(zn, groups), _group_mean(gn, groups)
    ratio = (zn / gn.clamp_min(_TINY)).reshape(view)
    step = (2.0 * a * snr * snr) * ratio * ratio
    drift = e if direction is None else _work(direction)
    out = w - (step / sigma) * drift + torch.sqrt(2.0 * step) * zw
    return out.to(x.dtype)


class Corrector:
    """A corrector: ``name``, ``paper``, ``snr`` and :meth:`move`, one move at a point given ``x0_hat`` there."""

    name = "corrector"
    paper = ""

    def __init__(self, snr: float = 0.16, norms: str = "batch"):
        self.snr = check_finite_float("snr", snr, 0.0, strict=True)
        self.norms = check_choice("norms", norms, NORMS)

    def move(self, x, d, alpha: float, sigma: float, a: float, z, eps_prev=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_new, eps_hat)``: one move from ``x`` with ``d = x0_hat(x)`` at a point ``(alpha, sigma)``;
        ``a``: the step factor; ``z``: standard normal noise; ``eps_prev``: the previous noise prediction of the
        run (or ``None``)."""
        raise NotImplementedError

    def options(self) -> dict:
        return {"snr": self.snr, "norms": self.norms}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class Langevin(Corrector):
    """Langevin corrector with the signal-to-noise step rule (Song et al., 2021, Algorithms 4 and 5).

    Args:
        snr: the target ratio ``r`` of the drift's norm to the noise's norm (0.16: Song et al.'s CIFAR-10 value).
        norms: ``"batch"`` (each norm averaged over the batch, as Song et al.'s code) or ``"sample"`` (per sample, as
            the algorithms; see the module docs).
    """

    name = "langevin"
    paper = "Song et al., Score-Based Generative Modeling through Stochastic Differential Equations, ICLR 2021"

    def move(self, x, d, alpha, sigma, a, z, eps_prev=None):
        eps = _eps(x, d, alpha, sigma)
        return langevin_move(x, eps, sigma, a, self.snr, z, norms=self.norms), eps


class LML(Corrector):
    """Levenberg-Marquardt-Langevin corrector (Wang et al., 2025): a Langevin move along the damped low-rank
    Newton direction (see the module docs).

    Args:
        snr: the Langevin step rule's signal-to-noise ratio.
        damping: ``lambda > 0``, in the units of ``||eps_hat||^2`` (about the number of elements of a sample);
            large values give the Langevin corrector.
        kappa: weight of the previous noise prediction in the rank-one direction ``u``, in ``[0, 1]``; 0 gives
            the Langevin corrector.
        norms: as for :class:`Langevin`.

    In a :class:`Corrected` sampler the previous noise prediction of the first move of a step is that of the
    predictor's last evaluation in the step; of later moves, the previous move's. :func:`correct` starts without one.
    """

    name = "lml"
    paper = (
        "Wang et al., Unleashing High-Quality Image Generation in Diffusion Sampling Using Second-Order "
        "Levenberg-Marquardt-Langevin, ICCV 2025"
    )

    def __init__(self, snr: float = 0.16, damping: float = 1.0, kappa: float = 0.5, norms: str = "batch"):
        super().__init__(snr, norms)
        self.damping = check_finite_float("damping", damping, 0.0, strict=True)
        self.kappa = check_finite_float("kappa", kappa, 0.0)
        if self.kappa > 1.0:
            raise ValueError(f"kappa={kappa!r} must be in [0, 1]")

    def options(self):
        return {"snr": self.snr, "damping": self.damping, "kappa": self.kappa, "norms": self.norms}

    def direction(self, eps: torch.Tensor, eps_prev: torch.Tensor | None) -> torch.Tensor:
        """The damped low-rank Newton direction ``lambda (lambda I + u u^T)^{-1} eps`` rescaled to ``||eps||``."""
        e = _work(eps)
        u = e if eps_prev is None or self.kappa == 0.0 else self.kappa * _work(eps_prev) + (1.0 - self.kappa) * e
        d = e - u * (_dot(u, e) / (self.damping + _dot(u, u)))
        return d * (_norm(e) / _norm(d).clamp_min(_TINY))

    def move(self, x, d, alpha, sigma, a, z, eps_prev=None):
        eps = _eps(x, d, alpha, sigma)
        return langevin_move(x, eps, sigma, a, self.snr, z, self.direction(eps, eps_prev), self.norms), eps


#: corrector name -> class
CORRECTORS: dict[str, type[Corrector]] = {"langevin": Langevin, "lml": LML}


def _corrector(corrector, options: dict) -> Corrector:
    if isinstance(corrector, Corrector):
        if options:
            raise ValueError(f"corrector options {sorted(options)} can only be given with a corrector name")
        return corrector
    if not isinstance(corrector, str):
        raise TypeError(f"corrector must be a name ({', '.join(CORRECTORS)}) or a Corrector, got {corrector!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector={corrector!r} is unknown; valid names: {', '.join(CORRECTORS)}")
    import inspect

    valid = list(inspect.signature(CORRECTORS[corrector]).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"invalid option(s) {unknown} for corrector {corrector!r}; valid options: {', '.join(valid)}")
    return CORRECTORS[corrector](**options)


def _check_point(corrector: Corrector, path, t: float, alpha: float, sigma: float):
    if not (alpha > 0.0 and sigma > 0.0 and math.isfinite(alpha) and math.isfinite(sigma)):
        raise ValueError(
            f"corrector {corrector.name!r} needs alpha > 0 and sigma > 0 (the score -eps_hat/sigma of p_t), but "
            f"{path!r} has alpha={alpha:g}, sigma={sigma:g} at t={t:g}; correct at a time inside the path's range"
        )


@dataclass(frozen=True, kw_only=True)
class CorrectedStep(Step):
    """A predictor step followed by ``moves`` corrector moves at its end point ``k``.

    ``inner``: the predictor's step; ``alpha_k, sigma_k``: the end point's coefficients; ``factor``: the step
    factor ``a``; ``points``: ``(alpha, sigma)`` of every table point (for the noise prediction of the predictor's
    last evaluation); ``draws``: noise intervals of the draws in call order (for k-diffusion noise samplers).
    """

    inner: Step
    moves: int
    k: int
    alpha_k: float
    sigma_k: float
    factor: float
    points: tuple = ()
    draws: tuple = ()


def _tap(program: Generator, seen: list):
    """Run ``program`` transparently, keeping its last request and answer in ``seen``."""
    try:
        req = next(program)
    except StopIteration as stop:
        return stop.value
    while True:
        d = yield req
        seen[:] = [req, d]
        try:
            req = program.send(d)
        except StopIteration as stop:
            return stop.value


class Corrected(Solver):
    """A predictor-corrector sampler: any fixed-step predictor, then ``steps`` corrector moves per step.

    Args:
        predictor: a fixed-step solver (name or object), e.g. ``"euler-maruyama"`` (Song et al.'s reverse-SDE
            predictor), ``"ddim"``, ``"dpm++2m"``.
        corrector: ``"langevin"``, ``"lml"`` or a :class:`Corrector`.
        steps: corrector moves (network evaluations) at the end of each step (``>= 1``).
        alpha_scaling: multiply the step by ``(alpha(t_prev)/alpha(t))^2`` (Algorithm 5's ``alpha_i``; 1 on VE).
        **options: the corrector's options (``snr``, ``norms``; ``damping``, ``kappa`` for LML).

    Each step costs the predictor's evaluations plus ``steps``; the final step to zero noise is the plain
    denoising step. Stochastic (draws noise through ``noise()``); weak order 1. See the module docs for how
    multistep predictors see corrected states.
    """

    order = 1
    stochastic = True

    def __init__(self, predictor="euler-maruyama", corrector="langevin", steps: int = 1,
                 alpha_scaling: bool = True, **options):
        pred = get(predictor)
        if not isinstance(pred, Solver) or pred.adaptive:
            raise ValueError(
                f"predictor {getattr(pred, 'name', pred)!r} chooses its own steps; a corrector needs a fixed-step "
                "predictor (a grid whose points it corrects at)"
            )
        self.predictor = pred
        self.corrector = _corrector(corrector, options)
        self.steps = check_int("steps", steps, 1)
        if not isinstance(alpha_scaling, bool):
            raise TypeError(f"alpha_scaling must be True or False, got {alpha_scaling!r}")
        self.alpha_scaling = alpha_scaling
        self.evals_per_step = pred.evals_per_step + self.steps
        self.needs_finite_lam = pred.needs_finite_lam
        self.name = f"{pred.name}+{self.corrector.name}"
        self.paper = f"{self.corrector.paper} (corrector); {pred.paper} (predictor)"

    def __repr__(self):
        return f"Corrected({self.predictor.name!r}, {self.corrector!r}, steps={self.steps})"

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, table: Table) -> list[Step]:
        inner = self.predictor.plan(table)
        points = tuple((p.alpha, p.sigma) for p in table.points)  # complete once the predictor has planned
        out: list[Step] = []
        for st in inner:
            p, q = table[st.i], table[st.i + 1]
            if st.zero or q.zero:  # the denoising step (or a full step to zero noise): no p_t to correct at
                out.append(st)
                continue
            _check_point(self.corrector, table.path, q.t, q.alpha, q.sigma)
            a = (p.alpha / q.alpha) ** 2 if self.alpha_scaling else 1.0
            interval = (p.s, q.s)
            own = getattr(st, "draws", None) or ((interval,) if self.predictor.stochastic else ())
            out.append(
                CorrectedStep(
                    i=st.i, order=st.order, evals=st.evals + self.steps, history=st.history, inner=st,
                    moves=self.steps, k=st.i + 1, alpha_k=q.alpha, sigma_k=q.sigma, factor=a, points=points,
                    draws=tuple(own) + (interval,) * self.steps,
                )
            )
        return out

    def steps_to_zero(self, table: Table, i: int) -> bool:
        return self.predictor.steps_to_zero(table, i)

    def evals(self, steps: int, zero_end: bool) -> int:
        return self.predictor.evals(steps, zero_end) + self.steps * steps

    def for_nfe(self, nfe: int, zero_end: bool):
        for steps in range(1, nfe + 1):
            rest = nfe - self.steps * steps
            if rest < 1:
                break
            try:
                n, pred = self.predictor.for_nfe(rest, zero_end)
            except ValueError:
                continue
            if n == steps:
                if pred is self.predictor:
                    return steps, self
                return steps, Corrected(pred, self.corrector, self.steps, self.alpha_scaling)
        raise self.nfe_error(nfe, zero_end, f"the predictor's evaluations plus {self.steps} corrector evaluation(s)")

    # -- stepping ---------------------------------------------------------------------------------
    def step(self, x, hist, st, noise):
        if not isinstance(st, CorrectedStep):  # a step this wrapper does not correct
            return (yield from self.predictor.program(x, hist, st, noise))
        seen: list = []
        x, hist, d0 = yield from _tap(self.predictor.program(x, hist, st.inner, noise), seen)
        eps_prev = None
        if isinstance(self.corrector, LML) and seen:  # the noise prediction of the predictor's last evaluation
            (k, xk), dk = seen
            ak, sk = st.points[k]
            eps_prev = _eps(xk, dk, ak, sk) if sk > 0 else None
        for _ in range(st.moves):
            d = yield st.k, x
            x, eps_prev = self.corrector.move(x, d, st.alpha_k, st.sigma_k, st.factor, noise(), eps_prev)
        return x, hist, d0


def correct(den, x: torch.Tensor, t: float, corrector="langevin", steps: int = 1, *,
            generator: torch.Generator | None = None, cond: dict | None = None, **options) -> torch.Tensor:
    """Run ``steps`` corrector moves on ``x`` at the fixed path time ``t`` (targets the marginal ``p_t``).

    Args:
        den: a :class:`pfode.Denoiser`.
        x: states ``[B, ...]`` at time ``t``.
        t: the path time (needs ``alpha(t) > 0`` and ``sigma(t) > 0``).
        corrector: ``"langevin"``, ``"lml"`` or a :class:`Corrector`; ``options`` are its options.
        steps: moves, one network evaluation each.
        generator: seeds the per-sample noise streams (see :class:`pfode.PerSampleNoise`).
    Returns:
        the corrected states, shaped like ``x``. The step factor ``a`` is 1 (no step was taken).
    """
    from ..sample import PerSampleNoise

    check_state("x", x)
    corr = _corrector(corrector, options)
    check_int("steps", steps, 1)
    t = check_finite_float("t", t)
    table = Table(den.path, torch.tensor([t], dtype=torch.float64), False)
    p = table[0]
    _check_point(corr, den.path, p.t, p.alpha, p.sigma)
    ev = Evaluator(den, table, x, cond)
    noise = PerSampleNoise(x, generator)

    def program():
        y, eps_prev = x, None
        for _ in range(steps):
            d = yield 0, y
            y, eps_prev = corr.move(y, d, p.alpha, p.sigma, 1.0, noise(), eps_prev)
        return y

    return drive(program(), ev)


def _pc(corrector: str, default_predictor: str) -> Callable[..., Corrected]:
    def factory(predictor=default_predictor, steps: int = 1, **options) -> Corrected:
        return Corrected(predictor, corrector, steps, **options)

    return factory


register("pc-langevin", _pc("langevin", "euler-maruyama"))
register("pc-lml", _pc("lml", "ddim"))

# Denoising MCMC uses the Langevin move above; re-exported here so that ``pfode.solvers`` imports one module
from .dmcmc import DenoisingMCMC, DMCMCOutput, density_noise_classifier  # noqa: E402
