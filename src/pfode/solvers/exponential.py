"""Exponential integrators in ``lam = log(alpha/sigma)``.

With ``y = x / alpha`` the PF-ODE of every path reads ``dy/dlam = x0_hat - y``, whose exact solution
over a step ``h = lam_next - lam`` is

    x_next = (sigma_next / sigma) x + alpha_next * int_0^h e^{-(h - u)} x0_hat(lam + u) du.

The solvers here differ in how they approximate ``x0_hat`` (or ``eps_hat``) inside the integral.
All coefficients are host floats computed once per grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_choice, check_int
from .base import Solver, Step, Table, register
from .fused import lin

__all__ = ["DDIM", "DPMSolver", "DPMSolverPP2S", "DPMSolverPPMultistep", "UniPC", "DEIS", "IPNDM", "phi"]


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_n z^n / (n + k)!`` (``phi_0 = e^z``, ``phi_1 = (e^z - 1)/z``), stable for small ``z``."""
    if abs(z) < 0.5:
        term, total = 1.0 / math.factorial(k), 0.0
        for n in range(30):
            total += term
            term *= z / (n + k + 1)
        return total
    val = math.exp(z)
    for j in range(k):
        val = (val - 1.0 / math.factorial(j)) / z
    return val


def _up(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is a float16/bfloat16 tensor, else ``x`` itself.

    Noise-prediction steps rebuild ``eps_hat = (x - alpha x0_hat) / sigma`` from the state: at low noise this
    difference cancels, and in a half-precision state it would keep about one significant digit. They compute
    it, and the step, in float32 and round only the new state to the state's dtype.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _lin(x: torch.Tensor, cx: float, terms) -> torch.Tensor:
    """``cx * x + sum w * d``, accumulated in place in one fresh tensor."""
    out = x * cx
    for w, d in terms:
        out.add_(d, alpha=w)
    return out


@dataclass(frozen=True, kw_only=True)
class LinearStep(Step):
    """``x_next = cx x + sum_j w[j] D_j (+ cz z)``: the current and earlier ``x0_hat`` (or ``eps_hat``)
    values ``D_j``, and noise ``z`` for stochastic steps."""

    cx: float
    w: tuple[float, ...] = ()
    cz: float = 0.0


def linear_update(x, hist, st: LinearStep, d, noise):
    """``x_next = cx x + w[0] D + w[1] D_prev + cz z`` with ``D = x0_hat(x)``; it keeps ``(D,)`` as history
    when a step reads it (``st.history``)."""
    out = torch.add(x * st.cx, d, alpha=st.w[0])
    if st.history:
        out = torch.add(out, hist[0], alpha=st.w[1])
    if st.cz:
        out = torch.add(out, noise(), alpha=st.cz)
    return out, ((d,) if len(st.w) > 1 else hist)


def fuse_linear(b, st: LinearStep, hist: tuple, basis: str, keep: int):
    """A folded :class:`LinearStep`: ``x_next = cx x + sum w[j] D_j (+ cz z)`` with ``D_0`` the current ``x0_hat``
    (``basis="x0"``) or ``eps_hat`` (``"eps"``) and ``D_j`` (j > 0) the kept ones; keeps the first ``keep``."""
    out = b.eval(st.i, b.x)
    d = b.x0(st.i, b.x, out) if basis == "x0" else b.eps(st.i, b.x, out)
    ds = (d,) + tuple(hist)
    terms = lin((st.cx, {b.x: 1.0}), *zip(st.w, ds))
    if st.cz:
        terms = lin((1.0, terms), (st.cz, {b.noise(): 1.0}))
    return terms, ds[:keep]


@dataclass(frozen=True, kw_only=True)
class EpsStep(LinearStep):
    """A :class:`LinearStep` on ``eps_hat = (x - a x0_hat) / s`` at the step's start."""

    a: float
    s: float


class DDIM(Solver):
    """DDIM (Song et al., 2021): the first-order exponential integrator, one evaluation per step.

    ``x_next = (sigma_next/sigma) x + alpha_next (1 - e^{-h}) x0_hat`` with ``h = lam_next - lam``; the
    same update in noise- or data-prediction form. With ``eta > 0`` it is the stochastic DDIM family:
    ``eta = 1`` is DDPM's ancestral sampler on any path (posterior variance in ``s = sigma/alpha``).
    """

    name = "ddim"
    order = 1
    evals_per_step = 1
    paper = "Song, Meng & Ermon, Denoising Diffusion Implicit Models, ICLR 2021"

    def __init__(self, eta: float = 0.0):
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta={eta!r} must be in [0, 1]")
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        if self.stochastic:
            self.name = "ddpm" if self.eta == 1.0 else "ddim"
            self.paper = (
                "Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models, NeurIPS 2020 (eta=1); " + DDIM.paper
            )

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p, q = table[i], table[i + 1]
        s, sn = p.s, q.s
        c = self.eta * sn * math.sqrt(max(s * s - sn * sn, 0.0)) / s
        k = math.sqrt(max(sn * sn - c * c, 0.0)) / s
        return LinearStep(i=i, cx=q.alpha * k / p.alpha, w=(q.alpha * (1.0 - k),), cz=q.alpha * c)

    def update(self, x, hist, st, d, noise=None):
        return linear_update(x, hist, st, d, noise)

    def fuse_step(self, b, st, hist):
        return fuse_linear(b, st, hist, "x0", 0)

    def adjoint_weights(self, r):
        return None if self.stochastic else (1.0,)


class DPMSolver(Solver):
    """DPM-Solver, singlestep, noise-prediction form (Lu et al., 2022), orders 1-3.

    Order ``k`` spends ``k`` evaluations per step (intermediate points at ``r h`` in ``lam``:
    ``r = 1/2`` for order 2, ``1/3, 2/3`` for order 3). ``orders`` gives a per-step order list, as
    DPM-Solver-fast does (``name="dpm-fast"``: for a budget of ``K`` evaluations, ``K // 3`` third-order
    steps and one lower-order step, on a ``logsnr`` grid).
    """

    name = "dpm"
    evals_per_step = 1
    paper = (
        "Lu et al., DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps, "
        "NeurIPS 2022"
    )

    def __init__(self, order: int = 2, orders: list[int] | None = None, fast: bool = False):
        check_int("order", order, 1)
        if order > 3:
            raise ValueError(f"order={order}: DPM-Solver supports orders 1, 2, 3")
        if orders is not None:
            orders = [check_int("orders[i]", o, 1) for o in orders]
            if any(o > 3 for o in orders):
                raise ValueError(f"orders={orders}: each must be 1, 2 or 3")
        top = max(orders) if orders else order
        self.orders = orders
        self.fast = bool(fast)
        self.evals_per_step = top
        self.name = "dpm-fast" if fast else f"dpm{top}"
        # the global order: a bounded number of steps of order k limits it to k + 1 (DPM-Solver-fast ends with
        # steps of order 2 and 1: global order 2)
        if fast:
            self.order = min(top, 2)
        elif orders:
            lo = min(orders)
            self.order = lo if orders.count(lo) > 1 else min(top, lo + 1)
        else:
            self.order = order

    def _order_at(self, i: int, n: int) -> int:
        # n counts the steps before any final step to zero noise (that one is always first order)
        if self.orders is not None:
            if len(self.orders) < n:
                raise ValueError(f"orders has {len(self.orders)} entries but the grid has {n} steps")
            return self.orders[i]
        if self.fast:  # budget 3(n-1) split as [3]*(n-2) + [2, 1]
            return 3 if i < n - 2 else (2 if i == n - 2 else 1)
        return self.order

    def evals(self, steps: int, zero_end: bool) -> int:
        if self.orders is not None:
            return sum(self.orders[:steps]) + (1 if zero_end else 0)
        if self.fast:
            body = 3 * (steps - 2) + 3 if steps >= 2 else 1
            return body + (1 if zero_end else 0)
        return super().evals(steps, zero_end)

    def for_nfe(self, nfe, zero_end):
        if not self.fast:
            return super().for_nfe(nfe, zero_end)
        k = nfe - (1 if zero_end else 0)
        if k < 1:
            raise ValueError(f"nfe={nfe} is too small for dpm-fast (needs at least {2 if zero_end else 1})")
        m = k // 3 + 1
        if k % 3 == 0:
            orders = [3] * (m - 2) + [2, 1]
        else:
            orders = [3] * (m - 1) + [k % 3]
        s = DPMSolver(orders=orders)
        s.name = "dpm-fast"
        return len(orders), s

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        k = self._order_at(i, n - 1 if table[n].zero else n)
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        ex = math.expm1(h)
        # stage j starts from u_j = ax[j] x + ce[j] e0 (+ c1[j] (e1 - e0)) and evaluates at point idx[j]
        stages: list[tuple[int, float, float, float, float, float]] = []  # (idx, ax, ce, c1, a, s)
        if k == 2:
            m = table[table.add_lam(p.lam + 0.5 * h)]
            stages.append((len(table) - 1, m.alpha / p.alpha, -m.sigma * math.expm1(0.5 * h), 0.0, m.alpha, m.sigma))
            c_last = -q.sigma * ex  # c1 = -sigma_next / (2 r1) (e^h - 1) with r1 = 1/2
        elif k == 3:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            j1, j2 = table.add_lam(p.lam + r1 * h), table.add_lam(p.lam + r2 * h)
            m1, m2 = table[j1], table[j2]
            stages.append((j1, m1.alpha / p.alpha, -m1.sigma * math.expm1(r1 * h), 0.0, m1.alpha, m1.sigma))
            u2_c1 = -m2.sigma * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
            stages.append((j2, m2.alpha / p.alpha, -m2.sigma * math.expm1(r2 * h), u2_c1, m2.alpha, m2.sigma))
            c_last = -q.sigma / r2 * (ex / h - 1.0)
        else:
            c_last = 0.0
        return DPMStep(
            i=i, order=k, evals=k, cx=q.alpha / p.alpha, w=(-q.sigma * ex,), a=p.alpha, s=p.sigma,
            stages=tuple(stages), c_last=c_last,
        )

    def step(self, x, hist, st, noise=None):
        d0 = yield st.i, x
        xc = _up(x)  # eps_hat = (x - alpha x0_hat) / sigma cancels at low noise: float32 for half states
        e0 = torch.add(xc, _up(d0), alpha=-st.a).mul_(1.0 / st.s)
        out = torch.add(xc * st.cx, e0, alpha=st.w[0])
        e1 = None
        for idx, ax, ce, c1, a, s in st.stages:
            u = torch.add(xc * ax, e0, alpha=ce)
            if c1:
                u.add_(e1 - e0, alpha=c1)
            u = u.to(x.dtype)  # the state the network sees
            e1 = torch.add(_up(u), _up((yield idx, u)), alpha=-a).mul_(1.0 / s)
        if e1 is not None:
            out = torch.add(out, e1 - e0, alpha=st.c_last)
        return out.to(x.dtype), hist, d0

    def fuse_step(self, b, st, hist):
        x = {b.x: 1.0}
        e0 = b.eps(st.i, b.x, b.eval(st.i, b.x))
        res = lin((st.cx, x), (st.w[0], e0))
        e1 = None
        for idx, ax, ce, c1, _, _ in st.stages:
            u = lin((ax, x), (ce, e0))
            if c1:
                u = lin((1.0, u), (c1, e1), (-c1, e0))
            ur = b.comb(u)
            e1 = b.eps(idx, ur, b.eval(idx, ur))
        if e1 is not None:
            res = lin((1.0, res), (st.c_last, e1), (-st.c_last, e0))
        return res, hist

    def adjoint_weights(self, r):
        return (1.0,) if self.evals_per_step == 1 else None  # every step first order: DDIM


@dataclass(frozen=True, kw_only=True)
class DPMStep(EpsStep):
    """A DPM-Solver step: ``stages`` ``(point, ax, ce, c1, alpha, sigma)`` of the intermediate evaluations and
    the weight ``c_last`` of the last stage's ``eps`` difference."""

    stages: tuple = ()
    c_last: float = 0.0


class DPMSolverPP2S(Solver):
    """DPM-Solver++(2S): singlestep second order in data prediction (Lu et al., 2022b), 2 evaluations per step."""

    name = "dpm++2s"
    order = 2
    evals_per_step = 2
    paper = "Lu et al., DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, 2022"

    def __init__(self, r: float = 0.5):
        if not (0 < r < 1):
            raise ValueError(f"r={r!r} must be in (0, 1)")
        self.r = float(r)

    def plan_step(self, table, i, n):
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        r = self.r
        j = table.add_lam(p.lam + r * h)
        m = table[j]
        w = -q.alpha * math.expm1(-h)
        return PP2SStep(
            i=i, order=2, evals=2, cx=q.sigma / p.sigma, w=(w * (1 - 1 / (2 * r)), w / (2 * r)),
            j=j, u_x=m.sigma / p.sigma, u_d=-m.alpha * math.expm1(-r * h),
        )

    def step(self, x, hist, st, noise=None):
        d0 = yield st.i, x
        d1 = yield st.j, torch.add(x * st.u_x, d0, alpha=st.u_d)
        return _lin(x, st.cx, zip(st.w, (d0, d1))), hist, d0

    def fuse_step(self, b, st, hist):
        x = {b.x: 1.0}
        d0 = b.x0(st.i, b.x, b.eval(st.i, b.x))
        u = b.comb(lin((st.u_x, x), (st.u_d, d0)))
        d1 = b.x0(st.j, u, b.eval(st.j, u))
        return lin((st.cx, x), (st.w[0], d0), (st.w[1], d1)), hist


@dataclass(frozen=True, kw_only=True)
class PP2SStep(LinearStep):
    """DPM-Solver++(2S): the intermediate point ``j`` reached by ``u_x x + u_d x0_hat``."""

    j: int
    u_x: float
    u_d: float


def _lower_order_final(k: int, i: int, n: int, enabled: bool) -> int:
    """DPM-Solver++'s lower-order final steps: on grids of fewer than 15 steps the last step is first order
    and the one before it at most second order (a last step to zero noise is first order anyway)."""
    if enabled and n < 15:
        if i == n - 1:
            return 1
        if i == n - 2:
            return min(k, 2)
    return k


class _Multistep(Solver):
    """Shared warm-up logic: order at step ``i`` is ``min(order, i + 1)``; optional lower-order final."""

    def __init__(self, order: int, max_order: int, lower_order_final: bool = True):
        check_int("order", order, 1)
        if order > max_order:
            raise ValueError(f"order={order}: {type(self).__name__} supports orders 1 to {max_order}")
        self.order = order
        self.lower_order_final = bool(lower_order_final)

    def _order_at(self, table: Table, i: int, n: int) -> int:
        return _lower_order_final(min(self.order, i + 1), i, n, self.lower_order_final)

    @staticmethod
    def _push(hist, d, keep):
        return ((d,) + (hist or ()))[:keep]


class DPMSolverPPMultistep(_Multistep):
    """DPM-Solver++(2M) and (3M): multistep data prediction (Lu et al., 2022b), one evaluation per step.

    2M is the paper's update ``D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``. 3M uses the exact
    ``phi``-function weights with first and second divided differences of ``x0_hat`` in ``lam``.
    Warm-up: first-order first step, second-order second step. ``lower_order_final``: on grids of
    fewer than 15 steps the last step is first order and the one before it at most second order.
    """

    paper = DPMSolverPP2S.paper
    evals_per_step = 1

    def __init__(self, order: int = 2, lower_order_final: bool = True):
        super().__init__(order, 3, lower_order_final)
        if order < 2:
            raise ValueError(f"order={order}: DPM-Solver++ multistep has orders 2 and 3 (order 1 is 'ddim')")
        self.name = f"dpm++{order}m"

    def plan_step(self, table, i, n):
        k = self._order_at(table, i, n)
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        a = q.alpha
        cx = q.sigma / p.sigma
        e1 = -math.expm1(-h)  # h phi_1(-h)
        if k == 1:
            return LinearStep(i=i, cx=cx, w=(a * e1,))
        r0 = (p.lam - table[i - 1].lam) / h
        if k == 2:
            w = (a * e1 * (1 + 1 / (2 * r0)), -a * e1 / (2 * r0))
            return LinearStep(i=i, order=2, history=1, cx=cx, w=w)
        r1 = (table[i - 1].lam - table[i - 2].lam) / h
        # D1 ~ h x0', D2 ~ h^2 x0'' / 2 from divided differences; exact weights h phi_2, 2 h phi_3
        c1, c2 = h * phi(2, -h), 2 * h * phi(3, -h)
        # D1_0 = (D0 - D1)/r0, D1_1 = (D1 - D2)/r1
        # D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1)
        g = r0 / (r0 + r1)
        w_d10 = c1 * (1 + g) + c2 / (r0 + r1)
        w_d11 = -c1 * g - c2 / (r0 + r1)
        w0 = a * (e1 + w_d10 / r0)
        w1 = a * (-w_d10 / r0 + w_d11 / r1)
        w2 = a * (-w_d11 / r1)
        return LinearStep(i=i, order=3, history=2, cx=cx, w=(w0, w1, w2))

    def update(self, x, hist, st, d, noise=None):
        ds = ((d,) + (hist or ()))[: self.order]
        return _lin(x, st.cx, zip(st.w, ds)), ds[: self.order - 1]

    def fuse_step(self, b, st, hist):
        return fuse_linear(b, st, hist, "x0", self.order - 1)

    def adjoint_weights(self, r):
        if self.order != 2:
            return None
        return (1.0,) if r is None else (1.0 + 0.5 / r, -0.5 / r)


class UniPC(_Multistep):
    """UniPC (Zhao et al., 2023): multistep predictor UniP-p with corrector UniC-p, data prediction.

    The corrector reuses the evaluation at the predicted point, so each step costs one evaluation
    and the accuracy order is ``order + 1`` (UniC raises it by one). Variants: ``"bh1"`` with
    ``B(h) = h`` and ``"bh2"`` with ``B(h) = 1 - e^{-h}``. For two points the predictor uses the
    paper's ``a_1 = 1/2``; higher orders solve the Vandermonde system. ``corrector=False`` gives UniP alone.
    """

    name = "unipc"
    evals_per_step = 1
    paper = (
        "Zhao et al., UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models, "
        "NeurIPS 2023"
    )

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True):
        super().__init__(order, 3, lower_order_final)
        self.variant = check_choice("variant", variant, ("bh1", "bh2"))
        self.corrector = bool(corrector)
        self.order = order + 1 if self.corrector else order
        self.predictor_order = order

    def _order_at(self, table, i, n):
        return _lower_order_final(min(self.predictor_order, i + 1), i, n, self.lower_order_final)

    def _weights(self, table: Table, i: int, k: int, include_new: bool):
        """UniP (``include_new=False``) or UniC weights for the step from ``i`` to ``i + 1``.

        Returns ``(cx, w)``: ``x_next = cx * x_i + sum_j w[j] * D_{i-j}``, and for UniC an extra
        weight for ``D_{i+1}`` appended at the end.
        """
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        a = q.alpha
        cx = q.sigma / p.sigma
        b_h = h if self.variant == "bh1" else -math.expm1(-h)
        w = [a * -math.expm1(-h)] + [0.0] * (k - 1)
        # points used for differences: previous D_{i-m} (m = 1..k-1), and for UniC the new D_{i+1}
        rs = [(table[i - m].lam - p.lam) / h for m in range(1, k)]
        if include_new:
            rs.append(1.0)
        w_new = 0.0
        if rs:
            m = len(rs)
            if m == 1:
                rho = np.array([0.5])
            else:
                R = np.array([[r**j for r in rs] for j in range(m)])
                b = np.array([math.factorial(j + 1) * h * phi(j + 2, -h) / b_h for j in range(m)])
                rho = np.linalg.solve(R, b)
            for idx, (r, c) in enumerate(zip(rs, rho)):
                coef = a * b_h * float(c) / r
                w[0] -= coef
                if include_new and idx == m - 1:
                    w_new = coef
                else:
                    w[idx + 1] += coef
        return cx, w, w_new

    def plan_step(self, table, i, n):
        k = self._order_at(table, i, n)
        cx, w, _ = self._weights(table, i, k, include_new=False)
        corr = ()
        if self.corrector and i > 0:
            kc = self._order_at(table, i - 1, n)  # corrector of the previous step's state, same order
            ccx, cw, cnew = self._weights(table, i - 1, kc, include_new=True)
            corr = (ccx, tuple(cw), cnew)
        return UniPCStep(i=i, order=k, history=max(k - 1, 1 if corr else 0), cx=cx, w=tuple(w), corrector=corr)

    def update(self, x, hist, st, d, noise=None):
        prev_x, ds = hist if hist else (None, ())
        if st.corrector:  # correct x_i with the evaluation at the predicted point (no extra call)
            ccx, cw, cnew = st.corrector
            x = _lin(prev_x, ccx, zip(cw, ds)).add_(d, alpha=cnew)
        ds = ((d,) + ds)[: self.predictor_order]
        return _lin(x, st.cx, zip(st.w, ds)), (x, ds)

    def fuse_step(self, b, st, hist):
        prev_x, ds = (hist[0], tuple(hist[1:])) if hist else (None, ())
        d = b.x0(st.i, b.x, b.eval(st.i, b.x))
        x = {b.x: 1.0}
        if st.corrector:  # d is read twice: materialise it once (it is kept anyway)
            d = b.keep(d)
            ccx, cw, cnew = st.corrector
            x = {b.comb(lin((ccx, prev_x), *zip(cw, ds), (cnew, d))): 1.0}
        ds = ((d,) + ds)[: self.predictor_order]
        return lin((st.cx, x), *zip(st.w, ds)), (x,) + ds


