"""DPM-Solver-12 and DPM-Solver-23 with adaptive step size (Lu et al., 2022), k-diffusion's ``sample_dpm_adaptive``.

Each attempt from ``lam`` to ``lam + h`` computes a lower- and a higher-order DPM-Solver step (noise-prediction form,
in ``y = x / alpha``) that share their evaluations: DPM-Solver-1 and -2 (``order=2``, two evaluations) or
DPM-Solver-2 with ``r1 = 1/3`` and DPM-Solver-3 (``order=3``, three). Their difference, scaled by
``max(atol, rtol max(|y_low|, |y_low of the last accepted step|))``, gives an RMS error; a PID controller with an
arctan limiter proposes the next ``h`` and accepts the attempt when the proposed factor is at least
``accept_safety``. With ``eta > 0`` every accepted step is ancestral (a step down to ``s_down``, then fresh noise).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_finite_float, check_int
from ..engine import PFODE
from ..predictions import Coeffs
from .adaptive import batch_view
from .base import AdaptiveSolver, register
from .exponential import DPMSolver

__all__ = ["DPMSolverAdaptive"]


class DPMSolverAdaptive(AdaptiveSolver):
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with PID step-size control in ``lam``.

    Args:
        order: 2 or 3 (evaluations per attempt).
        rtol, atol: tolerances of the RMS error (k-diffusion's defaults suit data in ``[-1, 1]``).
        h_init: first step in ``lam``.
        pcoeff, icoeff, dcoeff: PID coefficients (default: the integral controller).
        accept_safety: accept an attempt when the proposed step factor is at least this.
        eta, s_noise: ancestral steps (``eta = 0``: the ODE); the controller then assumes order 1.5.
        control: ``"sample"`` (each sample has its own steps and controller: its result does not depend on the
            batch) or ``"batch"`` (one RMS error over the whole batch, as k-diffusion).
        max_evals: stop with an error after this many network evaluations.
    """

    name = "dpm-adaptive"
    paper = (
        DPMSolver.paper + " (adaptive DPM-Solver-12/23); PID control after Soderlind, Digital filters in adaptive "
        "time-stepping, ACM TOMS 2003, with the arctan limiter of Soderlind & Wang, J. Comput. Appl. Math. 2006"
    )

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        eta: float = 0.0,
        s_noise: float = 1.0,
        control: str = "sample",
        max_evals: int = 100_000,
    ):
        check_int("order", order)
        if order not in (2, 3):
            raise ValueError(f"order={order}: dpm-adaptive has orders 2 and 3")
        self.order = self.evals_per_step = order
        self.rtol = check_finite_float("rtol", rtol, 0.0)
        self.atol = check_finite_float("atol", atol, 0.0)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol are both 0: give at least one positive tolerance")
        self.h_init = check_finite_float("h_init", h_init)
        if self.h_init == 0:
            raise ValueError("h_init=0 must be nonzero")
        self.pcoeff = check_finite_float("pcoeff", pcoeff)
        self.icoeff = check_finite_float("icoeff", icoeff)
        self.dcoeff = check_finite_float("dcoeff", dcoeff)
        self.accept_safety = check_finite_float("accept_safety", accept_safety)
        self.eta = check_finite_float("eta", eta, 0.0)
        self.s_noise = check_finite_float("s_noise", s_noise, 0.0)
        self.control = check_choice("control", control, ("sample", "batch"))
        self.max_evals = check_int("max_evals", max_evals, 1)
        self.stochastic = self.eta > 0 and self.s_noise > 0

    def solve(self, den, x: torch.Tensor, t_start: float, t_end: float, cond=None, callback=None, noise=None):
        """Solve from path time ``t_start`` to ``t_end`` (both with ``alpha, sigma > 0``); return ``(x, info)``.

        ``noise(s_from, s_to)`` (per-sample ``[B]`` float64 noise levels ``sigma/alpha``) returns the standard normal
        increment of the fresh noise of an accepted ancestral step (default: pfode's per-sample streams seeded from
        torch's global generator). ``callback`` is called after every attempt with ``{"i", "t", "t_prev", "lam",
        "x", "x0_hat", "accepted", "error", "h", "nfe", "n_accept", "n_reject"}``: per-sample ``[B]`` tensors of
        path times (now and before the attempt), ``lam``, the states at ``t``, ``x0_hat`` at the attempt's *start*,
        whether each sample accepted, its error and its next step; the evaluation count and the accepted and
        rejected attempts so far. ``info``: ``nfe``, ``attempts`` (= ``steps``), per-sample ``accepted_steps`` and
        ``rejected_steps``, and ``n_accept`` / ``n_reject`` (their maxima; under ``control="batch"`` the counts).
        """
        path = den.path
        l0 = float(path.lam(torch.tensor(float(t_start), dtype=torch.float64)))
        l1 = float(path.lam(torch.tensor(float(t_end), dtype=torch.float64)))
        if not (math.isfinite(l0) and math.isfinite(l1)):
            raise ValueError(
                f"dpm-adaptive integrates in lam and needs finite lam at both ends: lam({t_start:g})={l0}, "
                f"lam({t_end:g})={l1}; end the grid above zero noise (denoise=True then finishes at zero noise)"
            )
        forward = l1 > l0
        if self.eta and not forward:
            raise ValueError(f"eta={self.eta} must be 0 to integrate from data to noise")
        sign = 1.0 if forward else -1.0
        ode = PFODE(den, "lam", cond)
        b, dev, dt = x.shape[0], x.device, x.dtype
        f64 = dict(dtype=torch.float64, device=dev)
        view = batch_view(x)

        def col(v):  # a per-sample float64 coefficient, broadcast against the state
            return view(v).to(dt)

        if self.stochastic and noise is None:
            from ..sample import PerSampleNoise

            streams = PerSampleNoise(x, None)

            def noise(s_from, s_to):
                return streams()

        nfe = 0

        def eps(u, v):
            nonlocal nfe
            nfe += 1
            if nfe > self.max_evals:
                raise RuntimeError(f"dpm-adaptive used more than max_evals={self.max_evals} evaluations")
            d = ode.denoise(u, ode.t_of(v))
            return (u - d) / col(torch.exp(-v)), d

        y = x / float(path.alpha(torch.tensor(float(t_start), dtype=torch.float64)))
        lam = torch.full((b,), l0, **f64)
        end = torch.full((b,), l1, **f64)
        h = torch.full((b,), abs(self.h_init) * sign, **f64)
        y_prev = y
        k = 1.5 if self.eta else float(self.order)
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        b2 = -(self.pcoeff + 2.0 * self.dcoeff) / k
        b3 = self.dcoeff / k
        inv = None
        accepted = torch.zeros(b, dtype=torch.long, device=dev)
        rejected = torch.zeros_like(accepted)
        attempt = 0
        while True:
            active = lam < end - 1e-5 if forward else lam > end + 1e-5
            if not bool(active.any()):
                break
            t = torch.minimum(end, lam + h) if forward else torch.maximum(end, lam + h)
            t = torch.where(active, t, lam - 1e-3 * sign)  # finished samples: a harmless step, discarded
            t_down, s_up = t, None
            if self.eta:
                s0, s1 = torch.exp(-lam), torch.exp(-t)
                up = torch.minimum(s1, self.eta * torch.sqrt((s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0)).clamp_min(0)))
                down = torch.sqrt((s1 * s1 - up * up).clamp_min(0))
                t_down = torch.minimum(end, -torch.log(down))
                s_up = torch.sqrt((s1 * s1 - torch.exp(-2.0 * t_down)).clamp_min(0))
            hh = t_down - lam
            e0, d0 = eps(y, lam)
            base = y - col(torch.exp(-t_down) * torch.expm1(hh)) * e0
            r1 = 0.5 if self.order == 2 else 1.0 / 3.0
            v1 = lam + r1 * hh
            u1 = y - col(torch.exp(-v1) * torch.expm1(r1 * hh)) * e0
            e1, _ = eps(u1, v1)
            second = base - col(torch.exp(-t_down) / (2.0 * r1) * torch.expm1(hh)) * (e1 - e0)
            if self.order == 2:
                y_low, y_high = base, second
            else:
                r2 = 2.0 / 3.0
                v2 = lam + r2 * hh
                c2 = torch.exp(-v2)
                u2 = (
                    y
                    - col(c2 * torch.expm1(r2 * hh)) * e0
                    - col(c2 * (r2 / r1) * (torch.expm1(r2 * hh) / (r2 * hh) - 1.0)) * (e1 - e0)
                )
                e2, _ = eps(u2, v2)
                y_low = second
                y_high = base - col(torch.exp(-t_down) / r2 * (torch.expm1(hh) / hh - 1.0)) * (e2 - e0)
            scale = torch.maximum(y_low.abs(), y_prev.abs()).mul_(self.rtol).clamp_min_(self.atol)
            ratio = ((y_low - y_high) / scale).reshape(b, -1).to(torch.float64)
            if self.control == "batch":
                error = (torch.linalg.vector_norm(ratio) / math.sqrt(ratio.numel())).expand(b)
            else:
                error = torch.linalg.vector_norm(ratio, dim=1) / math.sqrt(ratio.shape[1])
            # PID on the inverse errors (the current one and those of the last two accepted attempts)
            cur = 1.0 / (error + 1e-8)
            if inv is None:
                inv = [cur, cur, cur]
            factor = cur**b1 * inv[1] ** b2 * inv[2] ** b3
            factor = 1.0 + torch.atan(factor - 1.0)
            ok = (factor >= self.accept_safety) & active
            inv = [cur, torch.where(ok, cur, inv[1]), torch.where(ok, inv[1], inv[2])]
            h = torch.where(active, h * factor, h)
            lam_prev = lam
            if bool(ok.any()):
                new = y_high
                if self.eta:
                    new = y_high + col(s_up * self.s_noise) * noise(torch.exp(-lam), torch.exp(-t))
                y_prev = torch.where(view(ok), y_low, y_prev)
                y = torch.where(view(ok), new, y)
                lam = torch.where(ok, t, lam)
            accepted += ok.long()
            rejected += (active & ~ok).long()
            if callback is not None:
                tp = ode.t_of(lam)
                a = Coeffs.at(path, tp, like=y).alpha
                callback(
                    {
                        "i": attempt, "t": tp, "t_prev": ode.t_of(lam_prev), "lam": lam, "x": y * a, "x0_hat": d0,
                        "accepted": ok, "error": error, "h": h, "nfe": nfe, "n_accept": int(accepted.max()),
                        "n_reject": int(rejected.max()),
                    }
                )
            attempt += 1
        info = {
            "nfe": nfe,
            "attempts": attempt,
            "steps": attempt,
            "n_accept": int(accepted.max()),
            "n_reject": int(rejected.max()),
            "accepted_steps": accepted.cpu(),
            "rejected_steps": rejected.cpu(),
        }
        return y * float(path.alpha(torch.tensor(float(t_end), dtype=torch.float64))), info


register("dpm-adaptive", DPMSolverAdaptive)
