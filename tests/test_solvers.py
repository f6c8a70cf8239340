"""Solver certification: measured convergence order against independent ground truth.

Every registered deterministic fixed-step solver is run on a Gaussian-mixture target (d=4, three
components) from ``t_max`` to a mid noise level (``sigma/alpha = 0.5``) on grids of 20..160 steps, and the
slope of log error vs log steps over the finest pair must equal the solver's declared ``order`` (within
0.3). The reference solution is scipy's DOP853 at tolerance 1e-12 on ``dy/ds = (y - x0_hat) / s`` with
the closed-form mixture denoiser, independent of pfode's solvers. A mixture rather than a single Gaussian:
for Gaussian data the explicit midpoint rule in ``s`` has a vanishing leading error term (local error
``h^3 e s y / u^3 [-4/24 + 1/6] = 0`` per eigen-direction) and looks third order. The end point is
deliberately not at the data end: there the leading error terms of several multistep methods telescope
(``int G x0''' dlam ~ [x0'']`` vanishes when ``x0''`` is ~0 at both ends).

New solvers (one registry line) and new paths (one class) are picked up automatically: every solver on
three paths and prediction types, every registered path with three solvers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pfode
from pfode import analytic, paths
from pfode._checks import as_f64
from pfode.engine import Tableau
from pfode.predictions import Coeffs, from_x0_eps
from pfode.solvers import DEIS, IPNDM, RK4, USF, DPMSolver, Euler, Heun, Midpoint, Rule, UniPC
from pfode.solvers.base import _REGISTRY

D = 4


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), cov)


MIXTURE = analytic.GaussianMixture.random(D, 3, std_range=(0.3, 1.0), generator=torch.Generator().manual_seed(0))


def as_prediction(target, path, prediction):
    """The exact denoiser re-expressed as a network of another prediction type."""

    def net(x, t):
        x0, eps = target.x0_eps(x, t, path)
        return from_x0_eps(prediction, x0, eps, Coeffs.at(path, t, like=x))

    return pfode.Denoiser(net, path, prediction=prediction)


def _x_T(path):
    x_T = torch.randn(8, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x_T * float(path.sigma(path.t_max))


def _t_end(path):
    return float(path.t_of_s(torch.tensor(0.5, dtype=torch.float64)))


_REFERENCE: dict = {}


def mixture_reference(path):
    """The PF-ODE flow of the mixture from t_max to s = 0.5 by scipy (DOP853 in s, tolerance 1e-12)."""
    key = repr(path)
    if key not in _REFERENCE:
        x_T = _x_T(path)
        s0 = float(path.s(path.t_max))

        def rhs(s, y):
            yt = torch.from_numpy(y).reshape(x_T.shape)
            t = path.t_of_s(torch.tensor(s, dtype=torch.float64))
            x0, _ = MIXTURE.x0_eps(yt * path.alpha(t), t, path)
            return ((yt - x0) / s).reshape(-1).numpy()

        y0 = (x_T / float(path.alpha(path.t_max))).reshape(-1).numpy()
        sol = solve_ivp(rhs, (s0, 0.5), y0, method="DOP853", rtol=1e-12, atol=1e-12)
        assert sol.success, sol.message
        y1 = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(x_T.shape)
        _REFERENCE[key] = y1 * float(path.alpha(_t_end(path)))
    return _REFERENCE[key]


def errors(target, path, prediction, solver, steps, spacing="logsnr"):
    """RMS errors at ``sigma/alpha = 0.5`` for each step count, against the closed form (Gaussian) or the
    scipy reference (mixture)."""
    den = as_prediction(target, path, prediction)
    x_T = _x_T(path)
    t_end = _t_end(path)
    ref = mixture_reference(path) if target is MIXTURE else target.flow_map(x_T, path.t_max, t_end, path)
    out = []
    for n in steps:
        x = pfode.sample(den, x_T, pfode.grid(path, n, spacing, t_end=t_end), solver, denoise=False)
        out.append(float((x - ref).pow(2).mean().sqrt()))
    return out


def slope(errs):
    return math.log(errs[-2] / errs[-1]) / math.log(2)


def fixed_step_deterministic():
    return [n for n in pfode.solvers.available() if not (lambda s: s.stochastic or s.adaptive)(pfode.solvers.get(n))]


def path_classes():
    """One default instance of every registered path class."""
    seen, out = set(), []
    for name in pfode.paths.available():
        p = pfode.paths.get_path(name)
        if type(p) not in seen:
            seen.add(type(p))
            out.append(p)
    return out


CASES = [
    ("vp-discrete", paths.VPDiscrete.ddpm, "eps"),
    ("edm", paths.EDM, "x0"),
    ("linear", paths.Linear, "velocity"),
]
STEPS = [20, 40, 80, 160]


def certify(solver, path, prediction="eps"):
    errs = errors(MIXTURE, path, prediction, solver, STEPS)
    order = pfode.solvers.get(solver).order
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert abs(slope(errs) - order) < 0.3, (solver, order, errs, slope(errs))


@pytest.mark.parametrize("name", fixed_step_deterministic())
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convergence_order(name, case):
    _, make_path, prediction = case
    certify(name, make_path(), prediction)


@pytest.mark.parametrize("path", path_classes(), ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("name", ["heun", "dpm++2m", "unipc"])
def test_every_path_is_certified(path, name):
    certify(name, path)


def test_every_solver_converges_to_the_closed_form_flow(gaussian):
    """Against closed-form truth: on the Gaussian flow map every solver converges at least at its order
    (midpoint in ``s`` exceeds it there, see the module docs)."""
    path = paths.EDM()
    for name in fixed_step_deterministic():
        errs = errors(gaussian, path, "x0", name, STEPS[-2:])
        assert slope(errs) > pfode.solvers.get(name).order - 0.3, (name, errs)


def test_a_new_solver_is_one_registry_line():
    """Ralston's second-order method from its tableau, registered, is certified like the shipped ones."""
    ralston = Tableau("ralston", (0.0, 2 / 3), ((), (2 / 3,)), (1 / 4, 3 / 4), 2)
    pfode.solvers.register("ralston-test", pfode.solvers.RK, tableau=ralston)
    try:
        assert "ralston-test" in fixed_step_deterministic()
        certify("ralston-test", paths.EDM(), "x0")
    finally:
        del _REGISTRY["ralston-test"]


