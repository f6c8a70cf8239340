"""EVODiff: the variance-optimized multistep data-prediction solver (Li, Chen & Zeng, NeurIPS 2025).

EVODiff reads each reverse transition ``x_i -> x_{i+1}`` as a Gaussian channel: the smaller the
conditional variance of ``x_{i+1}`` given ``x_i``, the smaller its conditional entropy and the less of the
denoiser's error it passes on. In data prediction (the parameterization the paper shows to carry less
entropy than noise prediction) a second-order step in ``lam`` is

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) [D_i + (h/2) g],     h = lam_{i+1} - lam_i,

where ``D_i = x0_hat(x_i)`` and ``g`` estimates ``dx0_hat/dlam``. Two estimates come for free in a
one-evaluation multistep scheme: the backward difference ``g_b = (D_i - D_{i-1}) / h_{i-1}`` (DPM-Solver++(2M))
and, once the network has been evaluated at the predicted ``x_{i+1}``, the forward difference
``g_f = (D_{i+1} - D_i) / h``. EVODiff takes the combination ``g(eta) = eta g_b + (1 - eta) g_f`` whose
contribution to the transition has the least variance, in closed form per sample:

    eta* = <g_f, g_f - g_b> / ||g_f - g_b||^2,    clipped to [0, 1]

(``argmin_eta ||g(eta)||^2``; inner products over every non-batch dimension). So each step predicts with
``g_b``, evaluates at the prediction (that evaluation is the next step's ``D``: one evaluation per step),
and replaces the prediction by the variance-optimal update. ``eta`` is a convex weight, so the derivative
estimate stays first-order accurate whatever the data: the method has global order 2 on every path and
prediction type (certified in ``tests/test_solvers.py``).

Checked against the authors' released sampler (ShiguiLi/EVODiff, ``code_demo/edm_cifar10/samplers/evodiff.py``;
the paper's method section was not reachable from this project's reference store, so no equation numbers are
cited here):

* first-order part and probe: identical. Their ``x_euler = (sigma_{i+1}/sigma_i) x_i + sigma_{i+1} h_kappa D_i``
  with ``h_kappa = e^{lam_{i+1}} - e^{lam_i}`` is ``a D_i`` above (``sigma_{i+1} h_kappa = alpha_{i+1}(1 - e^{-h})``);
  their probe ``x_euler + (a / (2 r_i)) (D_i - D_{i-1})``, ``r_i = h_{i-1} / h``, is the ``g_b`` prediction above;
  the network is evaluated at the probe and that value is the next step's ``D`` (one evaluation per step).
* interpolation parameter: their unclipped ``eta* = 1/2 <B_f + B_b, B_f - B_b> / ||B_f - B_b||^2`` (``B_b, B_f``
  the backward/forward differences; on a uniform ``lam`` grid ``B = g`` up to a common factor) equals
  ``argmin ||eta g_b + (1 - eta) g_f||^2 - 1/2``: the same variance-optimal weight, shifted by 1/2
  (``tests/test_solvers_evodiff.py`` checks the identity). The code then does not use it directly: it takes
  ``eta = sigmoid(|eta*|) / 2`` and combines ``(1 - eta) B_f - eta B_b`` (weights summing to ``1 - 2 eta``, not 1),
  divided by a second sigmoid-smoothed factor ``zeta``; inner products are per (sample, channel), and projection
  coefficients are clamped to ``[-2, 2]``.
* balance parameter: the code differences ``D_i - gamma D_{i-1}`` with ``gamma`` a time-weighted blend of
  ``sqrt(sigma ratios)`` and the projection coefficient ``<D_i, D_{i-1}> / ||D_{i-1}||^2``; its last first-order
  step uses a further hand-set blend. Such a ``gamma`` tends to 1 only as O(h), so ``(1 - gamma) D_{i-1}`` is as
  large as the difference itself: the derivative estimate is no longer consistent, nor is a weight sum
  ``(1 - 2 eta) / zeta != 1``, and either costs the step its second order (``tests/test_solvers.py`` certifies
  order 2 for this implementation).

So this implementation keeps the paper's idea (per-sample closed-form variance-optimal interpolation of the two
free derivative estimates, data prediction, one evaluation per step) in the consistent convex form above, with
per-sample (not per-channel) inner products so that any trailing shape works; it does not reproduce the
sigmoid-smoothed ``eta``/``zeta``/``gamma`` heuristics of the released code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_finite_float
from .base import Solver, Step, Table, register

__all__ = ["EVODiff", "variance_optimal_eta"]


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` per sample over every non-batch dimension, in at least float32, shaped ``[B, 1, ...]``."""
    wide = torch.promote_types(a.dtype, torch.float32)
    out = (a.to(wide) * b.to(wide)).reshape(a.shape[0], -1).sum(1)  # (a [B] state: one value per sample)
    return out.reshape((-1,) + (1,) * (a.dim() - 1))