@dataclass(frozen=True, kw_only=True)
class UniPCStep(LinearStep):
    """UniPC: the predictor's weights, and the corrector ``(cx, w, w_new)`` of the step's start state."""

    corrector: tuple = ()


def _lagrange_weights(nodes: list[float], a: float, b: float, s_of_v) -> list[float]:
    """``w_j = int_a^b l_j(v) s'(v) dv`` for the Lagrange basis on ``nodes``, by parts and 64-point Gauss-Legendre.

    ``s_of_v`` maps an array of the variable to ``s = sigma/alpha``.
    """
    scale = b - a
    u_nodes = np.array([(v - a) / scale for v in nodes])
    gx, gw = np.polynomial.legendre.leggauss(64)
    u = 0.5 * (gx + 1.0)
    s_vals = s_of_v(a + scale * u)
    s_a, s_b = s_of_v(np.array([a, b]))
    out = []
    for j in range(len(nodes)):
        others = np.delete(u_nodes, j)
        poly = np.poly1d(np.poly(others)) / np.prod(u_nodes[j] - others) if len(others) else np.poly1d([1.0])
        dpoly = np.polyder(poly)
        integral = 0.5 * float(np.sum(gw * dpoly(u) * s_vals))  # du-integral of l_j'(u) s
        out.append(float(poly(1.0) * s_b - poly(0.0) * s_a - integral))
    return out


