"""Consistency Trajectory Models (Kim et al., ICLR 2024, "Consistency Trajectory Models: Learning Probability Flow
ODE Trajectory of Diffusion") as a pfode objective: soft consistency matching + denoising score matching, no GAN.

The model is the jump ``G(x_t, t, s)`` of :class:`pfode.nets.ctm.CTMModel` (any path: the DDIM step towards an
estimate ``g``). Times live on a grid of ``N = steps`` path times ``t_0 = t1 > ... > t_{N-1} = t0``, Karras-spaced
(``rho``) in ``s = sigma / alpha`` -- EDM's sigma, the CTM paper's time. Each batch draws a teacher step count ``k``
(uniform on ``1..heun_steps``, one per batch as in the paper's code); each sample draws ``t = t_i`` (``i`` uniform on
``0..N-1-k``), the intermediate time ``u = t_{i+k}`` and the jump target ``s = t_j`` (``j`` uniform on
``i+k..N-1``). With ``x_t = alpha_t x0 + sigma_t eps``:

* the teacher (a :class:`pfode.Denoiser`, any path and prediction: its states are matched by ``s``) solves the
  PF-ODE from ``t`` to ``u`` with ``k`` grid steps of Heun (or DDIM) in ``s``: ``x_u = Solver(x_t, t, u)``;
* target ``= G_-(G_-(x_u, u, s), s, t0)`` and estimate ``= G_-(G_theta(x_t, t, s), s, t0)``: the soft-consistency
  pair, both carried to the data end by the stop-gradient / EMA model ``G_-`` (the paper's ``theta^-``; gradients
  reach ``theta`` through the estimate's inner jump only), compared with ``metric`` (the paper's LPIPS is an image
  feature distance; here ``"l2"`` or ``"pseudo-huber"``);
* DSM: ``w(t') |g_theta(x_t', t', t') - x0|^2`` at times ``t'`` from ``dsm_time_sampler`` with fresh noise, ``w`` a
  weighting of :mod:`pfode.train.losses` on the x0 error (``"edm"``: ``1/s^2 + 1/sigma_data^2``, the paper's).

Loss per sample: ``d(estimate, target) + dsm_weight * DSM`` (the paper balances DSM adaptively by gradient norms of
the last layer; a constant weight here). ``u = s`` (``j = i + k``) is the consistency-distillation-like local
target; ``j = N - 1`` makes the outer jumps identities. The student's two forward passes (jump and DSM head) go
through one batched network call (DDP-safe).

Where it applies: any path with a finite, positive ``s`` on ``[t0, t1]``; any teacher path and prediction type.
The network must take a second time (``model: {name: ctm-mlp}`` for vectors, ``ctm-unet`` for images; the plain
MLP and UNet do not).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..nets.ctm import SPACINGS, CTMModel, ctm_sample, jump_coefficients, time_grid
from ..paths import Path, get_path
from ..predictions import Coeffs, Denoiser
from .couplings import Coupling, get_coupling
from .losses import METRICS, WEIGHTINGS, Objective, TimeSampler, _split, metric, x0_weight

__all__ = ["CTM", "ctm_sample"]


def _frozen(model):
    """``model`` evaluated with detached parameters: gradients reach its inputs, never its weights."""
    m = getattr(model, "module", model)
    state = {k: v.detach() for k, v in m.named_parameters()}
    state.update(dict(m.named_buffers()))

    def call(*args, **kwargs):
        return torch.func.functional_call(m, state, args, kwargs)

    return call


class CTM(Objective):
    """CTM training of a :class:`~pfode.nets.ctm.CTMModel` from a frozen ``teacher`` (see the module).

    Args:
        path: the student's path (default ``"linear"``).
        teacher: a :class:`pfode.Denoiser` (any path and prediction type).
        steps: grid size ``N`` (the paper: 18 on CIFAR-10, 40 on ImageNet 64).
        heun_steps: most teacher steps ``k`` per target (default ``N - 1``: up to the whole grid).
        rho: Karras spacing of the grid in ``s``.
        spacing: the grid (and default sampling times): ``"karras"`` in ``s`` (the paper) or ``"uniform"`` in ``t``
            (natural on the Linear path, where ``s`` spans ``(t0 / (1 - t0), t1 / (1 - t1))``).
        sigma_data: data scale of the preconditioning (and of the ``"edm"`` DSM weighting).
        dsm_weight: weight of the DSM term (``0`` drops it).
        dsm_weighting: a weighting of :data:`pfode.train.WEIGHTINGS` other than ``"native"``.
        dsm_time_sampler: a :class:`~pfode.train.TimeSampler` name for the DSM times.
        metric: ``"l2"`` or ``"pseudo-huber"`` for the consistency term.
        target: ``"ema"`` (the trainer's EMA as ``theta^-``, the paper) or ``"stopgrad"``.
        teacher_solver: ``"heun"`` (the paper) or ``"ddim"``, in ``s``.
        time_input: what the network sees as both times.
        coupling: ``"independent"`` or another coupling of :mod:`pfode.train.couplings`.
        t_range: ``(t0, t1)`` (default ``(path.t_min, path.t_max)``): the data end every jump chain ends at and
            the noise end sampling starts from.
        huber_c: pseudo-Huber constant.
    """

    name = "ctm"

    def __init__(
        self,
        path: Path | str = "linear",
        teacher: Denoiser | None = None,
        steps: int = 18,
        heun_steps: int | None = None,
        rho: float = 7.0,
        spacing: str = "karras",
        sigma_data: float = 0.5,
        dsm_weight: float = 1.0,
        dsm_weighting: str = "edm",
        dsm_time_sampler: str = "edm-lognormal",
        metric: str = "l2",
        target: str = "ema",
        teacher_solver: str = "heun",
        time_input: str | Callable = "t",
        coupling: str | Coupling = "independent",
        t_range: tuple[float, float] | None = None,
        huber_c: float | None = None,
    ):
        self.path = get_path(path)
        if not isinstance(teacher, Denoiser):
            raise TypeError(
                f"teacher must be a pfode.Denoiser (any path and prediction type), got {type(teacher).__name__}; "
                "in a configuration: teacher: {checkpoint: RUN_OR_MODEL}"
            )
        self.teacher = teacher
        self.steps = check_int("steps", steps, 2)
        self.heun_steps = self.steps - 1 if heun_steps is None else check_int("heun_steps", heun_steps, 1)
        if self.heun_steps > self.steps - 1:
            raise ValueError(f"heun_steps={heun_steps} must be <= steps - 1 = {self.steps - 1}")
        self.rho = check_finite_float("rho", rho, 0.0, strict=True)
        self.sigma_data = check_finite_float("sigma_data", sigma_data, 0.0, strict=True)
        self.dsm_weight = check_finite_float("dsm_weight", dsm_weight, 0.0)
        self.dsm_weighting = check_choice("dsm_weighting", dsm_weighting, [w for w in WEIGHTINGS if w != "native"])
        self.metric = check_choice("metric", metric, METRICS)
        self.target_kind = check_choice("target", target, ("ema", "stopgrad"))
        self.teacher_solver = check_choice("teacher_solver", teacher_solver, ("heun", "ddim"))
        self.time_input = time_input
        self.coupling = get_coupling(coupling)
        self.huber_c = None if huber_c is None else check_finite_float("huber_c", huber_c, 0.0, strict=True)
        t0, t1 = t_range if t_range is not None else (self.path.t_min, self.path.t_max)
        self.t_range = (check_finite_float("t_range", float(t0)), check_finite_float("t_range", float(t1)))
        s_lo, s_hi = (float(self.path.s(torch.tensor(v, dtype=torch.float64))) for v in self.t_range)
        if not (0 < s_lo < s_hi < math.inf) or not self.path.t_lo <= self.t_range[0]:
            raise ValueError(
                f"t_range={self.t_range}: CTM needs 0 < s(t0) < s(t1) < inf (s = sigma/alpha) inside the path's range"
            )
        self.s_range = (s_lo, s_hi)
        self.dsm_time_sampler = TimeSampler(dsm_time_sampler, self.path, self.t_range)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.grid = time_grid(self.path, self.t_range[0], self.t_range[1], self.steps, self.spacing, self.rho)

    def wrap(self, net):
        if isinstance(net, CTMModel):
            return net
        params = [p for p in inspect.signature(net.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
        if len(params) < 3:
            raise TypeError(
                f"ctm needs a network taking a second time, net(x, t, s) (pfode.nets.ctm.TwoTimeMLP or TwoTimeUNet, "
                f"model name 'ctm-mlp' or 'ctm-unet'); {type(net).__name__}.forward takes {[p.name for p in params]}"
            )
        t0, t1 = self.t_range
        return CTMModel(net, self.path, self.sigma_data, t0, t1, self.time_input, self.spacing)

    # -- batch -------------------------------------------------------------------------------
    def prepare(self, batch, generator, step: int = 0):
        x0, eps = _split(batch)
        x0, eps = self.coupling(x0, eps, generator)
        b, n = x0.shape[0], self.steps
        k = int(torch.randint(1, self.heun_steps + 1, (1,), generator=generator))
        i = torch.randint(0, n - k, (b,), generator=generator)
        j = i + k + torch.floor(torch.rand(b, generator=generator, dtype=torch.float64) * (n - i - k)).long()
        j = torch.minimum(j, torch.full_like(j, n - 1))
        path_t = self.grid[i[:, None] + torch.arange(k + 1)[None]]  # [B, k + 1]: t, the teacher's steps, u
        t_dsm = self.dsm_time_sampler(b, generator)
        eps_dsm = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return {"x0": x0, "eps": eps, "path_t": path_t, "s": self.grid[j], "t_dsm": t_dsm, "eps_dsm": eps_dsm}

    # -- teacher -----------------------------------------------------------------------------
    def teacher_step(self, x: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
        """One teacher step from path times ``t_a`` to ``t_b`` ``[B]``: Heun (EDM's, Karras et al. 2022 Alg. 1) or
        DDIM (Euler) in ``s``, in the scaled state ``y = x / alpha``; the teacher sees its own path's state at the
        same ``s``."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        p, tp = self.path, self.teacher.path
        s_a, s_b = p.s(t_a), p.s(t_b)
        ta_tp, tb_tp = tp.t_of_s(s_a), tp.t_of_s(s_b)
        y = x / p.alpha(t_a).to(x).reshape(shape)
        x0a, e1 = self.teacher(y * tp.alpha(ta_tp).to(x).reshape(shape), ta_tp)
        h = (s_b - s_a).to(x).reshape(shape)
        if self.teacher_solver == "ddim":
            y_b = x0a + s_b.to(x).reshape(shape) * e1
        else:
            _, e2 = self.teacher((y + h * e1) * tp.alpha(tb_tp).to(x).reshape(shape), tb_tp)
            y_b = y + 0.5 * h * (e1 + e2)
        return p.alpha(t_b).to(x).reshape(shape) * y_b

    def teacher_solve(self, x: torch.Tensor, path_t: torch.Tensor) -> torch.Tensor:
        """The teacher's solution along per-sample times ``path_t`` ``[B, k + 1]`` (decreasing along a row)."""
        for m in range(path_t.shape[1] - 1):
            x = self.teacher_step(x, path_t[:, m], path_t[:, m + 1])
        return x

    # -- loss --------------------------------------------------------------------------------
    def _target_fn(self, model, target_model):
        if self.target_kind == "ema" and target_model is not None:
            return target_model
        return _frozen(model)

    def consistency_pair(self, model, x_t, t, u, x_u, s, target_model=None, g_t=None):
        """``(estimate, target)`` of the soft-consistency loss for states ``x_t`` at ``t`` and ``x_u`` at ``u``
        (the teacher's solution), jump target ``s`` (path times ``[B]``). ``g_t``: the student's ``g(x_t, t, s)`` if
        already computed."""
        tgt = self._target_fn(model, target_model)
        t_end = torch.full_like(s, self.t_range[0])
        with torch.no_grad():
            target = tgt(tgt(x_u, u, s), s, t_end)
        if g_t is None:
            g_t = model(x_t, t, s, output="g")
        a, b = jump_coefficients(self.path, t, s)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        jumped = a.to(x_t).reshape(shape) * x_t + b.to(x_t).reshape(shape) * g_t
        return tgt(jumped, s, t_end), target

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, eps = batch["x0"], batch["eps"]
        dev = x0.device
        path_t, s = batch["path_t"].to(dev), batch["s"].to(dev)
        t, u = path_t[:, 0], path_t[:, -1]
        c = Coeffs.at(self.path, t, like=x0)
        x_t = c.alpha * x0 + c.sigma * eps
        with torch.no_grad():
            x_u = self.teacher_solve(x_t, path_t)
        b = x0.shape[0]
        use_dsm = self.dsm_weight > 0
        if use_dsm:  # one network call for the jump and the DSM head
            t_d = batch["t_dsm"].to(dev)
            cd = Coeffs.at(self.path, t_d, like=x0)
            x_d = cd.alpha * x0 + cd.sigma * batch["eps_dsm"]
            g = model(torch.cat([x_t, x_d]), torch.cat([t, t_d]), torch.cat([s, t_d]), output="g")
            g_t, g_d = g[:b], g[b:]
        else:
            g_t = model(x_t, t, s, output="g")
        est, target = self.consistency_pair(model, x_t, t, u, x_u, s, target_model, g_t=g_t)
        per = metric(self.metric, est.float() - target.float(), self.huber_c)
        if use_dsm:
            w = x0_weight(self.dsm_weighting, Coeffs.at(self.path, t_d), sigma_data=self.sigma_data)
            err = (g_d.float() - x0.float()) * w.sqrt().to(device=dev, dtype=torch.float32).reshape(
                (-1,) + (1,) * (x0.dim() - 1)
            )
            per = per + self.dsm_weight * metric("l2", err)
        return per.mean(), per

    # -- model views -------------------------------------------------------------------------
    def denoiser(self, model) -> Denoiser:
        """The description of a CTM checkpoint: an x0 model on the path with path-time input. The model itself
        needs the second time: calling this denoiser raises a ``TypeError`` that says so; :func:`pfode.sample`
        given it (or the model) runs :func:`~pfode.nets.ctm.ctm_sample`, ``model.denoiser()`` is its DSM head."""
        return Denoiser(model, self.path, "x0", "t")

    def sample(self, model, z, *, nfe: int = 1, times=None, gamma: float = 0.0, generator=None, **_):
        """``nfe`` CTM jumps (gamma-sampling) from ``x_T = sigma(t1) z``."""
        m = getattr(model, "module", model)
        times = as_f64(times) if times is not None else None
        t_start = float(times[0]) if times is not None else self.t_range[1]
        x_T = float(self.path.sigma(torch.tensor(t_start, dtype=torch.float64))) * z
        return ctm_sample(m, x_T, times, nfe=nfe, gamma=gamma, generator=generator)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": repr(self.path),
            "teacher": repr(self.teacher),
            "steps": self.steps,
            "heun_steps": self.heun_steps,
            "rho": self.rho,
            "spacing": self.spacing,
            "sigma_data": self.sigma_data,
            "dsm_weight": self.dsm_weight,
            "dsm_weighting": self.dsm_weighting,
            "dsm_time_sampler": self.dsm_time_sampler.spec(),
            "metric": self.metric,
            "target": self.target_kind,
            "teacher_solver": self.teacher_solver,
            "coupling": self.coupling.spec(),
            "t_range": list(self.t_range),
        }
