"""Adaptive Dormand-Prince 5(4) with per-sample error control.

The ODE ``dy/dlam = x0_hat(alpha y, t(lam)) - y`` (``y = x / alpha``) is integrated in ``lam``,
where it is gentle on every path. Each sample keeps its own ``lam`` and step size: a sample's
steps are accepted or rejected on its own error alone, so a hard sample does not slow down or
perturb the others, and a sample's result does not depend on what else is in the batch.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_f64, check_finite_float, check_int
from ..predictions import Coeffs, to_x0_eps
from .base import Solver, register

__all__ = ["Dopri5"]

_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
_E = [b5 - b4 for b5, b4 in zip(_B5, _B4)]


class Dopri5(Solver):
    """Dormand-Prince 5(4), adaptive, per-sample step sizes (order 5, 6 evaluations per accepted step with FSAL).

    Args:
        rtol, atol: tolerances of the per-sample RMS error norm.
        h0: first step in ``lam`` (default: from the initial slope, per sample).
        max_evals: stop with an error after this many network evaluations.
    """

    name = "dopri5"
    order = 5
    evals_per_step = 6
    adaptive = True
    paper = "Dormand & Prince, A family of embedded Runge-Kutta formulae, J. Comp. Appl. Math. 1980"

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, h0: float | None = None, max_evals: int = 100_000):
        self.rtol = check_finite_float("rtol", rtol, 0.0, strict=True)
        self.atol = check_finite_float("atol", atol, 0.0, strict=True)
        self.h0 = None if h0 is None else check_finite_float("h0", h0, 0.0, strict=True)
        self.max_evals = check_int("max_evals", max_evals, 1)

    def for_nfe(self, nfe, zero_end):
        raise ValueError("dopri5 is adaptive: it chooses its own evaluations; give rtol/atol instead of nfe")

    def plan(self, table):  # pragma: no cover - adaptive solvers run through integrate()
        raise ValueError("dopri5 is adaptive and runs through pfode.sample(); it has no fixed step plan")

    def integrate(self, rhs, y: torch.Tensor, lam0, lam1, extra=None, on_step=None):
        """Integrate ``dy/dlam = rhs(y, lam, extra)`` per sample from ``lam0`` to ``lam1`` (floats or ``[B]``).

        ``rhs`` returns ``(dy, dextra)``; ``extra`` is an optional ``[B]`` tensor integrated alongside
        (e.g. a log-density) but not error-controlled. ``on_step(i, lam, lam_prev, y, dy, accepted)`` is
        called after every attempt ``i`` with each sample's current ``lam`` and state, the ``lam`` it
        stepped from, ``dy`` (the right-hand side there, known from FSAL) and which samples accepted.
        Returns ``(y, extra, info)``.
        """
        b = y.shape[0]
        dev = y.device
        lam = as_f64(lam0).to(dev).expand(b).clone()
        end = as_f64(lam1).to(dev).expand(b).clone()
        direction = torch.sign(end - lam)
        view = (-1,) + (1,) * (y.dim() - 1)
        evals = 0

        def f(yy, ll, ee):
            nonlocal evals
            evals += 1
            if evals > self.max_evals:
                raise RuntimeError(f"dopri5 used more than max_evals={self.max_evals} evaluations; loosen rtol/atol")
            return rhs(yy, ll, ee)

        def norm(v, scale):
            return torch.sqrt(((v / scale) ** 2).reshape(b, -1).mean(1)).to(torch.float64)

        k1, ke1 = f(y, lam, extra)
        if self.h0 is not None:
            h = torch.full((b,), self.h0, dtype=torch.float64, device=dev)
        else:
            sc = self.atol + self.rtol * y.abs()
            d0, d1 = norm(y, sc), norm(k1, sc)
            h = torch.where((d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / d1.clamp_min(1e-300), torch.full_like(d0, 1e-6))
        accepted = torch.zeros(b, dtype=torch.long, device=dev)
        rejected = torch.zeros(b, dtype=torch.long, device=dev)
        attempt = 0
        while True:
            remaining = (end - lam) * direction
            active = remaining > 1e-12 * (1.0 + end.abs())
            if not bool(active.any()):
                break
            hh = torch.where(active, torch.minimum(h, remaining), torch.zeros_like(h)) * direction
            hx = hh.to(y.dtype).reshape(view)
            ks, kes = [k1], [ke1]
            for i in range(1, 7):
                yi = y
                ei = extra
                for a, kj, kej in zip(_A[i], ks, kes):
                    if a != 0.0:
                        yi = yi + (a * hx) * kj
                        if ei is not None:
                            ei = ei + (a * hh).to(ei.dtype) * kej
                ki, kei = f(yi, lam + _C[i] * hh, ei)
                ks.append(ki)
                kes.append(kei)
            y5, e5 = yi, ei  # stage 7 is evaluated at the 5th-order solution (FSAL)
            err_v = sum((e * hx) * k for e, k in zip(_E, ks) if e != 0.0)
            sc = self.atol + self.rtol * torch.maximum(y.abs(), y5.abs())
            err = norm(err_v, sc)
            ok = (err <= 1.0) & active
            okx = ok.reshape(view)
            y = torch.where(okx, y5, y)
            if extra is not None:
                extra = torch.where(ok, e5, extra)
            k1 = torch.where(okx, ks[6], k1)
            if ke1 is not None:
                ke1 = torch.where(ok, kes[6], ke1)
            lam_prev = lam
            lam = torch.where(ok, lam + hh, lam)
            accepted += ok.long()
            rejected += (active & ~ok).long()
            if on_step is not None:
                on_step(attempt, lam, lam_prev, y, k1, ok)
            attempt += 1
            fac = torch.clamp(0.9 * err.clamp_min(1e-10) ** -0.2, 0.2, 10.0)
            fac = torch.where(ok, fac, torch.clamp(fac, max=1.0))
            h = torch.where(active, hh.abs() * fac, h)
        info = {"nfe": evals, "attempts": attempt, "accepted_steps": accepted.cpu(), "rejected_steps": rejected.cpu()}
        return y, extra, info

    def sample(self, den, x: torch.Tensor, t0: float, t1: float, cond=None, callback=None):
        """Solve the PF-ODE of ``den`` from path time ``t0`` to ``t1`` (both with ``0 < sigma``, ``alpha > 0``).

        ``callback`` is called after every step attempt with ``{"i", "t", "t_prev", "x", "x0_hat",
        "accepted"}``: as each sample keeps its own step size, ``t`` and ``t_prev`` are ``[B]`` float64
        tensors (each sample's time now and before the attempt; equal where it was rejected or is done),
        ``x`` the states at ``t``, ``x0_hat`` the denoiser there and ``accepted`` a ``[B]`` bool tensor.
        (:func:`pfode.sample` adds one last call for its denoising step, with ``t`` at zero noise.)
        """
        path = den.path
        l0, l1 = float(path.lam(t0)), float(path.lam(t1))
        if not (math.isfinite(l0) and math.isfinite(l1)):
            raise ValueError(
                f"dopri5 integrates in lam and needs finite lam at both ends: lam({t0:g})={l0}, lam({t1:g})={l1}; "
                "end the grid above zero noise (denoise=True then finishes at zero noise)"
            )
        dtype = x.dtype

        def rhs(y, lam, _):
            t = path.t_of_lam(lam)
            c = Coeffs.at(path, t, like=y)
            xx = y * c.alpha
            out = den.raw(xx, den.time_tensor(t, xx), cond)
            x0, _ = to_x0_eps(den.prediction, out, xx, c)
            return x0.to(dtype) - y, None

        on_step = None
        if callback is not None:

            def on_step(i, lam, lam_prev, y, dy, ok):
                t = path.t_of_lam(lam)
                a = Coeffs.at(path, t, like=y).alpha
                callback(
                    {"i": i, "t": t, "t_prev": path.t_of_lam(lam_prev), "x": y * a, "x0_hat": dy + y, "accepted": ok}
                )

        y = x / float(path.alpha(t0))
        y, _, info = self.integrate(rhs, y, l0, l1, on_step=on_step)
        return y * float(path.alpha(t1)), info


register("dopri5", Dopri5)
