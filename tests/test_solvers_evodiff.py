"""EVODiff: the variance-optimal weight, the update it picks, its order against a closed-form flow.

Its measured convergence order on three paths x prediction types is certified with every registered solver
in ``tests/test_solvers.py`` (``-k evodiff``).
"""

from __future__ import annotations

import math

import pytest
import torch

import pfode
from pfode import analytic, paths
from pfode.solvers.base import Evaluator, Table, run
from pfode.solvers.evodiff import EVODiff, variance_optimal_eta

D = 4


def _gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), a @ a.T / D + 0.05 * torch.eye(D))


def test_eta_minimizes_the_variance_of_the_combined_difference():
    g = torch.Generator().manual_seed(1)
    g_b = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    g_f = g_b + 0.7 * torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    g_f[1] = g_b[1]  # equal: any eta, 0 returned
    g_f[2] = 3.0 * g_b[2]  # unclipped optimum 3/2: clipped to 1
    g_f[3] = -g_b[3]  # optimum 1/2 exactly
    g_f[4] = 0.5 * g_b[4]  # unclipped optimum -1: clipped to 0
    eta = variance_optimal_eta(g_b, g_f)
    assert eta.shape == (6, 1, 1) and float(eta[1]) == 0.0 and float(eta[2]) == 1.0 and float(eta[4]) == 0.0
    assert math.isclose(float(eta[3]), 0.5, rel_tol=1e-12)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)

    def var(e):
        return ((e * g_b + (1 - e) * g_f) ** 2).flatten(-2).sum(-1)

    brute = var(grid[:, None, None, None]).min(0).values  # the least variance over a fine grid of eta in [0, 1]
    assert bool((var(eta) <= brute * (1 + 1e-9)).all()), (var(eta), brute)
    assert bool((var(eta) >= brute * (1 - 1e-4)).all())


def test_each_corrected_state_is_the_least_variance_update():
    """At the first step with both differences, the corrected state is closer to the first-order part than the
    state any fixed ``eta`` gives, per sample."""
    path = paths.EDM()
    target = analytic.GaussianMixture.random(D, 3, std_range=(0.3, 1.0), generator=torch.Generator().manual_seed(2))
    den = target.denoiser(path)
    x_T = 80.0 * torch.randn(8, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def corrected(solver):
        table = Table(path, pfode.grid(path, 10), True)
        plan = solver.plan(table)
        seen = {}

        def on_step(st, x, hist, x_next, hist_next, d):
            seen[st.i] = (hist_next, st)

        run(solver, plan[:3], x_T, Evaluator(den, table, x_T, None), on_step=on_step)
        (x_prev, d_prev, _), _ = seen[1]
        (x2, _, _), st = seen[2]
        pcx, pa, _, _ = st.corr
        return x2 - (pcx * x_prev + pa * d_prev)  # the update term beyond the first-order part

    best = corrected(EVODiff()).norm(dim=1)
    for eta in torch.linspace(0, 1, 11).tolist():
        assert bool((best <= corrected(EVODiff(eta=eta)).norm(dim=1) * (1 + 1e-12)).all()), eta


def test_second_order_against_the_closed_form_flow():
    path = paths.EDM()
    target = _gaussian()
    x_T = 80.0 * torch.randn(8, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = target.flow_map(x_T, path.t_max, 0.5, path)
    errs = []
    for n in (40, 80):
        x = pfode.sample(target.denoiser(path), x_T, pfode.grid(path, n, t_end=0.5), "evodiff", denoise=False)
        errs.append(float((x - exact).pow(2).mean().sqrt()))
    assert abs(math.log2(errs[0] / errs[1]) - 2.0) < 0.3, errs


def test_registered_and_described():
    s = pfode.solvers.get("evodiff")
    assert isinstance(s, EVODiff) and s.order == 2 and s.evals_per_step == 1 and "EVODiff" in s.paper
    assert s.multistep and not s.stochastic


@pytest.mark.parametrize("eta", [-0.1, 1.5, math.nan, "half"])
def test_bad_eta_is_refused(eta):
    with pytest.raises((ValueError, TypeError), match="eta"):
        EVODiff(eta=eta)


def test_eta_is_the_released_codes_projection_shifted_by_one_half():
    """The authors' code computes ``1/2 <g_f + g_b, g_f - g_b> / ||g_f - g_b||^2`` (before its sigmoid smoothing);
    algebraically that is the unclipped variance-optimal weight minus 1/2 (see the module docs)."""
    g = torch.Generator().manual_seed(5)
    g_b = torch.randn(64, 2, 3, generator=g, dtype=torch.float64)
    g_f = g_b + 0.5 * torch.randn(64, 2, 3, generator=g, dtype=torch.float64)
    s, d = g_f + g_b, g_f - g_b
    released = 0.5 * (s * d).flatten(1).sum(1) / (d * d).flatten(1).sum(1)
    eta = variance_optimal_eta(g_b, g_f).flatten()
    inside = (released > -0.5) & (released < 0.5)  # where the [0, 1] clip is inactive
    assert int(inside.sum()) > 10
    assert torch.allclose(eta[inside] - 0.5, released[inside], rtol=0, atol=1e-12)
    assert bool((eta[released <= -0.5] == 0).all()) and bool((eta[released >= 0.5] == 1).all())