def variance_optimal_eta(g_b: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    """The per-sample ``eta`` in ``[0, 1]`` minimizing ``||eta g_b + (1 - eta) g_f||^2`` (shape ``[B, 1, ...]``).

    Where ``g_b == g_f`` every ``eta`` gives the same update and 0 is returned.
    """
    diff = g_f - g_b
    num = _per_sample_dot(g_f, diff)
    den = _per_sample_dot(diff, diff)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).clamp(0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class EVODiffStep(Step):
    """One EVODiff step: the prediction ``cx x + a D + w g_b`` (``w = 0`` for a first-order step), and the
    coefficients of the *previous* step that the correction of this step's start state needs:
    ``corr = (cx, a, w, h)`` of that step (``w = a h / 2``), or ``()`` on the first step."""

    cx: float
    a: float
    w: float = 0.0
    corr: tuple = ()


class EVODiff(Solver):
    """EVODiff (Li, Chen & Zeng, 2025): multistep data prediction whose update has the least conditional variance.

    Order 2, one evaluation per step. Each step predicts with DPM-Solver++(2M)'s backward difference,
    and, after the network has been evaluated at the prediction, replaces it by the update whose
    derivative estimate ``eta g_b + (1 - eta) g_f`` (backward and forward differences of ``x0_hat`` in
    ``lam``) has the least variance (see the module docs). The evaluation at the prediction serves as the
    next step's ``x0_hat``, so no call is spent on the correction. The first step's correction has only
    ``g_f``; the last grid step's prediction is not corrected (no evaluation follows it besides the final
    denoising step, which evaluates at that prediction).

    Args:
        eta: ``None`` (default) for the per-sample variance-optimal weight; a number in ``[0, 1]`` fixes it
            (``1``: the backward difference, i.e. DPM-Solver++(2M) after the first step; ``0``: the forward
            difference, a trapezoidal corrector).
        lower_order_final: as DPM-Solver++, on grids of fewer than 15 steps the last step is first order.
    """

    name = "evodiff"
    order = 2
    evals_per_step = 1
    paper = "Li, Chen & Zeng, EVODiff: Entropy-aware Variance Optimized Diffusion Inference, NeurIPS 2025"

    def __init__(self, eta: float | None = None, lower_order_final: bool = True):
        if eta is not None:
            eta = check_finite_float("eta", eta, 0.0)
            if eta > 1.0:
                raise ValueError(f"eta={eta!r} must be in [0, 1] (or None for the variance-optimal weight)")
        self.eta = eta
        self.lower_order_final = bool(lower_order_final)

    def _order_at(self, i: int, n: int) -> int:
        if self.lower_order_final and n < 15 and i == n - 1:
            return 1
        return min(2, i + 1)

    def _coefficients(self, table: Table, i: int, n: int) -> tuple[float, float, float, float]:
        """``(cx, a, w, h)`` of the step from ``i`` to ``i + 1``: ``x_next = cx x + a D + w g``."""
        p, q = table[i], table[i + 1]
        h = q.lam - p.lam
        a = -q.alpha * math.expm1(-h)  # alpha_next (1 - e^{-h})
        return q.sigma / p.sigma, a, 0.5 * a * h, h

    def plan_step(self, table, i, n):
        cx, a, w, _ = self._coefficients(table, i, n)
        k = self._order_at(i, n)
        corr = self._coefficients(table, i - 1, n) if i > 0 else ()
        return EVODiffStep(i=i, order=k, history=1 if i > 0 else 0, cx=cx, a=a, w=w if k == 2 else 0.0, corr=corr)

    def update(self, x, hist, st, d, noise=None):
        g_b = None
        if st.corr:  # correct this step's start state with the evaluation made there (no extra call)
            x_prev, d_prev, g_prev = hist
            pcx, pa, pw, ph = st.corr
            g_b = (d - d_prev).mul_(1.0 / ph)  # the previous step's forward difference is this step's backward one
            if g_prev is None:
                g = g_b
            else:
                eta = variance_optimal_eta(g_prev, g_b).to(x.dtype) if self.eta is None else self.eta
                g = g_b + (g_prev - g_b) * eta
            x = torch.add(x_prev * pcx, d_prev, alpha=pa).add_(g, alpha=pw)
        out = torch.add(x * st.cx, d, alpha=st.a)
        if st.w:
            out.add_(g_b, alpha=st.w)
        return out, (x, d, g_b)


register("evodiff", EVODiff)
