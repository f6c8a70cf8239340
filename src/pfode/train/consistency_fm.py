"""Consistency Flow Matching (Yang et al., 2024, "Consistency Flow Matching: Defining Straight Flows with Velocity
Consistency") as a pfode objective, with multi-segment training.

The paper's time runs from noise (0) to data (1); pfode's from data (``t_lo``) to noise (``t_hi``), and its
velocity is ``dx/dt`` in pfode time (:class:`~pfode.train.FlowMatching`'s prediction), the negative of the
paper's. Translated: split the training range ``[t0, t1]`` into ``N = segments`` equal pieces with boundaries
``b_k = t1 - k (t1 - t0) / N``; for ``t`` in segment ``(b_{k+1}, b_k]`` the network's velocity ``v`` defines the
straight-line end point::

    f(x_t, t) = x_t + (b_{k+1} - t) v(x_t, t)           (the paper's f = x_t + (1 - t) v with N = 1)

and the loss pairs two points of the same conditional path ``x_t = alpha_t x0 + sigma_t eps``, ``x_r`` with
``r = max(t - delta, b_{k+1})`` (one ``delta`` closer to the data, never past the segment's end)::

    L = E[ d(f_theta(x_t, t), f_-(x_r, r)) + alpha_v * m * d(v_theta(x_t, t), v_-(x_r, r)) ]

(the paper's Eq. 6 per segment), ``f_-``/``v_-`` from the stop-gradient model (``target="stopgrad"``, as the
released code) or the trainer's EMA (``target="ema"``, the paper's ``theta^-``), ``d`` the squared error
(``metric``). As in the released code, the velocity term is masked (``m = 0``) within ``1.01 delta`` of the
segment's end and in the ``boundary`` zone next to the data, where the target ``f_-`` is replaced by the exact
conditional end point ``alpha_b x0 + sigma_b eps`` (the paper's ``boundary = 0.9`` on CIFAR-10 is
``boundary = 0.1`` here: a fraction of ``[t0, t1]`` at the data end; ``0`` switches it off). Clamping ``r`` to the
segment's end (a small departure from the code, which lets ``r`` cross it) makes the boundary condition
``f(x_b, b) = x_b`` hold exactly for the target.

A minimiser is piecewise straight: within a segment the velocity is constant along its trajectories, so sampling
takes one Euler step per segment (:meth:`ConsistencyFM.sample`). The trained network is a plain velocity model
(``prediction="velocity"``): :func:`pfode.sample` with any solver runs it, and checkpoints load with
:func:`pfode.models.load`.

Paths: any path with a finite time range (the straight segments are straight in the path's own time ``t``); the
paper's setting, and the one where a piecewise-straight flow matches the data's flow map with few segments, is the
:class:`~pfode.paths.Linear` path (rectified flow).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import as_f64, check_choice, check_finite_float, check_int
from ..paths import Path, get_path
from ..predictions import Coeffs, Denoiser
from .couplings import Coupling, get_coupling
from .losses import METRICS, Objective, _no_net, _split, metric

__all__ = ["ConsistencyFM"]


class ConsistencyFM(Objective):
    """Consistency Flow Matching with ``segments`` straight segments (see the module for the loss).

    Args:
        path: a :class:`~pfode.paths.Path` or a name (default ``"linear"``).
        segments: number of segments ``N >= 1`` (the paper's multi-segment training; ``N = 1`` is plain
            Consistency-FM).
        alpha: weight of the velocity-consistency term (the paper's ``alpha``, ``1e-5`` on CIFAR-10).
        delta: time gap between the paired points, in path-time units (the paper's ``Delta t = 1e-3``).
        boundary: fraction of ``[t0, t1]`` at the data end where the target is the exact conditional end point
            (``0`` switches it off).
        metric: ``"l2"`` or ``"pseudo-huber"`` (for both terms).
        target: ``"stopgrad"`` (the online model without gradient) or ``"ema"`` (the trainer's EMA).
        time_input: what the network sees as time (as :class:`pfode.Denoiser`).
        coupling: as :class:`~pfode.train.FlowMatching` (``"independent"``, ``"minibatch-ot"``, ``"reflow"``).
        t_range: ``(t0, t1)``; default the path's whole range ``[t_lo, t_hi]`` where it is finite, else
            ``[t_min, t_max]``.
        huber_c: pseudo-Huber constant.
    """

    name = "consistency-fm"

    def __init__(
        self,
        path: Path | str = "linear",
        segments: int = 1,
        alpha: float = 1e-5,
        delta: float = 1e-3,
        boundary: float = 0.1,
        metric: str = "l2",
        target: str = "stopgrad",
        time_input: str | Callable = "t",
        coupling: str | Coupling = "independent",
        t_range: tuple[float, float] | None = None,
        huber_c: float | None = None,
    ):
        self.path = get_path(path)
        self.segments = check_int("segments", segments, 1)
        self.alpha = check_finite_float("alpha", alpha, 0.0)
        self.delta = check_finite_float("delta", delta, 0.0, strict=True)
        self.boundary = check_finite_float("boundary", boundary, 0.0)
        if self.boundary > 1.0:
            raise ValueError(f"boundary={boundary!r} must be a fraction of the time range in [0, 1]")
        self.metric = check_choice("metric", metric, METRICS)
        self.target_kind = check_choice("target", target, ("stopgrad", "ema"))
        self.time_input = time_input
        self.coupling = get_coupling(coupling)
        self.huber_c = None if huber_c is None else check_finite_float("huber_c", huber_c, 0.0, strict=True)
        p = self.path
        if t_range is None:
            t_range = (p.t_lo, p.t_hi) if math.isfinite(p.t_hi) else (p.t_min, p.t_max)
        t0, t1 = (check_finite_float("t_range", float(v)) for v in t_range)
        if not (p.t_lo <= t0 < t1 <= p.t_hi):
            raise ValueError(f"t_range={tuple(t_range)!r}: need {p.t_lo} <= t0 < t1 <= {p.t_hi} on {p!r}")
        self.t_range = (t0, t1)
        if not self.delta < (t1 - t0) / self.segments:
            raise ValueError(
                f"delta={delta!r} must be smaller than a segment ({(t1 - t0) / self.segments:g} path-time units)"
            )
        self.denoiser(_no_net)  # validates path, prediction and time input

    # -- segments ----------------------------------------------------------------------------
    def boundaries(self) -> torch.Tensor:
        """Segment boundaries ``b_0 = t1 > b_1 > ... > b_N = t0`` (float64 ``[N + 1]``)."""
        t0, t1 = self.t_range
        b = t1 - (t1 - t0) * torch.arange(self.segments + 1, dtype=torch.float64) / self.segments
        b[-1] = t0
        return b

    def segment_end(self, t: torch.Tensor) -> torch.Tensor:
        """The end ``b_{k+1}`` (towards the data) of the segment holding each time ``t`` (float64 ``[B]``)."""
        t0, t1 = self.t_range
        h = (t1 - t0) / self.segments
        k = torch.floor((t1 - as_f64(t)) / h).clamp(0, self.segments - 1).long()
        return self.boundaries().to(k.device)[k + 1]

    def f(self, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """``f = x + (end - t) v``: the straight-line end point of velocity ``v`` at ``(x, t)``."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        return x + (as_f64(end) - as_f64(t)).to(device=x.device, dtype=x.dtype).reshape(shape) * v

    # -- objective ---------------------------------------------------------------------------
    def prepare(self, batch, generator, step: int = 0):
        x0, eps = _split(batch)
        x0, eps = self.coupling(x0, eps, generator)
        own_noise = getattr(self.path, "noise_from_gaussian", None)
        if own_noise is not None:
            eps = own_noise(eps, generator)
        t0, t1 = self.t_range
        t = t1 - (t1 - t0) * torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)  # (t0, t1]
        end = self.segment_end(t)
        r = torch.maximum(t - self.delta, end)
        return {"x0": x0, "eps": eps, "t": t, "r": r, "end": end}

    def _state(self, x0, eps, t):
        c = Coeffs.at(self.path, as_f64(t).to(x0.device), like=x0)
        return c.alpha * x0 + c.sigma * eps

    def loss(self, model, batch, *, step: int = 0, target_model=None):
        x0, eps = batch["x0"], batch["eps"]
        t, r, end = (batch[k].to(x0.device) for k in ("t", "r", "end"))
        x_t, x_r, x_end = self._state(x0, eps, t), self._state(x0, eps, r), self._state(x0, eps, end)
        den = self.denoiser(model)
        v_t = den.raw(x_t, den.time_tensor(t, x_t))
        with torch.no_grad():
            tgt = self.denoiser(target_model if target_model is not None else model)
            v_r = tgt.raw(x_r, tgt.time_tensor(r, x_r))
            f_r = self.f(v_r, x_r, r, end)
            t0, t1 = self.t_range
            zone = self.boundary * (t1 - t0)
            in_zone_r = (r - t0) < zone
            shape = (-1,) + (1,) * (x0.dim() - 1)
            f_r = torch.where(in_zone_r.reshape(shape), x_end, f_r)
            mask = ((t - end) > 1.01 * self.delta) & ((t - t0) >= zone)
        f_t = self.f(v_t, x_t, t, end)
        per = metric(self.metric, f_t.float() - f_r.float(), self.huber_c)
        if self.alpha > 0:
            per_v = metric(self.metric, v_t.float() - v_r.float(), self.huber_c)
            per = per + self.alpha * torch.where(mask, per_v, torch.zeros_like(per_v))
        return per.mean(), per

    def violation(self, model, x_t: torch.Tensor, t: torch.Tensor, x_r: torch.Tensor, r: torch.Tensor):
        """Per-sample ``(|f(x_t, t) - f(x_r, r)|^2, |v(x_t, t) - v(x_r, r)|^2)`` (means over elements) of the model
        for states ``x_t``, ``x_r`` at times ``t``, ``r`` ``[B]`` of one segment -- e.g. two points of one exact PF-ODE
        trajectory, where a minimiser's violations vanish (the velocity term only for straight trajectories)."""
        t, r = as_f64(t).to(x_t.device), as_f64(r).to(x_t.device)
        end = self.segment_end(t)
        if not bool(((self.segment_end(r) == end) | (r == end)).all()):
            raise ValueError("t and r must lie in the same segment")
        den = self.denoiser(model)
        v_t = den.raw(x_t, den.time_tensor(t, x_t))
        v_r = den.raw(x_r, den.time_tensor(r, x_r))
        df = self.f(v_t, x_t, t, end) - self.f(v_r, x_r, r, end)
        b = x_t.shape[0]
        return df.reshape(b, -1).pow(2).mean(1), (v_t - v_r).reshape(b, -1).pow(2).mean(1)

    def denoiser(self, model) -> Denoiser:
        """The trained network as a velocity-predicting :class:`pfode.Denoiser`."""
        return Denoiser(model, self.path, "velocity", self.time_input)

    # -- sampling ----------------------------------------------------------------------------
    def sample_grid(self, nfe: int | None = None) -> torch.Tensor:
        """Euler grid for ``nfe`` steps (default ``segments``): ``nfe / N`` equal steps per segment when ``N``
        divides ``nfe`` (every segment boundary on the grid), else ``nfe`` equal steps over ``[t1, t0]``."""
        nfe = self.segments if nfe is None else check_int("nfe", nfe, 1)
        t0, t1 = self.t_range
        if nfe % self.segments == 0:
            b = self.boundaries()
            m = nfe // self.segments
            pieces = [
                torch.linspace(float(b[k]), float(b[k + 1]), m + 1, dtype=torch.float64)[:-1]
                for k in range(self.segments)
            ]
            return torch.cat(pieces + [torch.tensor([t0], dtype=torch.float64)])
        return torch.linspace(t1, t0, nfe + 1, dtype=torch.float64)

    def sample(self, model, z, *, nfe: int | None = None, grid=None, generator=None, **_):
        """``nfe`` Euler steps (default: one per segment) from ``x_T = sigma(t1) z`` (see :meth:`sample_grid`)."""
        from ..sample import sample as pf_sample
        from ..solvers import get

        grid = self.sample_grid(nfe) if grid is None else as_f64(grid)
        x_T = float(self.path.sigma(grid[0])) * z
        den = self.denoiser(model)
        return pf_sample(den, x_T, grid, get("euler", variable="t"), denoise=False, generator=generator)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": repr(self.path),
            "segments": self.segments,
            "alpha": self.alpha,
            "delta": self.delta,
            "boundary": self.boundary,
            "metric": self.metric,
            "target": self.target_kind,
            "time_input": self.time_input if isinstance(self.time_input, str) else "callable",
            "coupling": self.coupling.spec(),
            "t_range": list(self.t_range),
        }
