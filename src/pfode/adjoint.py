"""Gradients through the sampler with memory that does not grow with the number of steps.

:func:`pfode.sample` is differentiable as it is (no ``no_grad`` inside): backpropagating through it keeps
every step's graph, so memory grows linearly with the steps. :func:`adjoint_sample` returns the same
samples from a ``torch.autograd.Function`` whose backward pass solves the adjoint problem step by step:

``method="discrete"`` (default, exact)
    The forward pass keeps only the states at the grid points (and the solver's history of ``x0_hat``,
    without graphs). The backward pass walks the steps in reverse, recomputes one step at a time with
    autograd and pulls the cotangents of its outputs (state and history) back to its inputs, the
    network's parameters and the conditioning tensors. For an exponential integrator this *is* an
    exponential integrator for the adjoint ODE (the discrete adjoint of DDIM,
    ``g_k = (sigma_{k+1}/sigma_k) g_{k+1} + alpha_{k+1} (1 - e^{-h}) J_k^T g_{k+1}``, is DDIM applied to
    ``dA/dlam = A - alpha J^T A`` backwards); the gradients equal those of direct backpropagation up to
    float rounding, for every fixed-step deterministic solver. Memory: one step's graph plus the grid
    states (no graphs).

``method="continuous"`` (AdjointDPM, Pan et al., "AdjointDPM: Adjoint Sensitivity Method for Gradient
Backpropagation of Diffusion Probabilistic Models", ICLR 2024)
    Nothing but the final state is kept. With ``y = x / alpha`` the PF-ODE is ``dy/dlam = x0_hat - y``;
    the adjoint ``A = dL/dy`` obeys ``dA/dlam = A - v`` with ``v = (d x0_hat / dy)^T A`` and the
    parameter gradient is ``int w dlam`` with ``w = (d x0_hat / d theta)^T A``. The backward pass solves
    ``(y, A)`` from ``lam_N`` back to ``lam_0`` with the exponential integrator of the forward solver
    (``ddim``: ``x0_hat`` and ``v`` frozen over a step; ``dpm++2m``: extrapolated from the last two
    steps), recovering ``y`` by integrating the ODE in reverse, accumulates ``int w dlam`` by the
    trapezoid rule, and takes the vector-Jacobian products from ``torch.autograd.grad`` (one forward and
    one backward network pass per grid point). Memory is
    constant in the number of steps; the gradient is that of the continuous ODE, accurate to the
    solver's order (not bit-equal to direct backpropagation).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_choice
from .engine import PFODE, drive
from .predictions import Denoiser
from .solvers.base import Evaluator, Solver, available, get, run

__all__ = ["adjoint_sample", "attach", "ADJOINT_METHODS", "GRADIENTS", "CONTINUOUS_SOLVERS"]

ADJOINT_METHODS = ("discrete", "continuous")
#: gradient strategies of the sampling loop (``pfode.sample(..., gradient=...)``)
GRADIENTS = ("backprop", *ADJOINT_METHODS)
#: registered solvers that supply the weights of the continuous adjoint (:meth:`Solver.adjoint_weights`)
CONTINUOUS_SOLVERS = tuple(
    n for n in available() if not get(n).adaptive and get(n).adjoint_weights(None) is not None
)


# -- pytrees of tensors (solver histories are nested tuples of tensors) -----------------------------------
def _flatten(tree) -> list[torch.Tensor]:
    if tree is None:
        return []
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        out = []
        for v in tree:
            out.extend(_flatten(v))
        return out
    raise TypeError(f"solver history holds a {type(tree).__name__}; the adjoint supports tensors and tuples")


def _unflatten(tree, leaves):
    it = iter(leaves)

    def rec(t):
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            return next(it)
        return type(t)(rec(v) for v in t)

    return rec(tree)


def _detach(tree):
    return _unflatten(tree, [v.detach() for v in _flatten(tree)])


# -- argument handling ---------------------------------------------------------------------------------
def _params(denoiser, params):
    if params is None:
        net = denoiser.net
        if isinstance(net, torch.nn.Module):
            return [p for p in net.parameters() if p.requires_grad]
        return []
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a tensor, got {type(p).__name__}")
    return params


def _split_cond(cond):
    if cond is None:
        return [], [], {}
    if not isinstance(cond, dict):
        raise TypeError(
            f"cond must be a dict of keyword arguments for the network, got {type(cond).__name__}"
        )
    keys = [k for k, v in cond.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return keys, [cond[k] for k in keys], {k: v for k, v in cond.items() if k not in keys}


def check_solver(s: Solver, method: str) -> Solver:
    """Raise a ``ValueError`` unless the adjoint ``method`` can differentiate solver ``s``."""
    if s.stochastic or s.adaptive:
        kind = "stochastic" if s.stochastic else "adaptive"
        raise ValueError(
            f"solver {s.name!r} is {kind}: the adjoint supports fixed-step deterministic solvers "
            "(use gradient='backprop' for the others)"
        )
    if method == "continuous" and s.adjoint_weights(None) is None:
        raise ValueError(
            f"solver={s.name!r} is not supported by the continuous adjoint; supported: "
            f"{', '.join(CONTINUOUS_SOLVERS)} (method='discrete' supports every fixed-step deterministic solver)"
        )
    return s


class _Store:
    """Pooled storage for the states kept by the discrete adjoint: chunks of ``chunk`` tensors shaped like
    the state, so that hundreds of small long-lived tensors do not fragment the heap between the
    step temporaries (with glibc that made the resident memory grow by megabytes per step)."""

    def __init__(self, like: torch.Tensor, chunk: int = 64):
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.chunk = chunk
        self.buffers: list[torch.Tensor] = []
        self.used = chunk

    def put(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.shape != self.shape or t.dtype != self.dtype or t.device != self.device:
            return t
        if self.used == self.chunk:
            self.buffers.append(torch.empty((self.chunk, *self.shape), dtype=self.dtype, device=self.device))
            self.used = 0
        out = self.buffers[-1][self.used]
        out.copy_(t)
        self.used += 1
        return out


# -- the autograd function -----------------------------------------------------------------------------
class _AdjointSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_T, setup, *tensors):
        sampler, n_params, cond_keys, cond_static, method = setup
        cond = {**cond_static, **dict(zip(cond_keys, tensors[n_params:]))}
        s, plan = sampler.solver, sampler.plan
        states = []
        store = _Store(x_T)

        def keep(st, x, hist, x_next, hist_next, d):
            if method == "discrete":
                h_in = _flatten(hist)
                states.append((store.put(x), hist))
                # keep new history tensors in the pooled storage
                return _unflatten(
                    hist_next, [v if any(v is u for u in h_in) else store.put(v) for v in _flatten(hist_next)]
                )
            if st.zero:
                states.append((x, None))  # the state before the final denoising step
            return _detach(hist_next)

        x, _ = run(s, plan, x_T, sampler._evaluator(x_T, cond), None, keep)
        ctx.setup = setup
        ctx.states = states
        ctx.x_final = x
        ctx.save_for_backward(*tensors)
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        sampler, n_params, cond_keys, cond_static, method = ctx.setup
        tensors = ctx.saved_tensors
        params = list(tensors[:n_params])
        cond_vals = list(tensors[n_params:])
        need = ctx.needs_input_grad
        want_p = [bool(need[2 + i]) for i in range(n_params)]
        want_c = [bool(need[2 + n_params + i]) for i in range(len(cond_vals))]
        backward = _discrete_backward if method == "discrete" else _continuous_backward
        gx, gp, gc = backward(ctx, sampler, params, cond_keys, cond_vals, cond_static, want_p, want_c, grad_out)
        return (gx, None, *gp, *gc)


def _grad_targets(params, cond_vals, want_p, want_c):
    with torch.enable_grad():
        cond_in = [v.detach().requires_grad_(True) if w else v for v, w in zip(cond_vals, want_c)]
    p_in = [p for p, w in zip(params, want_p) if w]
    c_in = [c for c, w in zip(cond_in, want_c) if w]
    return cond_in, p_in, c_in


def _scatter(grads, want, like):
    out, it = [], iter(grads)
    for w, ref in zip(want, like):
        if w:
            v = next(it)
            out.append(torch.zeros_like(ref) if v is None else v)
        else:
            out.append(None)
    return out


def _accumulate(acc, new, scale: float = 1.0):
    """``acc += scale * new`` in place (no new allocation per step once started)."""
    out = []
    for a, n in zip(acc, new):
        if n is None:
            out.append(a)
        elif a is None:
            out.append(n * scale if scale != 1.0 else n.clone())
        else:
            out.append(a.add_(n, alpha=scale))
    return out


def _discrete_backward(ctx, sampler, params, cond_keys, cond_vals, cond_static, want_p, want_c, grad_out):
    s, plan, states = sampler.solver, sampler.plan, ctx.states
    cond_in, p_in, c_in = _grad_targets(params, cond_vals, want_p, want_c)
    cond = {**cond_static, **dict(zip(cond_keys, cond_in))}
    ev = sampler._evaluator(grad_out, cond)
    g_x = grad_out
    g_hist: list | None = None  # cotangents of the history leaves output by the current step
    acc_p = [None] * len(p_in)
    acc_c = [None] * len(c_in)
    for k in range(len(plan) - 1, -1, -1):
        st = plan[k]
        x_k, hist_k = states[k]
        with torch.enable_grad():
            x_in = x_k.detach().requires_grad_(True)
            h_leaves = [v.detach().requires_grad_(True) for v in _flatten(hist_k)]
            h_in = _unflatten(hist_k, h_leaves)
            out, h_out, _ = drive(s.program(x_in, h_in, st), ev)
            outs, cots = [out], [g_x]
            if g_hist is not None:
                for o, c in zip(_flatten(h_out), g_hist):
                    if c is not None and o.requires_grad:
                        outs.append(o)
                        cots.append(c)
            inputs = [x_in, *h_leaves, *p_in, *c_in]
            grads = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
        g_x = grads[0] if grads[0] is not None else torch.zeros_like(x_k)
        nh = len(h_leaves)
        g_hist = list(grads[1 : 1 + nh])
        acc_p = _accumulate(acc_p, grads[1 + nh : 1 + nh + len(p_in)])
        acc_c = _accumulate(acc_c, grads[1 + nh + len(p_in) :])
    return g_x, _scatter(acc_p, want_p, params), _scatter(acc_c, want_c, cond_vals)


def _continuous_backward(ctx, sampler, params, cond_keys, cond_vals, cond_static, want_p, want_c, grad_out):
    s, table, plan = sampler.solver, sampler.table, sampler.plan
    cond_in, p_in, c_in = _grad_targets(params, cond_vals, want_p, want_c)
    cond = {**cond_static, **dict(zip(cond_keys, cond_in))}
    ode = PFODE(sampler.denoiser, "lam", cond)
    acc_p = [None] * len(p_in)
    acc_c = [None] * len(c_in)
    n = table.n_steps
    x = ctx.x_final
    a_x = grad_out
    if plan[-1].zero:  # final denoising step x = x0_hat(x_N): pull the cotangent through it
        x_n = ctx.states[-1][0]
        ev = Evaluator(sampler.denoiser, table, x_n, cond)
        with torch.enable_grad():
            xi = x_n.detach().requires_grad_(True)
            out = ev(xi, n - 1) * table[n].alpha
            grads = torch.autograd.grad(out, [xi, *p_in, *c_in], a_x, allow_unused=True)
        a_x = grads[0] if grads[0] is not None else torch.zeros_like(x_n)
        acc_p = _accumulate(acc_p, grads[1 : 1 + len(p_in)])
        acc_c = _accumulate(acc_c, grads[1 + len(p_in) :])
        x = x_n
        n -= 1
    pts = table.points
    b = x.shape[0]
    y = x / pts[n].alpha
    a = a_x * pts[n].alpha  # dL/dy
    prev: list = []  # (D_y, D_a) of earlier backward steps, newest first
    h_prev = None
    for k in range(n, -1, -1):
        p_cur = pts[k]
        t = torch.full((b,), p_cur.t, dtype=torch.float64, device=y.device)
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            x0 = ode.denoise(yy, t)
            grads = list(torch.autograd.grad(x0, [yy, *p_in, *c_in], a, allow_unused=True))
        # trapezoid rule for int w dlam: the weight of grid point k is half of its two neighbouring intervals
        wk = 0.5 * (pts[k + 1].lam - p_cur.lam if k < n else 0.0)
        wk += 0.5 * (p_cur.lam - pts[k - 1].lam if k > 0 else 0.0)
        acc_p = _accumulate(acc_p, grads[1 : 1 + len(p_in)], wk)
        acc_c = _accumulate(acc_c, grads[1 + len(p_in) :], wk)
        del grads[1:]
        if k == 0:
            break
        h = pts[k - 1].lam - p_cur.lam  # < 0: backwards in lam
        d_a = grads[0] if grads[0] is not None else torch.zeros_like(a)
        prev = [(x0.detach(), d_a), *prev]
        w = s.adjoint_weights(None if h_prev is None else h_prev / h)
        prev = prev[: len(w)]
        comb_y = sum(c * v[0] for c, v in zip(w, prev))
        comb_a = sum(c * v[1] for c, v in zip(w, prev))
        # the ODE integrated in reverse (the forward solver's exponential integrator, run backwards)
        y = math.exp(-h) * y + (-math.expm1(-h)) * comb_y
        a = math.exp(h) * a + (-math.expm1(h)) * comb_a
        h_prev = h
    g_x = a / pts[0].alpha
    return g_x, _scatter(acc_p, want_p, params), _scatter(acc_c, want_c, cond_vals)


def attach(sampler, x_T: torch.Tensor, cond: dict | None, method: str, params=None) -> torch.Tensor:
    """Run a prepared :class:`pfode.Sampler` with the adjoint gradient ``method`` (``"discrete"`` or
    ``"continuous"``): the samples, attached to the autograd graph through :class:`_AdjointSample`."""
    method = check_choice("gradient", method, ADJOINT_METHODS)
    check_solver(sampler.solver, method)
    if method == "continuous":
        bad = [p.t for p in sampler.table.points[: sampler.table.n_steps] if not (p.alpha > 0 and p.sigma > 0)]
        last = sampler.table[sampler.table.n_steps]
        if not sampler.zero_end and not (last.alpha > 0 and last.sigma > 0):
            bad.append(last.t)
        if bad:
            raise ValueError(
                f"the continuous adjoint needs alpha > 0 and sigma > 0 on the grid; not at t={bad[0]!r}"
            )
    p = _params(sampler.denoiser, params)
    keys, vals, static = _split_cond(cond)
    setup = (sampler, len(p), keys, static, method)
    return _AdjointSample.apply(x_T, setup, *p, *vals)


def adjoint_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    grid=None,
    solver: str | Solver = "ddim",
    *,
    nfe: int | None = None,
    spacing: str = "logsnr",
    denoise: bool = True,
    method: str = "discrete",
    params=None,
    cond: dict | None = None,
) -> torch.Tensor:
    """:func:`pfode.sample` with ``gradient=method`` (``"discrete"`` or ``"continuous"``, see the module docs).

    ``loss(adjoint_sample(...)).backward()`` fills the gradients of ``x_T`` (if it requires grad), of
    ``params`` (default: the parameters of ``denoiser.net`` when it is an ``nn.Module``) and of the
    floating-point tensors in ``cond`` that require grad. Returns the samples, attached to the graph.
    """
    from .sample import sample

    method = check_choice("method", method, ADJOINT_METHODS)
    return sample(
        denoiser, x_T, grid, solver, nfe=nfe, spacing=spacing, denoise=denoise, gradient=method, params=params,
        cond=cond,
    )