def test_a_new_path_is_one_class():
    """A path subclass with a name is registered, described, rebuilt and certified."""

    class Sqrt(paths.Path):
        """``alpha = 1 - t``, ``sigma = sqrt(t)``."""

        name = "sqrt-test"

        def __init__(self, t_min: float = 1e-3, t_max: float = 0.99):
            self.t_lo, self.t_hi, self.t_min, self.t_max = 0.0, 1.0, float(t_min), float(t_max)

        def alpha(self, t):
            return 1.0 - as_f64(t)

        def sigma(self, t):
            return torch.sqrt(as_f64(t))

        def d_alpha(self, t):
            return -torch.ones_like(as_f64(t))

        def d_sigma(self, t):
            return 0.5 / torch.sqrt(as_f64(t))

    try:
        assert "sqrt-test" in pfode.paths.available()
        p = pfode.paths.from_spec(Sqrt(t_max=0.95).spec())
        assert isinstance(p, Sqrt) and p.t_max == 0.95
        assert any(isinstance(q, Sqrt) for q in path_classes())
        certify("dpm++2m", p)
    finally:
        del pfode.paths._PATHS["sqrt-test"]


VARIANTS = [
    (UniPC(1, "bh1"), 2),
    (UniPC(2, "bh1"), 3),
    (UniPC(3, "bh1"), 4),
    (UniPC(1, "bh2"), 2),
    (UniPC(3, "bh2"), 4),
    (UniPC(2, corrector=False), 2),
    (UniPC(3, corrector=False), 3),
    (DEIS(1), 1),
    (DEIS(2), 2),
    (DEIS(3, variable="lam"), 3),
    (DEIS(3, variable="s"), 3),
    (IPNDM(2), 2),
    (IPNDM(3), 3),
    (IPNDM(4, variable_step=False), 2),  # constant-step coefficients on a grid that is not uniform in s
    (DPMSolver(order=2), 2),
    (USF(1, corrector=True), 2),
    (USF(2, "eps"), 2),
    (USF(2, corrector=True), 3),
    (USF(3), 3),
    (USF(3, "eps", corrector=True), 4),
    (USF(rules=[Rule(3, "eps"), Rule(2, "x0", True)] * 80), 3),
]


