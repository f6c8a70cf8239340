"""Kinetic energy of Gaussian paths and the kinetic-optimal path (Shaul et al., 2023) against closed forms."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.integrate import quad

import pfode
from pfode import analytic, paths
from pfode.kinetic import KineticOptimal, kinetic_energy, separation_function
from pfode.metrics import kinetic_energy as metrics_kinetic_energy

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gauss():
    return analytic.Gaussian(torch.tensor([0.5, -0.3], dtype=F64), torch.diag(torch.tensor([1.0, 0.01], dtype=F64)))


@pytest.fixture(scope="module")
def gmm():
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.2], [0.0, 1.8]], dtype=F64)
    return analytic.GaussianMixture(torch.tensor([0.3, 0.3, 0.4], dtype=F64), means, torch.tensor([0.04, 0.09, 0.02]))


@pytest.fixture(scope="module")
def ko_gauss(gauss):
    return KineticOptimal.from_data(gauss)


@pytest.fixture(scope="module")
def ko_gmm(gmm):
    return KineticOptimal.from_data(gmm, n_samples=1024, generator=gen(0))


def test_isotropic_gaussian_on_linear_matches_the_flow_map_integral():
    """N(0, s^2 I) on alpha = 1 - t, sigma = t: x_t = c(t) z with c^2 = (1-t)^2 s^2 + t^2, so E|u|^2 = d c'^2."""
    s2, d = 0.3, 3
    target = analytic.Gaussian(torch.zeros(d, dtype=F64), s2 * torch.eye(d, dtype=F64))

    def integrand(t):
        c = math.sqrt((1 - t) ** 2 * s2 + t * t)
        return d * ((t - (1 - t) * s2) / c) ** 2

    exact = quad(integrand, 0.0, 1.0, epsabs=1e-13)[0]
    got = kinetic_energy(target, paths.Linear())
    assert got.method == "closed-form" and got.stderr == 0.0
    assert got.value == pytest.approx(exact, rel=1e-9)
    assert metrics_kinetic_energy(target, paths.Linear()).value == got.value  # the metrics re-export


@pytest.mark.parametrize("make", [paths.Linear, paths.VPCosine, KineticOptimal])
def test_closed_form_equals_monte_carlo_of_the_exact_velocity(gauss, make):
    path = make()
    exact = kinetic_energy(gauss, path).value
    mc = kinetic_energy(gauss, path, method="monte-carlo", panels=8, n_samples=1500, generator=gen(1))
    assert mc.stderr > 0
    assert abs(mc.value - exact) < 4 * mc.stderr + 2e-3 * exact, (mc.value, mc.stderr, exact)


def test_mixture_monte_carlo_agrees_with_the_separation_formula(gmm):
    path = paths.Linear()
    mc = kinetic_energy(gmm, path, panels=8, n_samples=1500, generator=gen(2))
    sep = kinetic_energy(gmm, path, method="separation", n_samples=1500, generator=gen(3))
    assert mc.method == "monte-carlo" and sep.method == "separation"
    tol = 4 * math.hypot(mc.stderr, sep.stderr) + 5e-3 * sep.value
    assert abs(mc.value - sep.value) < tol, (mc, sep)


def test_energy_of_a_network_is_its_velocity_energy(gauss):
    """A Denoiser built on the exact x0 of the target gives the target's energy (Monte Carlo over data)."""
    path = paths.Linear()
    den = gauss.denoiser(path)
    data = gauss.sample(4000, gen(4))
    net = kinetic_energy(den, data=data, panels=8, n_samples=1000, generator=gen(5))
    exact = kinetic_energy(gauss, path).value
    assert abs(net.value - exact) < 4 * net.stderr + 0.02 * exact


def test_kinetic_optimal_default_is_cond_ot():
    """Separation function 1 (mmse = 0, E|x0|^2 = d): the KO path is the straight line alpha = 1 - t."""
    ko, lin = KineticOptimal(), paths.Linear()
    t = torch.linspace(0.0, 1.0, 41, dtype=F64)
    for fn in ("alpha", "sigma", "d_alpha", "d_sigma"):
        assert torch.allclose(getattr(ko, fn)(t), getattr(lin, fn)(t), atol=1e-9), fn
    assert ko.energy_per_dim == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("which", ["gauss", "gmm"])
def test_kinetic_optimal_has_the_least_energy(which, request):
    target, ko = request.getfixturevalue(which), request.getfixturevalue(f"ko_{which}")
    method = None if which == "gauss" else "separation"

    def energy(p):
        return kinetic_energy(target, p, method=method, panels=8, n_samples=512, generator=gen(7)).value

    e_ko = energy(ko)
    assert e_ko == pytest.approx(ko.energy_per_dim * target.d, rel=2e-2)  # constant speed: E = d L^2
    for other in (paths.Linear(), paths.VPCosine(), paths.Trig(), paths.EDM()):
        assert e_ko < energy(other), other
    assert e_ko < 0.9 * energy(paths.Linear())


