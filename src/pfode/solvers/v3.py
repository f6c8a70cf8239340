"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): exponential integrator with empirical model statistics.

Formulation (the paper's, written in pfode's scaled coordinates). With ``y = x / alpha`` and
``lam = log(alpha / sigma)`` the PF-ODE of every path is ``dy/dlam = -e`` with ``e = exp(-lam) eps_hat =
y - x0_hat`` (``sigma eps_hat / alpha``). Per element, three functions of ``lam`` (the *empirical model
statistics*, :class:`EMS`) split it as

* ``e = l y + f``: ``l`` is the linear part, ``l = E[diag(d e / d y)]`` (the paper's
  ``argmin_l E||grad_x(sigma eps - l x)||_F^2``; ``d e/d y = sigma d eps/d x``, the same Jacobian);
* ``f = e - l y`` (the paper's ``f = (sigma eps - l x) / alpha``) with ``df/dlam ~ s f + b``, ``s, b`` the
  per-element least-squares fit over model trajectories.

With ``L, S`` the integrals of ``l, s`` from the step start ``lam_i`` and ``B(lam) = int e^{-S} b``, the
function ``g = e^{-S} f - B`` has ``dg/dlam = e^{-S} (f' - s f - b)``, small where the fit is good, and the
exact solution over a step to ``lam_{i+1}`` is

    y_{i+1} = e^{-L(lam_{i+1})} y_i - int e^{L(lam) - L(lam_{i+1}) + S(lam)} (g(lam) + B(lam)) dlam.

DPM-Solver-v3 replaces ``g`` by its interpolating polynomial in ``lam`` through the current and earlier
evaluations (multistep, order ``k``: ``k`` nodes) and integrates the rest exactly. ``l = 1, s = b = 0``
gives DPM-Solver++ (data prediction), ``l = s = b = 0`` DPM-Solver (noise prediction).

This is exactly the paper's formulation (its reference code uses ``f = (sigma eps - l x)/alpha`` and the
same ``L, S, B`` integrals); writing it in ``y = x / alpha`` makes it path-independent: ``l``, ``s``, ``b``
depend only on the model as a function of ``(y, lam)``, so statistics estimated on one path serve any path
with the same data (the x-space statistics of a VP path differ from these by ``s_x = s + dlog(alpha)/dlam``,
``b_x = alpha b``; the least-squares fit at fixed ``lam`` is the same problem scaled by ``1/alpha``).

Between the statistics' grid points ``l``, ``s``, ``b`` are the not-a-knot cubic splines through them;
``L`` and ``S`` are their exact antiderivatives and the remaining integrals (nested for ``B``) use
composite Gauss-Legendre quadrature on the spline's pieces, in float64 on the host, once per grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._checks import check_choice, check_int, check_spec
from ..io import decode_array, encode_array
from .base import Step, Table, get, register
from .exponential import DPMSolverPPMultistep, LinearStep, _lin, _lower_order_final, _Multistep

__all__ = ["EMS", "estimate_stats", "DPMSolverV3"]

PAPER = (
    "Zheng, Lu, Chen & Zhu, DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical Model Statistics, "
    "NeurIPS 2023"
)


# ----------------------------------------------------------------------------------------------
# The statistics


def _as_stats_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value, dtype=np.float64))
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor or array of floats: {e}") from None
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    value = value.detach().to("cpu", torch.float64).contiguous()
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} has non-finite values")
    return value