@pytest.mark.parametrize("solver,order", VARIANTS, ids=[f"{s.name}-{i}" for i, (s, _) in enumerate(VARIANTS)])
def test_variant_orders(gaussian, solver, order):
    errs = errors(gaussian, paths.EDM(), "eps", solver, STEPS)
    assert abs(slope(errs) - order) < 0.3, (errs, slope(errs))


@pytest.mark.parametrize("make_path", [paths.VP, paths.Trig, paths.Linear])
@pytest.mark.parametrize("solver,order", [(Euler("t"), 1), (Heun("t"), 2), (RK4("t"), 4)])
def test_rk_in_path_time(gaussian, make_path, solver, order):
    errs = errors(gaussian, make_path(), "velocity", solver, STEPS, spacing="uniform")
    assert abs(slope(errs) - order) < 0.3, (errs, slope(errs))


def test_midpoint_is_second_order_in_path_time_on_vp(gaussian):
    errs = errors(gaussian, paths.VP(), "eps", Midpoint("t"), STEPS, spacing="uniform")
    assert abs(slope(errs) - 2) < 0.3, errs


_T_REFERENCE: dict = {}


def reference_in_t(path, t_start):
    """The mixture's PF-ODE flow ``dx/dt = alpha' x0 + sigma' eps`` from ``t_start`` to the data end (scipy DOP853
    at 1e-12, to ``t = 1e-12``: the field is regular there)."""
    key = (repr(path), t_start)
    if key not in _T_REFERENCE:
        x_T = _x_T(path)

        def rhs(t, x):
            tt = torch.tensor(t, dtype=torch.float64)
            x0, eps = MIXTURE.x0_eps(torch.from_numpy(x).reshape(x_T.shape), tt, path)
            return (path.d_alpha(tt) * x0 + path.d_sigma(tt) * eps).reshape(-1).numpy()

        sol = solve_ivp(rhs, (t_start, 1e-12), x_T.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
        assert sol.success, sol.message
        _T_REFERENCE[key] = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(x_T.shape)
    return _T_REFERENCE[key]


@pytest.mark.parametrize(
    "make_path,prediction,t_start", [(paths.Linear, "velocity", 1.0), (paths.Trig, "eps", 0.99)], ids=["linear", "trig"]
)
@pytest.mark.parametrize("solver", [Euler("t"), Midpoint("t"), Heun("t"), RK4("t")], ids=lambda s: s.name)
def test_full_last_step_to_zero_noise_in_path_time(make_path, prediction, t_start, solver):
    """On a grid ending at zero noise where dx/dt is regular, steppers in ``t`` take a full last step (a stage at
    the end receives dx/dt), so the end-to-end order is the solver's (the denoising step capped RK4 at 2)."""
    path = make_path()
    den = as_prediction(MIXTURE, path, prediction)
    x_T, ref = _x_T(path), reference_in_t(path, t_start)
    errs = []
    for n in (20, 40, 80):
        sampler = pfode.Sampler(den, torch.linspace(t_start, 0.0, n + 1, dtype=torch.float64), solver)
        assert sampler.nfe == n * solver.evals_per_step and not sampler.plan[-1].zero
        errs.append(float((sampler(x_T) - ref).pow(2).mean().sqrt()))
    assert abs(slope(errs) - solver.order) < 0.3, (errs, slope(errs))


def test_denoising_step_where_the_end_is_singular():
    """The last step stays the denoising step where dx/dt at zero noise is undefined: on VP (sigma' is infinite
    at t = 0), for an x0 prediction with a stage at the end (Heun), and for solvers in ``s`` or ``lam``."""
    grid = torch.linspace(0.9, 0.0, 6, dtype=torch.float64)
    cases = [
        (paths.VP(), "velocity", Midpoint("t"), True),
        (paths.Linear(), "x0", Heun("t"), True),
        (paths.Linear(), "x0", Midpoint("t"), False),  # no stage at the end: a full step
        (paths.Linear(), "velocity", Heun("s"), True),
        (paths.Linear(), "velocity", "dpm++2m", True),
    ]
    for path, prediction, solver, zero in cases:
        sampler = pfode.Sampler(as_prediction(MIXTURE, path, prediction), grid, solver)
        assert sampler.plan[-1].zero is zero, (path, prediction, solver)
        assert bool(torch.isfinite(sampler(_x_T(path))).all())


def test_dopri5_error_follows_tolerance(gaussian):
    path = paths.VPDiscrete.ddpm()
    den = gaussian.denoiser(path)
    x_T = torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = gaussian.flow_map(x_T, path.t_max, path.t_min, path)
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        out = pfode.sample(
            den,
            x_T,
            pfode.grid(path, 1),
            pfode.solvers.get("dopri5", rtol=tol, atol=tol),
            denoise=False,
            return_info=True,
        )
        errs.append(float((out.x - ref).abs().max()))
        nfes.append(out.nfe)
    assert errs[0] < 1e-2 and errs[2] < 1e-6
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_per_sample_control_is_independent_of_the_batch(gaussian):
    path = paths.EDM()
    den = gaussian.denoiser(path)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(6, D, generator=g, dtype=torch.float64) * 80.0
    x_T[3:] *= 0.05  # very different samples in the same batch
    solver = pfode.solvers.get("dopri5", rtol=1e-6, atol=1e-6)
    grid = pfode.grid(path, 1)
    full = pfode.sample(den, x_T, grid, solver, denoise=False, return_info=True)
    alone = pfode.sample(den, x_T[:1], grid, solver, denoise=False, return_info=True)
    assert torch.equal(full.info["accepted_steps"][:1], alone.info["accepted_steps"])
    torch.testing.assert_close(full.x[:1], alone.x, rtol=1e-12, atol=1e-12)
    assert len(set(full.info["accepted_steps"].tolist())) > 1  # samples really did take their own steps


# ----------------------------------------------------------------------------------------------
# Stochastic samplers: weak convergence of mean and covariance on a Gaussian target


@pytest.mark.parametrize("name", ["euler-maruyama", "ddpm", "dpm++2m-sde"])
def test_stochastic_weak_convergence(name):
    g = torch.Generator().manual_seed(4)
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    target = analytic.Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), cov)
    path = paths.VP()
    den = target.denoiser(path)
    n = 20000
    x_T = torch.randn(n, 2, generator=g, dtype=torch.float64)
    a, s = float(path.alpha(path.t_min)), float(path.sigma(path.t_min))
    true_mean, true_cov = a * target.mean, a * a * cov + s * s * torch.eye(2, dtype=torch.float64)
    w2 = []
    for steps in (20, 320):
        x = pfode.sample(
            den, x_T, pfode.grid(path, steps), name, denoise=False, generator=torch.Generator().manual_seed(5)
        )
        w2.append(pfode.metrics.w2_gaussian(x.mean(0), torch.cov(x.T), true_mean, true_cov))
    # measured: ddpm 0.176 -> 0.0095, euler-maruyama 0.021 -> 0.006, dpm++2m-sde 0.077 -> 0.006;
    # the Monte-Carlo floor with 20k samples is about 0.005
    assert w2[0] > w2[1], w2
    assert w2[1] < 0.02, w2