class _AdamsInS(_Multistep):
    """Multistep on ``dy/ds = eps_hat`` with ``eps_hat`` interpolated by a polynomial in a variable ``v``.

    ``y_next = y + sum_j w_j eps_{i-j}``, ``w_j = int l_j(v) ds(v)``, exact for the polynomial.
    """

    variable = "s"

    def _s_of_v(self, table: Table):
        if self.variable == "s":
            return lambda v: np.asarray(v, dtype=np.float64)
        if self.variable == "lam":
            return lambda v: np.exp(-np.asarray(v, dtype=np.float64))
        path = table.path
        return lambda v: path.s(torch.as_tensor(np.asarray(v), dtype=torch.float64)).numpy()

    def _coord(self, pt):
        return {"s": pt.s, "lam": pt.lam, "t": pt.t}[self.variable]

    def _ab_weights(self, table, i, k):
        nodes = [self._coord(table[i - m]) for m in range(k)]
        return _lagrange_weights(nodes, self._coord(table[i]), self._coord(table[i + 1]), self._s_of_v(table))

    def plan_step(self, table, i, n):
        k = self._order_at(table, i, n)
        p, q = table[i], table[i + 1]
        w = self._ab_weights(table, i, k)
        # x_next = alpha_next (x / alpha + sum w_j eps_j), eps_j stored in history
        return EpsStep(
            i=i, order=k, history=k - 1, cx=q.alpha / p.alpha, w=tuple(q.alpha * v for v in w), a=p.alpha, s=p.sigma
        )

    def update(self, x, hist, st, d, noise=None):
        xc = _up(x)  # eps_hat (kept as history) in float32 for half states, see _up
        e = torch.add(xc, _up(d), alpha=-st.a).mul_(1.0 / st.s)
        hist = self._push(hist, e, self.order)
        return _lin(xc, st.cx, zip(st.w, hist)).to(x.dtype), hist

    def fuse_step(self, b, st, hist):
        return fuse_linear(b, st, hist, "eps", self.order)