class EMS:
    """Empirical model statistics of DPM-Solver-v3: ``l``, ``s``, ``b`` on a grid of ``lam``.

    Args:
        lam: ``[L]`` half log-SNR grid (``L >= 2``), strictly increasing or strictly decreasing.
        l, s, b: ``[L, *shape]`` per-element statistics at each ``lam`` (``shape`` is one sample's shape,
            e.g. ``(64,)`` or ``(3, 32, 32)``), in the scaled coordinates of the module docs
            (``e = exp(-lam) eps_hat = l y + f``, ``df/dlam ~ s f + b``).

    Everything is kept as float64 CPU tensors; treat them as read-only (the solver caches splines of them).
    :meth:`spec` describes the statistics as JSON (bit-exact round trip through :meth:`from_spec`).
    ``l = 1, s = b = 0`` everywhere is DPM-Solver++ (:meth:`dpm_solver_pp`).
    """

    SPEC_VERSION = 1
    SPEC_KEYS = ("version", "lam", "l", "s", "b")

    def __init__(self, lam, l, s, b):
        lam = _as_stats_tensor("lam", lam)
        if lam.dim() != 1 or lam.shape[0] < 2:
            raise ValueError(f"lam must have shape [L] with L >= 2, got {tuple(lam.shape)}")
        d = lam[1:] - lam[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError("lam must be strictly increasing or strictly decreasing")
        vals = {}
        for name, v in (("l", l), ("s", s), ("b", b)):
            v = _as_stats_tensor(name, v)
            if v.dim() < 1 or v.shape[0] != lam.shape[0]:
                raise ValueError(f"{name} must have shape [L, *shape] with L={lam.shape[0]} (from lam), got "
                                 f"{tuple(v.shape)}")
            vals[name] = v
        if not (vals["l"].shape == vals["s"].shape == vals["b"].shape):
            shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in vals.items())
            raise ValueError(f"l, s and b must have the same shape [L, *shape]; got {shapes}")
        self.lam, self.l, self.s, self.b = lam, vals["l"], vals["s"], vals["b"]

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape."""
        return tuple(self.l.shape[1:])

    @property
    def lam_range(self) -> tuple[float, float]:
        """``(min, max)`` of the ``lam`` grid: a sampling grid must stay inside it."""
        return float(self.lam.min()), float(self.lam.max())

    def __len__(self) -> int:
        return self.lam.shape[0]

    @classmethod
    def dpm_solver_pp(cls, lam, shape) -> EMS:
        """The degenerate statistics ``l = 1, s = b = 0`` (DPM-Solver++) on the grid ``lam``."""
        lam = _as_stats_tensor("lam", lam)
        full = (lam.shape[0], *tuple(shape))
        return cls(lam, torch.ones(full, dtype=torch.float64), torch.zeros(full, dtype=torch.float64),
                   torch.zeros(full, dtype=torch.float64))

    # -- description -------------------------------------------------------------------------
    def spec(self) -> dict:
        """``{"version", "lam", "l", "s", "b"}``, JSON-serialisable; each array as :func:`pfode.io.encode_array`
        writes it (base64 of its little-endian float64 bytes, bit-exact)."""
        out: dict = {"version": self.SPEC_VERSION}
        for name in ("lam", "l", "s", "b"):
            out[name] = encode_array(getattr(self, name))
        return out

    @classmethod
    def from_spec(cls, spec: dict) -> EMS:
        """The statistics :meth:`spec` described (``TypeError``/``ValueError`` naming a bad or missing field)."""
        check_spec("EMS", spec, cls.SPEC_KEYS, cls.SPEC_VERSION)
        arrays = {k: decode_array(spec[k], f"EMS field {k!r}") for k in ("lam", "l", "s", "b")}
        return cls(**arrays)

    def __repr__(self):
        lo, hi = self.lam_range
        return f"EMS(points={len(self)}, shape={self.shape}, lam=[{lo:.4g}, {hi:.4g}])"

    @functools.cached_property
    def _fit(self) -> _Fit:
        return _Fit(self)


# ----------------------------------------------------------------------------------------------
# Host integrals of the statistics (float64)

_NG = 10  # Gauss-Legendre nodes per spline piece


@functools.cache
def _gauss(ng: int):
    """Nodes ``u`` and weights on ``[0, 1]``, and ``Q[m, k] = int_0^{u_m} l_k(u) du`` for the Lagrange basis
    ``l_k`` on the nodes (cumulative integration, exact for polynomials of degree < ng)."""
    x, w = np.polynomial.legendre.leggauss(ng)
    inv = np.linalg.inv(np.polynomial.legendre.legvander(x, ng - 1))  # column k: Legendre coefficients of l_k
    q = np.empty((ng, ng))
    for k in range(ng):
        anti = np.polynomial.legendre.legint(inv[:, k], lbnd=-1.0)
        q[:, k] = 0.5 * np.polynomial.legendre.legval(x, anti)
    return 0.5 * (x + 1.0), 0.5 * w, q


def _pp_eval(c: np.ndarray, knots: np.ndarray, xq: np.ndarray, cols: slice) -> np.ndarray:
    """A piecewise polynomial (scipy PPoly layout ``c[k, piece, col]``) at ``xq`` for columns ``cols``: ``[Q, C]``
    (the end pieces extend beyond the knots)."""
    idx = np.searchsorted(knots[1:-1], xq, side="right")
    dx = (xq - knots[idx])[:, None]
    out = c[0, idx, cols].copy()
    for k in range(1, c.shape[0]):
        out *= dx
        out += c[k, idx, cols]
    return out


class _Fit:
    """Not-a-knot cubic splines of ``l``, ``s``, ``b`` in increasing ``lam``, with the antiderivatives of
    ``l`` and ``s`` (scipy ``PPoly`` coefficient arrays, evaluated per column block)."""

    def __init__(self, ems: EMS):
        from scipy.interpolate import CubicSpline

        lam = ems.lam.numpy()
        flip = lam[0] > lam[-1]
        order = slice(None, None, -1) if flip else slice(None)
        self.knots = np.ascontiguousarray(lam[order])
        self.d = max(1, math.prod(ems.shape))
        self.shape = ems.shape
        L = len(self.knots)

        def spline(v):
            return CubicSpline(self.knots, np.ascontiguousarray(v.numpy().reshape(L, -1)[order]), axis=0)

        sl, ss, sb = spline(ems.l), spline(ems.s), spline(ems.b)
        self.cl, self.cs, self.cb = sl.c, ss.c, sb.c
        self.cL, self.cS = sl.antiderivative().c, ss.antiderivative().c
        self.lo, self.hi = float(self.knots[0]), float(self.knots[-1])

    def blocks(self, q: int):
        step = max(1, (1 << 21) // max(q, 1))
        return [slice(j, min(j + step, self.d)) for j in range(0, self.d, step)]

    def at(self, c, xq, cols):
        return _pp_eval(c, self.knots, np.asarray(xq, dtype=np.float64), cols)

    def pieces(self, a: float, c: float):
        """Gauss nodes ``[M, ng]`` and signed piece lengths ``[M]`` covering ``a -> c`` split at the knots."""
        lo, hi = min(a, c), max(a, c)
        inner = self.knots[(self.knots > lo) & (self.knots < hi)]
        if c < a:
            inner = inner[::-1]
        pts = np.concatenate([[a], inner, [c]])
        h = np.diff(pts)
        u, _, _ = _gauss(_NG)
        return pts[:-1, None] + h[:, None] * u[None, :], h

    def step(self, a: float, c: float, nodes: Sequence[float]):
        """The y-space coefficients of a step ``a -> c`` whose ``g`` polynomial has nodes ``nodes`` (``nodes[0]
        = a``): ``y_c = A y_a - sum_j W_j g_j - C`` and ``g_j = E_j f_j - B_j``. Returns ``(A, W, E, Bn, C,
        l_a)`` with ``W, E, Bn`` of shape ``[k, d]`` and the others ``[d]``."""
        k = len(nodes)
        _, wg, qm = _gauss(_NG)
        X, H = self.pieces(a, c)
        m = X.shape[0]
        xq = X.ravel()
        omega = (H[:, None] * wg[None, :]).ravel()
        nodes = np.asarray(nodes, dtype=np.float64)
        basis = np.ones((k, xq.size))
        for j in range(k):
            for i in range(k):
                if i != j:
                    basis[j] *= (xq - nodes[i]) / (nodes[j] - nodes[i])
        prev = [self.pieces(a, float(nodes[j])) for j in range(1, k)]
        # every point where S and b are needed, in one evaluation: a, the earlier nodes, the step's quadrature
        # nodes, then those of the pieces from a to each earlier node
        xs = np.concatenate([[a], nodes[1:], xq, *(Xp.ravel() for Xp, _ in prev)])
        q = xq.size
        A = np.empty(self.d)
        W = np.empty((k, self.d))
        E = np.ones((k, self.d))
        Bn = np.zeros((k, self.d))
        C = np.empty(self.d)
        la = np.empty(self.d)
        for cols in self.blocks(xs.size):
            S = self.at(self.cS, xs, cols)
            S -= S[0]
            b = self.at(self.cb, xs[k:], cols)
            L = self.at(self.cL, np.concatenate([[a, c], xq]), cols)
            L -= L[1]
            A[cols] = np.exp(L[0])
            la[cols] = self.at(self.cl, xs[:1], cols)[0]
            E[1:, cols] = np.exp(-S[1:k])
            Sq = S[k : k + q]
            w = np.exp(L[2:] + Sq)  # [Q, C]
            beta = (np.exp(-Sq) * b[:q]).reshape(m, _NG, -1)
            full = H[:, None] * np.einsum("j,mjc->mc", wg, beta)
            offs = np.cumsum(full, axis=0) - full
            Bq = (offs[:, None, :] + H[:, None, None] * np.einsum("ij,mjc->mic", qm, beta)).reshape(q, -1)
            ow = omega[:, None] * w
            W[:, cols] = basis @ ow
            C[cols] = np.einsum("qc,qc->c", ow, Bq)
            start = k + q
            for j, (Xp, Hp) in enumerate(prev, start=1):
                stop = start + Xp.size
                op = (Hp[:, None] * wg[None, :]).ravel()
                Bn[j, cols] = op @ (np.exp(-S[start:stop]) * b[start - k : stop - k])
                start = stop
        return A, W, E, Bn, C, la


# ----------------------------------------------------------------------------------------------
# The solver


@dataclass(frozen=True, kw_only=True)
class V3Step(Step):
    """A DPM-Solver-v3 step: per-element float64 host coefficients ``(cx, p, c0, v_0, ..., v_{k-1})`` of
    ``f = p x - x0_hat`` and ``x_next = cx x + c0 - sum_j v_j f_j`` (``f_0`` now, ``f_j`` ``j`` steps back),
    followed (corrector) by ``(cxc, c0c, w_0, ...)`` of ``x = cxc x_prev + c0c - sum_j w_j f'_j`` over
    ``f'_j = f_1, f_0, f_2, ...``, and their device/dtype copies, made once."""

    coef: tuple = field(default=(), repr=False, compare=False)
    nv: int = 1
    shape: tuple = ()
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def on(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"x has per-sample shape {tuple(x.shape[1:])} but the DPM-Solver-v3 statistics have shape "
                f"{self.shape}; estimate them for samples of this shape"
            )
        key = (x.device, x.dtype)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = tuple(c.to(device=x.device, dtype=x.dtype) for c in self.coef)
        return hit


