"""Heavy-ball (HB) and generalized heavy-ball (GHVB) momentum (pfode.solvers.momentum).

Against the paper's update rules written out independently here, against the base solvers at ``beta = 1``, and
against the closed-form Gaussian flow for the convergence order. The registered names are also certified on three
paths and prediction types by ``tests/test_solvers.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pfode
from pfode import analytic, paths
from pfode.solvers import DEIS, GHVB, IPNDM, DPMSolverPPMultistep, UniPC, heavy_ball
from pfode.solvers.base import Table

D = 4
MIXTURE = analytic.GaussianMixture.random(D, 3, std_range=(0.3, 1.0), generator=torch.Generator().manual_seed(0))


def _x_T(scale: float, n: int = 6) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale


@pytest.mark.parametrize(
    "base",
    [
        DPMSolverPPMultistep(order=2),
        DPMSolverPPMultistep(order=3),
        UniPC(),
        UniPC(order=1, variant="bh1"),
        UniPC(corrector=False),
        IPNDM(),
        DEIS(order=3, variable="lam"),
    ],
    ids=lambda b: f"{b.name}-{getattr(b, 'variant', '')}{getattr(b, 'corrector', '')}",
)
def test_heavy_ball_without_momentum_is_the_base_solver(base):
    path = paths.VPDiscrete.ddpm()
    den = MIXTURE.denoiser(path)
    x_T = _x_T(1.0)
    for steps in (6, 17):
        g = pfode.grid(path, steps)
        ref = pfode.sample(den, x_T, g, base)
        assert torch.allclose(pfode.sample(den, x_T, g, heavy_ball(base, 1.0)), ref, rtol=0, atol=1e-12)
        # and momentum does change the result (the reduction above is not vacuous)
        assert (pfode.sample(den, x_T, g, heavy_ball(base, 0.8)) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ghvb_without_momentum_is_ipndm(k):
    path = paths.EDM()
    den = MIXTURE.denoiser(path)
    x_T = _x_T(80.0)
    g = pfode.grid(path, 9)
    ref = pfode.sample(den, x_T, g, IPNDM(order=k))
    assert torch.allclose(pfode.sample(den, x_T, g, GHVB(order=k, beta=1.0)), ref, rtol=0, atol=1e-12)
    assert (pfode.sample(den, x_T, g, GHVB(order=k, beta=0.7)) - ref).abs().max() > 1e-4


def test_dpm_solver_pp_with_hb_follows_the_paper_update():
    """DPM-Solver++(2M) with HB: ``v <- (1 - beta) v + beta D_i``, ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i +
    alpha_{i+1} (1 - e^{-h}) v`` with ``D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``, written out here."""
    path, beta = paths.VP(), 0.7
    den = MIXTURE.denoiser(path)
    times = pfode.grid(path, 16, t_end=0.3)  # 16 steps: no lower-order final steps in the base
    x_T = _x_T(1.0)
    a, s = path.alpha(times).tolist(), path.sigma(times).tolist()
    lam = [math.log(p / q) for p, q in zip(a, s)]
    x, v, prev = x_T.clone(), None, None
    for i in range(len(times) - 1):
        x0 = MIXTURE.x0_eps(x, float(times[i]), path)[0]
        h = lam[i + 1] - lam[i]
        if prev is None:
            d, v = x0, x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
            v = (1 - beta) * v + beta * d
        x = s[i + 1] / s[i] * x - a[i + 1] * math.expm1(-h) * v
        prev = x0
    out = pfode.sample(den, x_T, times, heavy_ball("dpm++2m", beta), denoise=False)
    assert torch.allclose(out, x, rtol=0, atol=1e-12)


def test_plms_with_hb_follows_the_paper_update_on_a_uniform_grid():
    """PLMS (iPNDM) with HB on a grid uniform in ``s``: constant Adams-Bashforth weights with warm-up,
    ``v <- (1 - beta) v + beta AB(eps)``, ``y <- y + ds v`` (EDM: ``y = x``, ``s = t``)."""
    path, beta = paths.EDM(), 0.6
    ab = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    times = torch.linspace(20.0, 0.5, 14, dtype=torch.float64)
    x_T = _x_T(20.0)
    x, v, eps = x_T.clone(), None, []
    for i in range(len(times) - 1):
        eps.insert(0, MIXTURE.x0_eps(x, float(times[i]), path)[1])
        slope = sum(c * e for c, e in zip(ab[min(4, i + 1)], eps))
        v = slope if v is None else (1 - beta) * v + beta * slope
        x = x + float(times[i + 1] - times[i]) * v
    out = pfode.sample(MIXTURE.denoiser(path), x_T, times, heavy_ball("ipndm", beta), denoise=False)
    assert torch.allclose(out, x, rtol=0, atol=1e-10)


def test_ghvb_weights_are_the_papers_on_a_uniform_grid():
    """Once the start-up transient ``(1 - beta)^i`` has died out, the per-grid GHVB weights on a grid uniform in ``s``
    are the paper's constants (order 2, 3, 4; the velocities newest first)."""
    table = Table(paths.EDM(), torch.linspace(80.0, 1.0, 45, dtype=torch.float64), False)
    for b in (0.8, 0.6):
        paper = {
            2: np.array([2 + b, -(2 - b)]) / (2 * b),
            3: np.array([18 + 5 * b, -(24 - 8 * b), 6 - b]) / (12 * b),
            4: np.array([46 + 9 * b, -(78 - 19 * b), 42 - 5 * b, -(10 - b)]) / (24 * b),
        }
        for k, want in paper.items():
            got = GHVB(order=k, beta=b).gammas(table, 40, k)
            assert np.allclose(got, want, rtol=0, atol=1e-8), (b, k, got, want)
    assert GHVB.from_number(3.8).order == 4 and GHVB.from_number(3.8).beta == pytest.approx(0.8)
    assert GHVB.from_number(2.0).beta == 1.0 and GHVB.from_number(0.5).order == 1


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), a @ a.T / D + 0.1 * torch.eye(D))