class DEIS(_AdamsInS):
    """DEIS tAB (Zhang & Chen, 2023): exponential integrator with ``eps_hat`` extrapolated by a polynomial in ``t``.

    ``order`` is the number of points of the polynomial (1 = DDIM, 2 = linear, 3 = quadratic); one
    evaluation per step, lower-order warm-up. ``variable="lam"`` or ``"s"`` (rhoAB) put the polynomial
    in ``lam`` or in ``s = sigma/alpha`` instead of path time.
    """

    name = "deis"
    evals_per_step = 1
    paper = "Zhang & Chen, Fast Sampling of Diffusion Models with Exponential Integrator, ICLR 2023"

    def __init__(self, order: int = 3, variable: str = "t", lower_order_final: bool = True):
        super().__init__(order, 3, lower_order_final)
        self.variable = check_choice("variable", variable, ("t", "lam", "s"))


class IPNDM(_AdamsInS):
    """iPNDM (Zhang & Chen, 2023; after Liu et al.'s PNDM): Adams-Bashforth on ``dy/ds = eps_hat``, order up to 4.

    Lower-order warm-up (orders 1, 2, 3, 4). ``variable_step=True`` (default) integrates the
    interpolating polynomial exactly on any grid; ``False`` uses the classic constant-step
    coefficients (1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24), which keep their
    order only on grids uniform in ``s``.
    """

    name = "ipndm"
    evals_per_step = 1
    paper = "Zhang & Chen, Fast Sampling of Diffusion Models with Exponential Integrator, ICLR 2023 (iPNDM)"
    _FIXED = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}

    def __init__(self, order: int = 4, variable_step: bool = True, lower_order_final: bool = False):
        super().__init__(order, 4, lower_order_final)
        self.variable_step = bool(variable_step)

    def _ab_weights(self, table, i, k):
        if self.variable_step:
            return super()._ab_weights(table, i, k)
        ds = table[i + 1].s - table[i].s
        return [ds * c for c in self._FIXED[k]]


register("ddim", DDIM)
register("ddpm", DDIM, eta=1.0)
register("dpm1", DPMSolver, order=1)
register("dpm2", DPMSolver, order=2)
register("dpm3", DPMSolver, order=3)
register("dpm-fast", DPMSolver, order=3, fast=True)
register("dpm++2s", DPMSolverPP2S)
register("dpm++2m", DPMSolverPPMultistep, order=2)
register("dpm++3m", DPMSolverPPMultistep, order=3)
register("unipc", UniPC)
register("deis", DEIS)
register("ipndm", IPNDM)
