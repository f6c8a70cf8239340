"""DPM-Solver-v3: estimated statistics against their closed forms, exactness on Gaussian data, accuracy on a
mixture, measured convergence order, the DPM-Solver++ limit, and the description of the statistics.

Closed forms (scaled coordinates ``y = x / alpha``, ``e = exp(-lam) eps_hat = y - x0_hat``; see
:mod:`pfode.solvers.v3`). For Gaussian data ``N(mu, S)``, ``S = Q diag(v) Q^T``, the marginal of ``y`` at
``lam`` is ``N(mu, S + exp(-2 lam) I)`` and ``e = A (y - mu)`` with ``A = Q diag(a) Q^T``,
``a = 1 / (1 + v exp(2 lam))`` (so ``dA/dlam = Q diag(-2 a (1 - a)) Q^T``). Hence ``l = diag(A)``,
``f = e - l y = F u + c`` with ``u = y - mu``, ``F = A - diag(A)``, ``c = -diag(A) mu``, and along the ODE
(``du/dlam = -A u``) ``f' = F' u + c'`` with ``F' = A' - diag(A') - (A - diag(A)) A``, ``c' = -diag(A') mu``.
For diagonal ``S``, ``F = 0``: ``f`` is constant over the samples, so ``s = 0`` and ``b = c' = 2 a (1 - a) mu``.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import pfode
from pfode import analytic, paths
from pfode.io import encode_array
from pfode.solvers import EMS, DPMSolverV3, estimate_stats

D = 8


def _diag_gaussian(seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    v = torch.exp(torch.rand(D, generator=g, dtype=torch.float64) * 4 - 3)  # variances in [0.05, 2.7]
    return analytic.Gaussian(mu, torch.diag(v)), mu, v


def _x_T(path, n, d=D, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * float(
        path.sigma(path.t_max)
    )


def _closed_form_ems(mu, v, lam) -> EMS:
    a = 1.0 / (1.0 + v * torch.exp(2 * lam[:, None]))
    return EMS(lam, a, torch.zeros_like(a), 2 * a * (1 - a) * mu)


def _flow(target: analytic.Gaussian, x_T, path, T, t):
    """The Gaussian PF-ODE flow map in the covariance eigenbasis ``S = Q diag(v) Q^T``:
    ``x_t = alpha_t mu + Q diag(sqrt((alpha_t^2 v + sigma_t^2) / (alpha_T^2 v + sigma_T^2))) Q^T (x_T - alpha_T mu)``.
    """
    aT, sT, at, st = (float(f(torch.tensor(u, dtype=torch.float64))) for f, u in
                      ((path.alpha, T), (path.sigma, T), (path.alpha, t), (path.sigma, t)))
    q, v = target.evecs, target.evals
    z = (x_T - aT * target.mean) @ q
    ratio = torch.sqrt((at * at * v + st * st) / (aT * aT * v + sT * sT))
    return at * target.mean + (ratio * z) @ q.T


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


# ----------------------------------------------------------------------------------------------
# The statistics against their closed forms


@pytest.mark.parametrize("make_path", [paths.VP, paths.VPDiscrete.ddpm], ids=["VP", "VPDiscrete"])
def test_diagonal_gaussian_statistics_equal_their_closed_form(make_path):
    path = make_path()
    target, mu, v = _diag_gaussian()
    den = target.denoiser(path)
    ems = estimate_stats(den, x_T=_x_T(path, 64), points=40, generator=torch.Generator().manual_seed(2))
    assert ems.shape == (D,) and len(ems) == 40
    lo, hi = ems.lam_range
    assert lo == pytest.approx(float(path.lam(path.t_max))) and hi == pytest.approx(float(path.lam(path.t_min)))
    exact = _closed_form_ems(mu, v, ems.lam)
    # Rademacher probes are exact for a diagonal Jacobian; derivatives are finite differences in float64
    err = [(ems.l - exact.l).abs().max(), (ems.s - exact.s).abs().max(), (ems.b - exact.b).abs().max()]
    assert err[0] < 1e-12 and err[1] < 1e-6 and err[2] < 1e-6, err  # measured: 6e-16, 1e-7, 7e-8


def test_full_covariance_statistics_equal_their_closed_form():
    """Non-diagonal Jacobian: exact diagonal (``jacobian="exact"``); ``s, b`` are the least-squares fit over the
    samples, compared with the closed form on the exact flow of the same start states."""
    g = torch.Generator().manual_seed(3)
    d = 6
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    target = analytic.Gaussian(torch.randn(d, generator=g, dtype=torch.float64), m @ m.T / d + 0.1 * torch.eye(d))
    path = paths.VP()
    x_T = _x_T(path, 48, d)
    # the trajectories are integrated numerically: the fit's accuracy follows the trajectory solver's
    ems = estimate_stats(target.denoiser(path), x_T=x_T, points=30, jacobian="exact", ridge=0.0, substeps=8)
    q, vals, mu = target.evecs, target.evals, target.mean
    t_pts = path.t_of_lam(ems.lam)
    worst = [0.0, 0.0, 0.0]
    for k in range(len(ems)):
        lam, t = float(ems.lam[k]), float(t_pts[k]) if k else path.t_max
        a = 1.0 / (1.0 + vals * math.exp(2 * lam))
        A = q @ torch.diag(a) @ q.T
        dA = q @ torch.diag(-2 * a * (1 - a)) @ q.T
        F = A - torch.diag(torch.diag(A))
        dF = dA - torch.diag(torch.diag(dA)) - F @ A
        u = _flow(target, x_T, path, path.t_max, t) / float(path.alpha(torch.tensor(t))) - mu
        f = u @ F.T - torch.diag(A) * mu
        df = u @ dF.T - torch.diag(dA) * mu
        fc, dfc = f - f.mean(0), df - df.mean(0)
        s = (fc * dfc).mean(0) / (fc * fc).mean(0)
        b = df.mean(0) - s * f.mean(0)
        for j, (est, ref) in enumerate(((ems.l[k], torch.diag(A)), (ems.s[k], s), (ems.b[k], b))):
            worst[j] = max(worst[j], float(((est - ref).abs() / (ref.abs() + 1e-3)).max()))
    assert worst[0] < 1e-10 and worst[1] < 2e-4 and worst[2] < 2e-5, worst  # measured: 3e-13, 3e-5, 2.5e-6


def test_finite_difference_jacobian_agrees_with_autograd():
    """Hutchinson's estimate by central differences (models autograd cannot differentiate) equals the autograd one
    with the same probes, and so does the sampler built on it."""
    mix = analytic.GaussianMixture.random(D, 3, std_range=(0.3, 1.0), generator=torch.Generator().manual_seed(4))
    path = paths.EDM()
    den = mix.denoiser(path)
    kw = dict(x_T=_x_T(path, 32), points=12)
    a = estimate_stats(den, jacobian="autograd", generator=torch.Generator().manual_seed(5), **kw)
    b = estimate_stats(den, jacobian="fd", generator=torch.Generator().manual_seed(5), **kw)
    assert float((a.l - b.l).abs().max()) < 1e-8  # measured: 1e-11
    # s and b use finite differences of finite differences: looser (measured 2e-2 at the lowest noise level)
    assert float((a.s - b.s).abs().max()) < 0.1 and float((a.b - b.b).abs().max()) < 0.1
    x_T = _x_T(path, 16, seed=3)
    xa, xb = (pfode.sample(den, x_T, nfe=8, solver=DPMSolverV3(e)) for e in (a, b))
    assert _rms(xa, xb) < 1e-4 * float(xa.pow(2).mean().sqrt())


# ----------------------------------------------------------------------------------------------
# The solver


@pytest.mark.parametrize("make_path", [paths.VP, paths.VPDiscrete.ddpm], ids=["VP", "VPDiscrete"])
def test_exact_statistics_solve_the_gaussian_flow_in_a_few_steps(make_path):
    """With the statistics of Gaussian data ``g`` is constant, so every step is exact up to the statistics'
    interpolation between their grid points (4th order in their spacing)."""
    path = make_path()
    target, mu, v = _diag_gaussian()
    den = target.denoiser(path)
    x_T = _x_T(path, 16, seed=6)
    ref = _flow(target, x_T, path, path.t_max, path.t_min)
    lam = torch.linspace(float(path.lam(path.t_max)), float(path.lam(path.t_min)), 200, dtype=torch.float64)
    estimated = estimate_stats(den, x_T=_x_T(path, 32), points=120, generator=torch.Generator().manual_seed(7))
    for ems, tol in ((_closed_form_ems(mu, v, lam), 1e-6), (estimated, 1e-5)):
        for steps in (1, 2, 5):
            grid = pfode.grid(path, steps)
            pp = _rms(pfode.sample(den, x_T, grid, "dpm++2m", denoise=False), ref)
            for order in (1, 2, 3):
                err = _rms(pfode.sample(den, x_T, grid, DPMSolverV3(ems, order=order), denoise=False), ref)
                # measured (closed form, 200 points): <= 1.3e-7; estimated (120 points): <= 1e-6; dpm++2m: 0.09-0.6
                assert err < tol and err < 1e-4 * pp, (steps, order, err, pp)


def test_v3_beats_dpmpp2m_on_a_mixture_at_few_evaluations():
    """Estimated statistics (256 trajectories) on a 16-d mixture: more accurate than DPM-Solver++(2M) with the
    same evaluations, against a tight dopri5 reference."""
    path = paths.VP()
    mix = analytic.GaussianMixture.random(16, 4, std_range=(0.2, 1.0), generator=torch.Generator().manual_seed(0))
    den = mix.denoiser(path)
    ems = estimate_stats(den, 256, shape=(16,), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_T = _x_T(path, 256, 16, seed=2)
    dopri = pfode.solvers.get("dopri5", rtol=1e-9, atol=1e-9)
    ref = pfode.sample(den, x_T, pfode.grid(path, 1), dopri)
    ratios = []
    for nfe in (5, 6, 8, 10):
        v3 = _rms(pfode.sample(den, x_T, nfe=nfe, solver=DPMSolverV3(ems)), ref)
        pc = _rms(pfode.sample(den, x_T, nfe=nfe, solver=DPMSolverV3(ems, corrector=True)), ref)
        pp = _rms(pfode.sample(den, x_T, nfe=nfe, solver="dpm++2m"), ref)
        assert pc < v3 < pp, (nfe, pc, v3, pp)
        ratios.append((v3 / pp, pc / pp))
    # measured RMS, v3 / v3 with corrector / dpm++2m: NFE 5: 0.190/0.156/0.289, 6: 0.196/0.138/0.209,
    # 8: 0.108/0.075/0.144, 10: 0.073/0.052/0.104
    for j, bound in ((0, 0.85), (1, 0.65)):
        assert math.prod(r[j] for r in ratios) ** (1 / len(ratios)) < bound, ratios


def test_convergence_order_on_a_mixture():
    """Measured order with estimated statistics (slope over the finest pair of 20..160 steps, as the solver
    certification of ``tests/test_solvers.py``) equals the declared order."""
    d = 4
    mix = analytic.GaussianMixture.random(d, 3, std_range=(0.3, 1.0), generator=torch.Generator().manual_seed(0))
    path = paths.EDM()
    den = mix.denoiser(path)
    t_end = float(path.t_of_s(torch.tensor(0.5, dtype=torch.float64)))
    ems = estimate_stats(den, 256, shape=(d,), dtype=torch.float64, points=60, t_end=t_end,
                         generator=torch.Generator().manual_seed(1))
    x_T = _x_T(path, 8, d)
    dopri = pfode.solvers.get("dopri5", rtol=1e-12, atol=1e-12)
    ref = pfode.sample(den, x_T, pfode.grid(path, 1, t_end=t_end), dopri, denoise=False)
    # measured slopes: 1.02, 2.01, 3.16; with the corrector (one order more) 1.97, 3.02, 3.94
    for order, corrector in ((1, False), (2, False), (3, False), (1, True), (2, True), (3, True)):
        solver = DPMSolverV3(ems, order=order, corrector=corrector)
        assert solver.order == order + corrector
        errs = [_rms(pfode.sample(den, x_T, pfode.grid(path, n, t_end=t_end), solver, denoise=False), ref)
                for n in (20, 40, 80, 160)]
        assert all(a > b for a, b in zip(errs, errs[1:])), errs
        slope = math.log2(errs[-2] / errs[-1])
        assert abs(slope - solver.order) < 0.3, (order, corrector, errs, slope)


@pytest.mark.parametrize("order,name", [(1, "ddim"), (2, "dpm++2m"), (3, "dpm++3m")])
def test_without_statistics_it_is_dpm_solver_pp(order, name):
    mix = analytic.GaussianMixture.random(D, 3, generator=torch.Generator().manual_seed(8))
    for path in (paths.EDM(), paths.VPDiscrete.ddpm()):
        den = mix.denoiser(path)
        x_T = _x_T(path, 5)
        for nfe in (4, 7, 12):
            a = pfode.sample(den, x_T, nfe=nfe, solver=DPMSolverV3(order=order))
            b = pfode.sample(den, x_T, nfe=nfe, solver=name)
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert isinstance(pfode.solvers.get("dpm-v3"), DPMSolverV3)
    desc = pfode.solvers.get("dpm-v3").describe()
    assert desc["evals_per_step"] == 1 and desc["multistep"] and "DPM-Solver-v3" in desc["paper"]


def test_degenerate_statistics_are_dpm_solver_pp():
    """``l = 1, s = b = 0`` is DPM-Solver++: first order is DDIM exactly; higher orders interpolate ``x0_hat``
    in ``lam`` exactly (the Taylor form), close to the 2M/3M formulas."""
    path = paths.EDM()
    mix = analytic.GaussianMixture.random(D, 3, generator=torch.Generator().manual_seed(9))
    den = mix.denoiser(path)
    lam = torch.linspace(float(path.lam(path.t_max)), float(path.lam(path.t_min)), 50, dtype=torch.float64)
    ems = EMS.dpm_solver_pp(lam, (D,))
    x_T = _x_T(path, 5)
    grid = pfode.grid(path, 12)
    torch.testing.assert_close(pfode.sample(den, x_T, grid, DPMSolverV3(ems, order=1)),
                               pfode.sample(den, x_T, grid, "ddim"), rtol=1e-12, atol=1e-12)
    for order in (2, 3):
        a = pfode.sample(den, x_T, grid, DPMSolverV3(ems, order=order))
        b = pfode.sample(den, x_T, grid, f"dpm++{order}m")
        assert _rms(a, b) < 0.05 * float(b.pow(2).mean().sqrt())


def test_multidimensional_float32_samples():
    """Samples shaped ``[B, 3, 2, 2]`` in float32: per-element coefficients broadcast, cached per dtype."""
    shape = (3, 2, 2)
    g = torch.Generator().manual_seed(10)
    d = math.prod(shape)
    target = analytic.Gaussian(torch.randn(d, generator=g, dtype=torch.float64),
                               torch.diag(torch.rand(d, generator=g, dtype=torch.float64) + 0.1))
    path = paths.VP()
    den = target.denoiser(path)
    ems = estimate_stats(den, 32, shape=shape, points=40, generator=torch.Generator().manual_seed(11))
    assert ems.shape == shape and ems.l.dtype == torch.float64
    solver = DPMSolverV3(ems)
    x_T = torch.randn(4, *shape, generator=g)
    x32 = pfode.sample(den, x_T, nfe=6, solver=solver)
    x64 = pfode.sample(den, x_T.double(), nfe=6, solver=solver)
    assert x32.dtype == torch.float32 and x32.shape == x_T.shape
    torch.testing.assert_close(x32.double(), x64, rtol=1e-5, atol=1e-5)  # measured: 6e-7, as dpm++2m


# ----------------------------------------------------------------------------------------------
# Description and errors


def _small_ems(shape=(D,), points=7):
    g = torch.Generator().manual_seed(12)
    lam = torch.linspace(-3.0, 4.0, points, dtype=torch.float64)
    return EMS(lam, *(torch.randn(points, *shape, generator=g, dtype=torch.float64) for _ in range(3)))


def test_spec_round_trip_is_bit_exact():
    ems = _small_ems((2, 3))
    ems.l[0, 0, 0] = 1.0 / 3.0
    ems.b[1, 1, 2] = -1e-300
    spec = json.loads(json.dumps(ems.spec()))
    back = EMS.from_spec(spec)
    for name in ("lam", "l", "s", "b"):
        assert torch.equal(getattr(back, name), getattr(ems, name)), name
    assert back.shape == (2, 3) and back.lam_range == ems.lam_range
    decreasing = EMS(ems.lam.flip(0), ems.l.flip(0), ems.s.flip(0), ems.b.flip(0))
    assert torch.equal(EMS.from_spec(decreasing.spec()).lam, decreasing.lam)


def _encoded(values) -> dict:
    return encode_array(torch.as_tensor(values, dtype=torch.float64))


def test_bad_descriptions_name_the_field():
    good = _small_ems().spec()
    with pytest.raises(TypeError, match="dict"):
        EMS.from_spec([good])
    for mutate, exc, pattern in [
        (lambda s: s.pop("s"), ValueError, "no 's'"),
        (lambda s: s.update(extra=1), ValueError, "'extra'"),
        (lambda s: s.update(version=2), ValueError, "version"),
        (lambda s: s.update(b="AAAA"), ValueError, "'b'"),
        (lambda s: s["l"].pop("shape"), ValueError, "'l'.*encoded array"),
        (lambda s: s["l"].update(f64="!!not base64"), ValueError, "'l'.*base64"),
        (lambda s: s["l"].update(f64=s["l"]["f64"][:-12]), ValueError, "'l'.*holds"),
        (lambda s: s["l"].update(shape=[7, -1]), ValueError, "'l'.*shape"),
        (lambda s: s.update(lam=_encoded([0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0])), ValueError, "lam.*strictly"),
        (lambda s: s.update(lam=_encoded([0.0, 1.0, 2.0])), ValueError, "l must have shape"),
        (lambda s: s.update(s=_encoded(torch.zeros(7, 3))), ValueError, "same shape"),
        (lambda s: s.update(b=_encoded(torch.full((7, D), math.inf))), ValueError, "b has non-finite"),
    ]:
        spec = json.loads(json.dumps(good))
        mutate(spec)
        with pytest.raises(exc, match=pattern):
            EMS.from_spec(spec)


def test_grid_outside_the_statistics_and_shape_mismatch_are_errors():
    path = paths.VP()
    target, _, _ = _diag_gaussian()
    den = target.denoiser(path)
    lam = torch.linspace(float(path.lam(torch.tensor(0.8))), float(path.lam(path.t_min)), 20, dtype=torch.float64)
    ems = EMS.dpm_solver_pp(lam, (D,))
    with pytest.raises(ValueError, match=r"t=1 .*lam range"):
        pfode.sample(den, _x_T(path, 2), nfe=5, solver=DPMSolverV3(ems))
    ok = pfode.sample(den, _x_T(path, 2), nfe=5, solver=DPMSolverV3(ems), t_start=0.8)
    assert ok.shape == (2, D)
    with pytest.raises(ValueError, match="shape"):
        pfode.sample(den, torch.randn(2, D), nfe=5, solver=DPMSolverV3(EMS.dpm_solver_pp(lam, (2, 4))), t_start=0.8)
    with pytest.raises(TypeError, match="stats"):
        DPMSolverV3(stats={"lam": 1})
    with pytest.raises(ValueError, match="order"):
        DPMSolverV3(order=4)
    with pytest.raises(ValueError, match="corrector"):
        DPMSolverV3(corrector=True)


def test_estimate_stats_argument_errors():
    path = paths.EDM()
    den = _diag_gaussian()[0].denoiser(path)
    with pytest.raises(ValueError, match="shape="):
        estimate_stats(den, 8)
    with pytest.raises(ValueError, match="jacobian"):
        estimate_stats(den, 8, shape=(D,), jacobian="magic")
    with pytest.raises(ValueError, match="n=3"):
        estimate_stats(den, 3, x_T=torch.randn(4, D))
    with pytest.raises(ValueError, match="t_start"):
        estimate_stats(den, 8, shape=(D,), t_start=-1.0)
    with pytest.raises(ValueError, match="ridge"):
        estimate_stats(den, 8, shape=(D,), ridge=-1.0)
    with pytest.raises(TypeError, match="Denoiser"):
        estimate_stats(lambda x, t: x, 8, shape=(D,))
    with pytest.raises(ValueError, match="fixed-step"):
        estimate_stats(den, 8, shape=(D,), solver="dopri5")


def test_conditioning_is_split_with_the_batches():
    path = paths.EDM()
    target = _diag_gaussian()[0]
    seen = []

    def net(x, t, shift):
        assert shift.shape[0] == x.shape[0]
        seen.append(x.shape[0])
        return target.x0_eps(x, t, path)[0] + 0.0 * shift

    den = pfode.Denoiser(net, path, prediction="x0")
    cond = {"shift": torch.zeros(7, D, dtype=torch.float64)}
    ems = estimate_stats(den, x_T=_x_T(path, 7), points=3, batch_size=3, cond=cond)
    plain = estimate_stats(target.denoiser(path), x_T=_x_T(path, 7), points=3)
    assert set(seen) == {3, 1} and torch.allclose(ems.b, plain.b, atol=1e-6)


def test_planning_is_cheap_and_update_reuses_device_copies():
    """Coefficients are planned once per grid on the host; a second call reuses the plan and its tensor copies."""
    ems = _small_ems((D,), 40)
    path = paths.EDM()
    den = _diag_gaussian()[0].denoiser(path)
    t_start = float(path.t_of_lam(torch.tensor(-2.9)))
    sampler = pfode.Sampler(den, pfode.grid(path, 8, t_start=t_start, t_end=1.0), DPMSolverV3(ems, order=3))
    x = torch.randn(3, D, dtype=torch.float64)
    t0 = time.perf_counter()
    first = sampler(x, check_finite=False)
    second = sampler(x, check_finite=False)
    assert torch.equal(first, second) and time.perf_counter() - t0 < 5.0
    assert all(len(st.cache) == 1 for st in sampler.plan if hasattr(st, "cache"))