@pytest.mark.parametrize(
    "solver,order",
    [
        ("dpm++2m-hb", 1),
        ("unipc-hb", 1),
        ("ipndm-hb", 1),
        (GHVB(order=2, beta=0.5), 2),
        (GHVB(order=3, beta=0.8), 3),
        ("ghvb", 4),
        (heavy_ball("dpm++2m", 1.0), 2),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_order_on_the_closed_form_gaussian_flow(gaussian, solver, order):
    """Measured order against the exact flow map of a Gaussian, VP path in eps prediction, to ``sigma/alpha = 0.5``."""
    path = paths.VP()
    den = pfode.Denoiser(lambda x, t: gaussian.x0_eps(x, t, path)[1], path, prediction="eps")
    x_T = _x_T(1.0, 8)
    t_end = float(path.t_of_s(torch.tensor(0.5, dtype=torch.float64)))
    ref = gaussian.flow_map(x_T, path.t_max, t_end, path)
    errs = []
    for n in (24, 48, 96):
        x = pfode.sample(den, x_T, pfode.grid(path, n, t_end=t_end), solver, denoise=False)
        errs.append(float((x - ref).pow(2).mean().sqrt()))
    assert pfode.solvers.get(solver).order == order
    assert errs[0] > errs[1] > errs[2]
    assert abs(math.log2(errs[1] / errs[2]) - order) < 0.35, (errs, math.log2(errs[1] / errs[2]))


def test_bad_parameters_name_the_argument_and_the_range():
    for bad in (0.0, -0.5, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"beta=.*\(0, 1\]"):
            heavy_ball("dpm++2m", bad)
        with pytest.raises(ValueError, match=r"beta=.*\(0, 1\]"):
            GHVB(beta=bad)
        with pytest.raises(ValueError, match=r"beta=.*\(0, 1\]"):
            pfode.solvers.get("unipc-hb", beta=bad)
    with pytest.raises(TypeError, match="beta"):
        heavy_ball("ipndm", "0.5")
    with pytest.raises(ValueError, match=r"order=5.*1 to 4"):
        GHVB(order=5)
    with pytest.raises(ValueError, match=r"order=0 must be >= 1"):
        pfode.solvers.get("ghvb", order=0)
    with pytest.raises(ValueError, match=r"variable='t'.*s, lam"):
        GHVB(variable="t")
    with pytest.raises(ValueError, match=r"number=4.5 must be in \(0, 4\]"):
        GHVB.from_number(4.5)
    with pytest.raises(ValueError, match=r"base='heun'.*dpm\+\+2m, dpm\+\+3m, unipc, ipndm and deis"):
        heavy_ball("heun")