def test_kinetic_optimal_has_constant_speed(gauss, ko_gauss):
    f = kinetic_energy(gauss, ko_gauss).integrand
    assert float(f.std() / f.mean()) < 1e-3


def test_kinetic_optimal_is_a_consistent_path(ko_gmm):
    t = torch.linspace(1e-4, 1 - 1e-4, 201, dtype=F64)
    lam = ko_gmm.lam(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(ko_gmm.t_of_lam(lam), t, atol=1e-12, rtol=0)
    a, s, da, ds = ko_gmm.coefficients(t)
    h = 1e-6
    assert torch.allclose(da, (ko_gmm.alpha(t + h) - ko_gmm.alpha(t - h)) / (2 * h), atol=1e-5, rtol=1e-5)
    assert torch.allclose(ds, (ko_gmm.sigma(t + h) - ko_gmm.sigma(t - h)) / (2 * h), atol=1e-5, rtol=1e-5)
    assert float(ko_gmm.sigma(0.0)) == 0.0 and float(ko_gmm.alpha(1.0)) == 0.0 and ko_gmm.reaches_zero


def test_kinetic_optimal_spec_round_trips_through_json(ko_gmm):
    spec = ko_gmm.spec()
    back = paths.from_spec(json.loads(json.dumps(spec)))
    assert isinstance(back, KineticOptimal) and back.spec() == spec
    t = torch.linspace(1e-3, 0.999, 33, dtype=F64)
    for fn in ("alpha", "sigma", "lam", "d_alpha", "d_sigma"):
        assert torch.equal(getattr(back, fn)(t), getattr(ko_gmm, fn)(t)), fn
    assert "kinetic-optimal" in paths.available()
    assert isinstance(paths.get_path("kinetic-optimal"), KineticOptimal)


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc", "euler", "heun"])
def test_solvers_run_on_the_kinetic_optimal_path(gauss, ko_gauss, solver):
    x_T = torch.randn(64, 2, generator=gen(8), dtype=F64) * float(ko_gauss.sigma(ko_gauss.t_max))
    den = gauss.denoiser(ko_gauss)
    errs = []
    for nfe in (12, 48):
        x = pfode.sample(den, x_T, nfe=nfe, solver=solver, denoise=False, spacing="logsnr", t_end=0.01)
        ref = gauss.flow_map(x_T, ko_gauss.t_max, 0.01, ko_gauss)
        errs.append(float((x - ref).pow(2).mean().sqrt()))
    assert errs[1] < errs[0] / 3 and errs[1] < 0.05, errs


def test_separation_function(gmm, gauss):
    lam = torch.tensor([-8.0, 0.0, 8.0], dtype=F64)
    sep, se = separation_function(gmm, lam, n_samples=1024, generator=gen(9))
    assert bool(((sep >= -1e-9) & (sep <= 1 + 1e-9)).all())
    mu, cov = gmm.mean_cov()
    m = float((mu**2).sum() + cov.trace())
    assert float(sep[0]) == pytest.approx(float((mu**2).sum()) / m, abs=1e-3)  # no information: E[x0|x] = mean
    assert float(sep[2]) > 0.999
    # a one-component mixture is the Gaussian's closed form, up to Monte-Carlo error
    one = analytic.GaussianMixture(torch.ones(1, dtype=F64), gauss.mean[None], torch.diagonal(gauss.cov)[None])
    a, se_a = separation_function(one, lam, n_samples=4096, generator=gen(10))
    b, se_b = separation_function(gauss, lam)
    assert bool((se_b == 0).all()) and torch.allclose(a, b, atol=1e-9)  # posterior variance is deterministic here


def test_kinetic_optimal_from_samples_runs(gmm):
    x = gmm.sample(300, gen(11))
    ko = KineticOptimal.from_data(x, points=41, n_samples=256, generator=gen(12))
    assert ko.energy_per_dim < KineticOptimal(second_moment=ko.second_moment).energy_per_dim


def test_bad_input_is_named(gauss):
    with pytest.raises(TypeError, match="path must be"):
        kinetic_energy(gauss, None)
    with pytest.raises(TypeError, match="model_or_target"):
        kinetic_energy(3.0, paths.Linear())
    with pytest.raises(ValueError, match="data="):
        kinetic_energy(gauss.denoiser(paths.Linear()))
    with pytest.raises(ValueError, match="t_range"):
        kinetic_energy(gauss, paths.Linear(), t_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="method="):
        kinetic_energy(gauss, paths.Linear(), method="separation-typo")
    with pytest.raises(ValueError, match="mmse"):
        KineticOptimal(mmse=[0.1, -1.0])
    with pytest.raises(ValueError, match="second_moment"):
        KineticOptimal(second_moment=0.0)
    with pytest.raises(TypeError, match="data must be"):
        KineticOptimal.from_data("moons")