def test_stochastic_seed_independent_of_batch_size():
    target = analytic.GaussianMixture([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.0]], [0.1, 0.1])
    path = paths.EDM()
    den = target.denoiser(path)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 80
    for name in ("euler-maruyama", "ddpm", "dpm++2m-sde"):
        big = pfode.sample(den, x_T, nfe=10, solver=name, generator=torch.Generator().manual_seed(7))
        small = pfode.sample(den, x_T[:3], nfe=10, solver=name, generator=torch.Generator().manual_seed(7))
        other = pfode.sample(den, x_T[:3], nfe=10, solver=name, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(big[:3], small, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(small, other)


# ----------------------------------------------------------------------------------------------
# Robustness: every solver x every path x every NFE from 1 to 30 gives finite samples

ALL_PATHS = [
    paths.VP,
    paths.VPCosine,
    paths.VPDiscrete.ddpm,
    paths.SubVP,
    paths.VE,
    paths.EDM,
    paths.Linear,
    paths.Trig,
]


@pytest.mark.parametrize("make_path", ALL_PATHS, ids=lambda f: getattr(f, "__qualname__", str(f)))
def test_every_solver_every_nfe_is_finite(make_path):
    path = make_path()
    target = analytic.GaussianMixture.random(8, 4, std_range=(0.05, 1.0), generator=torch.Generator().manual_seed(8))
    den = target.denoiser(path)
    x_T = torch.randn(16, 8, generator=torch.Generator().manual_seed(9)) * float(path.sigma(path.t_max))
    ran = 0
    for name in pfode.solvers.available():
        solver = pfode.solvers.get(name)
        if solver.adaptive:
            continue
        for nfe in (*range(1, 13), 15, 17, 20, 25, 30):  # every small budget, a few large ones
            try:
                x = pfode.sample(den, x_T, nfe=nfe, solver=solver, generator=torch.Generator().manual_seed(0))
            except ValueError as e:
                assert "cannot be spent" in str(e) or "too small" in str(e), str(e)
                continue
            assert x.dtype == torch.float32
            assert bool(torch.isfinite(x).all()), (name, nfe)
            ran += 1
    assert ran > 250


def test_nfe_is_spent_exactly():
    path = paths.VPDiscrete.ddpm()
    target = analytic.Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    calls = []

    def net(x, t):
        calls.append(1)
        return target.x0_eps(x, path.t_of_index(t), path)[1]

    den = pfode.Denoiser(net, path, prediction="eps", time_input="index")
    x_T = torch.randn(4, 3, dtype=torch.float64)
    for name in pfode.solvers.available():
        if name == "dopri5":
            continue
        for nfe in (5, 7, 10, 15):
            calls.clear()
            try:
                out = pfode.sample(den, x_T, nfe=nfe, solver=name, return_info=True)
            except ValueError:
                continue
            assert len(calls) == nfe == out.nfe, (name, nfe, len(calls))


def test_solver_objects_are_reusable():
    path = paths.EDM()
    target = analytic.GaussianMixture.random(4, 3, generator=torch.Generator().manual_seed(10))
    den = target.denoiser(path)
    for name in ("dpm++2m", "dpm++3m", "unipc", "deis", "ipndm", "dpm3", "heun", "dpm++2m-sde"):
        shared = pfode.solvers.get(name)
        for b, steps in ((5, 7), (3, 12), (5, 7)):
            x_T = torch.randn(b, 4, generator=torch.Generator().manual_seed(b), dtype=torch.float64) * 80
            gr = pfode.grid(path, steps, "karras")
            a = pfode.sample(den, x_T, gr, shared, generator=torch.Generator().manual_seed(1))
            fresh = pfode.sample(den, x_T, gr, pfode.solvers.get(name), generator=torch.Generator().manual_seed(1))
            assert torch.equal(a, fresh), name


def test_grid_ending_at_zero_noise_equals_final_denoising_step():
    path = paths.EDM()
    target = analytic.GaussianMixture.random(4, 3, generator=torch.Generator().manual_seed(11))
    den = target.denoiser(path)
    x_T = torch.randn(5, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 80
    g = pfode.grid(path, 8, "karras", t_end=0.0)
    assert float(g[-1]) == 0.0
    for name in ("dpm++2m", "heun", "unipc", "ddim"):
        a = pfode.sample(den, x_T, g, name)
        b = pfode.sample(den, x_T, g[:-1], name, denoise=True)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        out = pfode.sample(den, x_T, g, name, return_trajectory=True)
        x_last = out.trajectory[-2]  # the state at the last time above zero noise
        torch.testing.assert_close(a, target.x0_eps(x_last, g[-2], path)[0])


def test_half_precision_network_output_is_upcast():
    path = paths.VP()
    target = analytic.Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 0.5)

    def net(x, t):
        return target.x0_eps(x, t, path)[1].to(torch.bfloat16)

    den = pfode.Denoiser(net, path, prediction="eps")
    x_T = torch.randn(4, 3)
    x = pfode.sample(den, x_T, nfe=10, solver="dpm++2m")
    assert x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())


def test_callback_and_trajectory():
    path = paths.Linear()
    target = analytic.GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(13))
    den = target.denoiser(path)
    x_T = torch.randn(3, 2, dtype=torch.float64)
    seen = []
    out = pfode.sample(den, x_T, nfe=6, solver="dpm++2m", callback=seen.append, return_trajectory=True)
    assert [s["i"] for s in seen] == list(range(len(seen)))
    assert all(s["t"] > s["t_next"] for s in seen)
    assert len(out.trajectory) == len(out.times) == len(seen) + 1
    assert torch.equal(out.trajectory[0], x_T) and torch.equal(out.trajectory[-1], out.x)
    torch.testing.assert_close(seen[1]["x0_hat"], target.x0_eps(seen[1]["x"], seen[1]["t"], path)[0])