class DPMSolverV3(_Multistep):
    """DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, 2023): multistep exponential integrator with empirical model
    statistics, one evaluation per step.

    Args:
        stats: an :class:`EMS` (e.g. from :func:`estimate_stats`) whose ``lam`` range covers the grid and whose
            ``shape`` is one sample's shape; ``None`` runs DPM-Solver++ multistep of the same order
            (``dpm++2m``/``dpm++3m``, DDIM for order 1), the paper's degenerate statistics ``l=1, s=b=0``.
        order: 1, 2 or 3: the predictor interpolates ``g`` (see the module docs) through the last ``order``
            evaluations; first steps warm up at lower order. Global order ``order`` (``order + 1`` with the
            corrector).
        lower_order_final: on grids of fewer than 15 steps, first order on the last step and at most second
            order on the one before (as DPM-Solver++).
        corrector: the paper's multistep corrector (after UniC, Zhao et al., 2023): the evaluation at the predicted
            state redoes the previous step with it as an extra node (one node more than that step's predictor, as
            the paper's order+1 corrector, here with the exact interpolating polynomial rather than its
            "pseudo-order" derivative estimates), at no extra evaluation; ``f`` of the new point is kept from the
            prediction, as the paper does. One order more. Needs ``stats``.

    Shapes: ``x`` is ``[B, *stats.shape]``; per-element coefficients broadcast over the batch. One evaluation
    per step. Per-step coefficients are computed in float64 on the host when a grid is planned
    (``plan_step``); ``update`` is tensor ops only. Not implemented: the paper's pseudo-order predictor and
    corrector and its "half" corrector (corrector only at ``t <= 0.5``), options it tunes per image benchmark.
    """

    name = "dpm-v3"
    evals_per_step = 1
    paper = PAPER

    def __init__(
        self, stats: EMS | None = None, order: int = 2, lower_order_final: bool = True, corrector: bool = False,
        orders=None,
    ):
        if orders is not None:  # a per-step order list (tuned recipes): the predictor's order is its largest
            orders = tuple(check_int(f"orders[{i}]", o, 1) for i, o in enumerate(orders))
            if not orders or max(orders) > 3:
                raise ValueError(f"orders={list(orders)} must be a non-empty list of orders 1, 2 or 3")
            order, lower_order_final = max(orders), False
        self.orders = orders
        super().__init__(order, 3, lower_order_final)
        if stats is not None and not isinstance(stats, EMS):
            raise TypeError(f"stats must be a pfode.solvers.v3.EMS or None, got {type(stats).__name__}")
        if not isinstance(corrector, bool):
            raise TypeError(f"corrector must be True or False, got {corrector!r}")
        if corrector and stats is None:
            raise ValueError("corrector=True needs stats (without statistics this is DPM-Solver++; see 'unipc')")
        self.stats = stats
        self.corrector = corrector
        self.predictor_order = order
        self.order = order + 1 if corrector else order
        if orders is not None:
            self.order = min(orders) + (1 if corrector else 0)
        self._pp = DPMSolverPPMultistep(order, lower_order_final) if (stats is None and order > 1) else None

    @property
    def multistep(self) -> bool:
        """Whether a step reads earlier evaluations (``order > 1`` or the corrector)."""
        return self.predictor_order > 1 or self.corrector

    def _order_at(self, table: Table, i: int, n: int) -> int:
        if self.orders is not None:
            if len(self.orders) < n - (1 if table[n].zero else 0):
                raise ValueError(f"orders has {len(self.orders)} entries but the grid has more steps")
            return min(self.orders[i], i + 1)
        return _lower_order_final(min(self.predictor_order, i + 1), i, n, self.lower_order_final)

    def _check_cover(self, pt, lo: float, hi: float):
        tol = 1e-9 * max(1.0, abs(pt.lam))
        if not (lo - tol <= pt.lam <= hi + tol):
            raise ValueError(
                f"grid time t={pt.t:.6g} has lam={pt.lam:.6g}, outside the lam range [{lo:.6g}, {hi:.6g}] of the "
                "DPM-Solver-v3 stats; estimate the statistics (estimate_stats t_start/t_end) over the grid's range"
            )

    def plan_step(self, table: Table, i: int, n: int) -> Step:
        p, q = table[i], table[i + 1]
        if self.stats is None:
            if self._pp is not None:
                return self._pp.plan_step(table, i, n)
            return LinearStep(i=i, cx=q.sigma / p.sigma, w=(-q.alpha * math.expm1(p.lam - q.lam),))
        fit = self.stats._fit
        k = self._order_at(table, i, n)
        for pt in (p, q):
            self._check_cover(pt, fit.lo, fit.hi)
        nodes = [table[i - j].lam for j in range(k)]
        A, W, E, Bn, C, la = fit.step(p.lam, q.lam, nodes)
        coef = [q.alpha / p.alpha * A, (1.0 - la) / p.alpha, *self._weights(q.alpha, W, E, Bn, C)]
        history = k - 1
        if self.corrector and i > 0:  # redo the step i-1 -> i with the node i added
            kp = self._order_at(table, i - 1, n)
            o = table[i - 1]
            nodes = [o.lam, p.lam] + [table[i - 1 - j].lam for j in range(1, kp)]
            A, W, E, Bn, C, _ = fit.step(o.lam, p.lam, nodes)
            coef += [p.alpha / o.alpha * A, *self._weights(p.alpha, W, E, Bn, C)]
            history = max(history, 1)
        coef = tuple(torch.from_numpy(np.ascontiguousarray(c)).reshape(fit.shape) for c in coef)
        return V3Step(i=i, order=k, history=history, coef=coef, nv=k, shape=fit.shape)

    @staticmethod
    def _weights(alpha_next, W, E, Bn, C):
        """``(c0, v_0, ..., v_{k-1})`` of ``x_next = cx x + c0 - sum_j v_j f_j`` from the y-space coefficients."""
        return [alpha_next * ((W * Bn).sum(0) - C), *(alpha_next * W[j] * E[j] for j in range(W.shape[0]))]

    def update(self, x, hist, st, d, noise=None):
        if not isinstance(st, V3Step):  # stats=None: DPM-Solver++
            ds = ((d,) + (hist or ()))[: self.order]
            return _lin(x, st.cx, zip(st.w, ds)), ds[: self.order - 1]
        coef = st.on(x)
        cx, p, c0 = coef[:3]
        x_prev, fs = hist if (self.corrector and hist) else (None, hist or ())
        f = torch.addcmul(-d, p, x)  # f at the state the network saw
        if len(coef) > 3 + st.nv:  # corrector: x = cxc x_prev + c0c - sum w_j f'_j
            cxc, c0c, *w = coef[3 + st.nv :]
            x = torch.addcmul(c0c, cxc, x_prev)
            for wj, fj in zip(w, (fs[0], f) + fs[1:]):
                x.addcmul_(wj, fj, value=-1.0)
        fs = (f,) + fs
        out = torch.addcmul(c0, cx, x)
        for vj, fj in zip(coef[3 : 3 + st.nv], fs):
            out.addcmul_(vj, fj, value=-1.0)
        if self.corrector:
            return out, (x, fs[: self.predictor_order])
        return out, fs[: self.order - 1]

    def __repr__(self):
        extra = ", corrector=True" if self.corrector else ""
        return f"DPMSolverV3(order={self.predictor_order}{extra}, stats={self.stats!r})"


# ----------------------------------------------------------------------------------------------
# Estimating the statistics

JACOBIANS = ("autograd", "fd", "exact")


def _split_cond(cond, n, sl):
    if not cond:
        return cond
    return {k: (v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
            for k, v in cond.items()}


def estimate_stats(
    den,
    n: int | None = None,
    *,
    points: int = 120,
    t_start: float | None = None,
    t_end: float | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    x_T: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    jacobian: str = "autograd",
    probes: int = 1,
    substeps: int = 2,
    solver="dpm++3m",
    fd_step: float | None = None,
    ridge: float = 1e-8,
) -> EMS:
    """Estimate DPM-Solver-v3's statistics ``l, s, b`` of a model from its own PF-ODE trajectories.

    ``n`` trajectories (default 1024) start at ``t_start`` (default ``path.t_max``) from
    ``x_T = sigma(t_start) * randn`` (or the given ``x_T``, ``[n, *shape]``) and are integrated by ``solver`` on
    a grid uniform in ``lam`` with ``points`` statistics points from ``t_start`` to ``t_end`` (default
    ``path.t_min``) and ``substeps`` steps between neighbours. At each point, per element (formulation in the
    module docs, ``y = x/alpha``, ``e = y - x0_hat``):

    * ``l = E[diag(de/dy)]``: Hutchinson's estimator ``u * (J^T u)`` with ``probes`` Rademacher vectors ``u``
      per sample (exact for a diagonal Jacobian), by autograd (``jacobian="autograd"``, default), central
      finite differences ``J u`` (``"fd"``: models that autograd cannot differentiate) or exactly, one
      backward pass per element (``"exact"``: small samples only);
    * ``f = e - l y`` and its total ``lam``-derivative along the ODE, ``f' = q + l e - l' y`` (``q = de/dlam``,
      ``dy/dlam = -e``): ``x0_hat`` and the Hutchinson integrand are differentiated along the ODE's tangent
      ``(dy/dlam, 1)`` by second-order finite differences of step ``fd_step`` in ``lam`` (default
      ``eps^(1/3)`` of the dtype), so ``l' = dl/dlam`` is the derivative of the same expectation;
    * ``s, b``: per-element least squares ``f' ~ s f + b`` over the samples,
      ``s = Cov(f', f) / (Var f + ridge (E e^2 + l^2 E y^2) + (64 eps)^2 (E y^2 + E x0_hat^2))`` and
      ``b = E f' - s E f``: the ridge (relative to the size of the terms ``f`` is the difference of) and the
      round-off floor of the model's dtype (``eps``) make a zero-variance element (``f`` constant: the model is
      affine in it) give ``s = 0, b = E f'``.

    Each sample keeps its probes along its whole trajectory: the estimator's noise is then smooth in ``lam``
    (independent probes per point would make ``l`` rough, and ``s, b`` and the solver's ``g`` with it).

    Args:
        den: a :class:`~pfode.Denoiser` of any prediction type (``x0_hat`` comes from it).
        n: number of trajectories (default 1024; with ``x_T``, its batch size).
        points: statistics grid points ``L`` (uniform in ``lam``).
        t_start, t_end: the range the statistics cover (a sampling grid must stay inside it).
        batch_size: trajectories integrated at a time.
        generator: seeds the start noise and the probes.
        cond: network keyword arguments; tensors whose first dimension is ``n`` are split with the batches.
        x_T: start states ``[n, *shape]`` at ``t_start`` (then ``shape``, ``dtype``, ``device`` come from it).
        shape, dtype, device: one sample's shape (required without ``x_T``), dtype and device of the states.
        jacobian: ``"autograd"``, ``"fd"`` or ``"exact"`` (above). probes: Rademacher vectors per sample.
        substeps: trajectory steps between statistics points. solver: the fixed-step trajectory solver.
        fd_step: finite-difference step in ``lam`` (and, times the state's scale, in ``x`` for ``"fd"``).
        ridge: relative regularisation of ``Var f`` (above).

    Cost per sample: ``(points - 1) * substeps`` trajectory evaluations plus, per point, three
    forward+backward passes (``probes`` backward passes each; ``"fd"``: ``2 probes + 1`` forward passes each).

    Returns:
        :class:`EMS` on the ``lam`` grid (increasing), ``l, s, b`` of shape ``[points, *shape]``.
    """
    from ..grids import _bounds
    from ..predictions import check_denoiser
    from ..sample import Sampler

    check_denoiser(den)
    check_int("points", points, 2)
    check_int("batch_size", batch_size, 1)
    check_int("probes", probes, 1)
    check_int("substeps", substeps, 1)
    check_choice("jacobian", jacobian, JACOBIANS)
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge={ridge!r} must be a finite number >= 0")
    if get(solver).adaptive:
        raise ValueError(f"solver={solver!r} is adaptive; the trajectories need a fixed-step solver (e.g. 'dpm++3m')")
    path = den.path
    ts, te = _bounds(path, t_start, t_end)
    lam0, lam1 = path.lam(torch.tensor([ts, te], dtype=torch.float64)).tolist()
    for name, t, lv in (("t_start", ts, lam0), ("t_end", te, lam1)):
        if not math.isfinite(lv):
            raise ValueError(f"{name}={t!r}: lam is not finite there (alpha or sigma is 0); choose a time inside "
                             "the path's range")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
            raise TypeError("x_T must be a floating-point tensor [n, *shape]")
        if n is not None and n != x_T.shape[0]:
            raise ValueError(f"n={n} differs from the {x_T.shape[0]} samples of x_T")
        n = x_T.shape[0]
        shape = tuple(x_T.shape[1:])
        dtype, device = x_T.dtype, x_T.device
    else:
        n = 1024 if n is None else check_int("n", n, 1)
        if shape is None:
            raise ValueError("give shape= (one sample's shape) or x_T= (the start states) to estimate_stats")
        shape = tuple(int(v) for v in shape)
        device = torch.device("cpu") if device is None else torch.device(device)
    if n < 2:
        raise ValueError(f"n={n}: the least-squares fit needs at least 2 samples")
    if fd_step is None:
        fd_step = float(torch.finfo(dtype).eps) ** (1.0 / 3.0)
    if not (isinstance(fd_step, (int, float)) and 0 < fd_step < 1):
        raise ValueError(f"fd_step={fd_step!r} must be in (0, 1)")
    d = max(1, math.prod(shape))
    if jacobian == "exact" and d > 4096:
        raise ValueError(f"jacobian='exact' takes one backward pass per element ({d}); use 'autograd'")

    # the statistics grid (uniform in lam) and the trajectory grid (substeps between its points)
    lams = torch.linspace(lam0, lam1, points, dtype=torch.float64)
    fine = torch.linspace(lam0, lam1, (points - 1) * substeps + 1, dtype=torch.float64)
    grid = path.t_of_lam(fine)
    grid[0], grid[-1] = ts, te
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"points={points} x substeps={substeps} is too fine for this path's time resolution")
    t_pts = grid[::substeps].clone()
    lams = fine[::substeps].clone()
    # finite-difference offsets in lam: centred inside the path's range, one-sided at its ends
    lam_lo, lam_hi = path.lam(torch.tensor([path.t_hi, path.t_lo], dtype=torch.float64)).tolist()
    offsets = []
    for lv in lams.tolist():
        if lv - 2 * fd_step < lam_lo:
            offsets.append((0.0, fd_step, 2 * fd_step))
        elif lv + 2 * fd_step > lam_hi:
            offsets.append((0.0, -fd_step, -2 * fd_step))
        else:
            offsets.append((0.0, -fd_step, fd_step))
    tau = torch.tensor(offsets, dtype=torch.float64)  # [L, 3], tau[:, 0] = 0
    t_fd = path.t_of_lam(lams[:, None] + tau)
    t_fd[:, 0] = t_pts
    a_fd = path.alpha(t_fd)

    sampler = Sampler(den, grid, solver, denoise=False)
    acc64 = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
    sums = torch.zeros(10, points, d, dtype=torch.float64)  # y, e, q, yy, ee, ey, eq, yq, h, h'

    def x0_and_diag(x, t, a, cond_b, us):
        """``x0_hat(x)`` and per sample ``u * (de/dy)^T u`` averaged over the probes ``us`` (``[B, ...]``)."""
        b = x.shape[0]
        if jacobian == "exact":
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                x0 = den.pair_at(xg, t, cond_b)[0]
                flat = x0.reshape(b, -1)
                diag = torch.empty_like(flat)
                for j in range(d):
                    g = torch.autograd.grad(flat[:, j].sum(), xg, retain_graph=j < d - 1)[0]
                    diag[:, j] = g.reshape(b, -1)[:, j]
            return x0.detach(), 1.0 - a * diag.reshape(x.shape)
        acc = torch.zeros_like(x)
        if jacobian == "autograd":
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                x0 = den.pair_at(xg, t, cond_b)[0]
                for j, u in enumerate(us):
                    g = torch.autograd.grad(x0, xg, u, retain_graph=j < probes - 1)[0]
                    acc += u * g
            x0 = x0.detach()
        else:  # central differences of x0_hat along u, step relative to the state's size
            x0 = den.pair_at(x, t, cond_b)[0]
            scale = fd_step * max(1.0, float(x.abs().max()))
            for u in us:
                jp = den.pair_at(x + scale * u, t, cond_b)[0]
                jm = den.pair_at(x - scale * u, t, cond_b)[0]
                acc += u * (jp - jm) / (2 * scale)
        return x0, 1.0 - a * acc / probes

    def accumulate(k: int, x: torch.Tensor, cond_b, us):
        x = x.detach()
        tk = tau[k].tolist()
        a = a_fd[k].tolist()
        y = x / a[0]
        x0, h = x0_and_diag(x, float(t_fd[k, 0]), a[0], cond_b, us)
        v = x0 - y  # dy/dlam
        x0s, hs = [x0], [h]
        for m in (1, 2):
            xm = (y + tk[m] * v) * a[m]
            x0m, hm = x0_and_diag(xm, float(t_fd[k, m]), a[m], cond_b, us)
            x0s.append(x0m)
            hs.append(hm)
        if tk[1] < 0 < tk[2]:  # centred
            def deriv(vals):
                return (vals[2] - vals[1]) / (tk[2] - tk[1])
        else:  # one-sided, second order: offsets 0, s, 2s
            step = tk[1]

            def deriv(vals):
                return (-3.0 * vals[0] + 4.0 * vals[1] - vals[2]) / (2.0 * step)
        dx0, dh = deriv(x0s), deriv(hs)
        e = y - x0
        q = v - dx0  # de/dlam along the ODE
        y, e, q, h, dh = (c.to(acc64).reshape(c.shape[0], -1) for c in (y, e, q, h, dh))  # products in float64
        cols = [y, e, q, y * y, e * e, e * y, e * q, y * q, h, dh]
        part = torch.stack([c.sum(0) for c in cols])
        sums[:, k] += part.to("cpu", torch.float64)

    if x_T is None:
        sig0 = float(path.sigma(torch.tensor(ts, dtype=torch.float64)))
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        bsz = sl.stop - sl.start
        if x_T is None:
            gdev = generator.device if generator is not None else "cpu"
            xb = (torch.randn((bsz, *shape), generator=generator, dtype=dtype, device=gdev) * sig0).to(device)
        else:
            xb = x_T[sl]
        cond_b = _split_cond(cond, n, sl)
        # one set of probes per sample for its whole trajectory (and the finite differences): the estimator's
        # noise is then a smooth function of lam, and the finite difference of the estimator estimates l'
        gdev = generator.device if generator is not None else "cpu"
        us = [] if jacobian == "exact" else [
            torch.randint(0, 2, xb.shape, generator=generator, device=gdev).to(device=xb.device, dtype=xb.dtype) * 2 - 1
            for _ in range(probes)
        ]

        def callback(info, cond_b=cond_b, us=us):
            if info["i"] % substeps == 0:
                accumulate(info["i"] // substeps, info["x"], cond_b, us)

        with torch.no_grad():
            x_end = sampler(xb, callback=callback, cond=cond_b)
            accumulate(points - 1, x_end, cond_b, us)

    m = sums / n
    my, me, mq, myy, mee, mey, meq, myq, l, dl = m.unbind(0)
    mf = me - l * my
    mdf = mq + l * me - dl * my
    var = mee - 2 * l * mey + l * l * myy - mf * mf
    cov = meq + l * mee - dl * mey - l * myq - l * l * mey + l * dl * myy - mf * mdf
    # the ridge, relative to the size of what f is the difference of, plus a round-off floor of the model's dtype
    # (e = y - x0_hat is known to ~eps |y|, |x0_hat|): below it a variance is indistinguishable from zero
    floor = (64 * float(torch.finfo(dtype).eps)) ** 2
    mxx = myy - 2 * mey + mee  # E[x0_hat^2]
    var = var.clamp_min(0.0) + ridge * (mee + l * l * myy) + floor * (myy + mxx)
    s = torch.where(var > 0, cov / torch.where(var > 0, var, torch.ones_like(var)), torch.zeros_like(var))
    b = mdf - s * mf
    full = (points, *shape)
    return EMS(lams, l.reshape(full), s.reshape(full), b.reshape(full))


register("dpm-v3", DPMSolverV3)