def test_dopri5_callback_reports_every_attempt_per_sample():
    path = paths.EDM()
    target = analytic.GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(13))
    den = target.denoiser(path)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    x_T[2:] *= 0.05  # samples that take different steps
    seen = []
    solver = pfode.solvers.get("dopri5", rtol=1e-5, atol=1e-5)
    out = pfode.sample(den, x_T, pfode.grid(path, 1), solver, callback=seen.append, return_info=True)
    assert [s["i"] for s in seen] == list(range(len(seen)))
    attempts = out.info["accepted_steps"] + out.info["rejected_steps"]
    assert len(seen) == int(attempts.max()) + 1  # every attempt, then the denoising step
    accepted = torch.stack([s["accepted"] for s in seen[:-1]]).sum(0)
    assert torch.equal(accepted, out.info["accepted_steps"])
    for s in seen[:-1]:
        assert s["t"].shape == (4,) and bool((s["t"] <= s["t_prev"]).all())
        assert torch.equal(s["t"] < s["t_prev"], s["accepted"])  # a sample moves exactly when it accepts
        k = int(s["accepted"].nonzero()[0]) if bool(s["accepted"].any()) else 0
        exact = target.x0_eps(s["x"][k : k + 1], float(s["t"][k]), path)[0]
        torch.testing.assert_close(s["x0_hat"][k : k + 1], exact, rtol=1e-9, atol=1e-9)
    assert len({tuple(s["accepted"].tolist()) for s in seen[:-1]}) > 1  # samples did not move in lockstep
    last = seen[-1]
    assert torch.equal(last["x"], out.x) and bool((last["t"] == path.t_lo).all())
    assert torch.allclose(seen[-2]["t"], torch.full((4,), float(pfode.grid(path, 1)[-1]), dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Bad input


def test_unknown_solver_lists_names():
    with pytest.raises(ValueError, match="dpm\\+\\+2m"):
        pfode.solvers.get("dpm++9m")


def test_unsupported_orders():
    with pytest.raises(ValueError, match="order"):
        pfode.solvers.get("dpm3", order=4)
    with pytest.raises(ValueError, match="order"):
        UniPC(order=4)
    with pytest.raises(ValueError, match="order"):
        IPNDM(order=5)
    with pytest.raises(ValueError, match="variant"):
        UniPC(variant="bh3")


def test_grid_problems():
    path = paths.EDM()
    den = analytic.Gaussian(torch.zeros(2), torch.eye(2)).denoiser(path)
    x_T = torch.randn(2, 2)
    with pytest.raises(ValueError, match="at least 2"):
        pfode.sample(den, x_T, torch.tensor([80.0]))
    with pytest.raises(ValueError, match="orders has 2 entries"):
        pfode.sample(den, x_T, pfode.grid(path, 5), DPMSolver(orders=[3, 3]))
    with pytest.raises(ValueError, match="grid=.*or nfe="):
        pfode.sample(den, x_T)
    with pytest.raises(TypeError, match="nfe=10"):
        pfode.sample(den, x_T, 10)
    with pytest.raises(ValueError, match="cannot be spent"):
        pfode.sample(den, x_T, nfe=10, solver="heun")
    with pytest.raises(ValueError, match="rtol/atol"):
        pfode.sample(den, x_T, nfe=10, solver="dopri5")
    with pytest.raises(ValueError, match="alpha > 0"):
        pfode.sample(paths_linear_den(), x_T, torch.tensor([1.0, 0.5, 0.1]), "dpm++2m")


def paths_linear_den():
    return analytic.Gaussian(torch.zeros(2), torch.eye(2)).denoiser(paths.Linear())


def test_rk_in_t_starts_at_pure_noise():
    den = paths_linear_den()
    x = pfode.sample(den, torch.randn(3, 2), torch.linspace(1.0, 0.01, 11), Heun("t"))
    assert bool(torch.isfinite(x).all())


def test_nan_from_network_names_step_and_time():
    path = paths.EDM()
    target = analytic.Gaussian(torch.zeros(2), torch.eye(2))
    g = pfode.grid(path, 8)
    bad_t = float(g[3])

    def net(x, t):  # fails at one time, as a network with a broken input range would
        out = target.x0_eps(x, t, path)[0].to(x.dtype)
        return out * float("nan") if abs(float(t[0]) - bad_t) < 1e-5 * bad_t else out

    den = pfode.Denoiser(net, path, prediction="x0")
    with pytest.raises(pfode.NonFiniteError, match=f"step 3 \\(t={bad_t:.6g}\\)"):
        pfode.sample(den, torch.randn(2, 2), g, "dpm++2m")
    sampler = pfode.Sampler(den, g, "unipc")
    with pytest.raises(pfode.NonFiniteError, match="step 3"):
        sampler(torch.randn(2, 2))

    calls = []

    def flaky(x, t):  # NaN on its third call only: a replay is finite
        calls.append(1)
        out = target.x0_eps(x, t, path)[0].to(x.dtype)
        return out * float("nan") if len(calls) == 3 else out

    with pytest.raises(pfode.NonFiniteError, match="replay of the same call was.*not deterministic"):
        pfode.sample(pfode.Denoiser(flaky, path, prediction="x0"), torch.randn(2, 2), g, "dpm++2m")


def test_bad_x_T():
    den = paths_linear_den()
    with pytest.raises(TypeError, match="floating"):
        pfode.sample(den, torch.ones(2, 2, dtype=torch.long), nfe=5)
    with pytest.raises(ValueError, match="batch dimension first, got a scalar"):
        pfode.sample(den, torch.tensor(1.0), nfe=5)
    with pytest.raises(ValueError, match="empty batch"):
        pfode.sample(den, torch.zeros(0, 2), nfe=5)
    with pytest.raises(ValueError, match="non-finite"):
        pfode.sample(den, torch.tensor([[float("nan"), 0.0]]), nfe=5)
    with pytest.raises(ValueError, match="features"):
        pfode.sample(den, torch.randn(2, 3), nfe=5)
    with pytest.raises(TypeError, match="pfode.Denoiser"):
        pfode.sample(lambda x, t: x, torch.randn(2, 2), nfe=5)


def test_sample_caches_prepared_samplers_by_their_arguments():
    from pfode.sample import _SAMPLERS

    target = analytic.GaussianMixture.random(3, 2, generator=torch.Generator().manual_seed(14))
    den = target.denoiser(paths.EDM())
    x_T = torch.randn(4, 3, dtype=torch.float64) * 80
    first = pfode.sample(den, x_T, nfe=8, solver="unipc")
    again = pfode.sample(den, x_T, nfe=8, solver="unipc")
    assert torch.equal(first, again) and len(_SAMPLERS[den]) == 1
    assert not hasattr(den, "_samplers")  # nothing is written into the user's object
    other = pfode.sample(den, x_T, nfe=8, solver="unipc", spacing="karras")
    assert len(_SAMPLERS[den]) == 2 and not torch.equal(first, other)
    fresh = pfode.Sampler(den, nfe=8, solver="unipc", spacing="karras")(x_T)
    assert torch.equal(other, fresh)
    # a new path object on the same denoiser is never served a sampler prepared for the old one
    den.path = paths.EDM(sigma_max=40.0)
    moved = pfode.sample(den, x_T / 2, nfe=8, solver="unipc")
    assert torch.equal(moved, pfode.Sampler(den, nfe=8, solver="unipc")(x_T / 2))


# ----------------------------------------------------------------------------------------------
# The solver contract: derived multistep, honest history declarations, step programs


def test_multistep_is_derived_from_the_plan():
    multi = {n for n in pfode.solvers.available() if pfode.solvers.get(n).multistep}
    known = {"dpm++2m", "dpm++3m", "unipc", "deis", "ipndm", "dpm++2m-sde", "usf", "dpm-v3", "lms", "dpm++3m-sde"}
    assert multi >= known
    single = {"ddim", "dpm1", "dpm2", "dpm3", "dpm++2s", "euler", "heun", "midpoint", "rk4", "dpm-2", "euler-ancestral"}
    assert not multi & single
    assert not pfode.solvers.get("unipc", order=1, corrector=False).multistep  # UniP-1 is DDIM


@pytest.mark.parametrize("name", [n for n in pfode.solvers.available() if not pfode.solvers.get(n).adaptive])
def test_declared_history_is_what_a_step_reads(name):
    """A step declaring ``history == 0`` ignores the history it is handed; one declaring more uses it."""
    from pfode.adjoint import _flatten, _unflatten
    from pfode.engine import drive
    from pfode.solvers.base import Evaluator, Table

    path = paths.EDM()
    den = MIXTURE.denoiser(path)
    s = pfode.solvers.get(name)
    table = Table(path, pfode.grid(path, 6), True)
    plan = s.plan(table)
    x = _x_T(path)
    ev = Evaluator(den, table, x, None)
    hist = None
    g = torch.Generator().manual_seed(3)
    zeros = torch.zeros_like(x)
    for st in plan:
        out, new_hist, _ = drive(s.program(x, hist, st, lambda: zeros), ev)
        if hist is not None and not st.zero:
            other = _unflatten(hist, [torch.randn(v.shape, generator=g, dtype=v.dtype) for v in _flatten(hist)])
            out2, _, _ = drive(s.program(x, other, st, lambda: zeros), ev)
            assert torch.equal(out, out2) == (st.history == 0), (name, st)
        x, hist = out, new_hist
