"""Tests of the closed-form Gaussian and Gaussian-mixture targets in :mod:`pfode.analytic`.

References: a DOP853 solve of the probability-flow ODE, Monte-Carlo posterior means from
independent prior draws (numpy), ``torch.distributions`` densities and autograd scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

import pfode
from pfode import paths as P
from pfode.analytic import Gaussian, GaussianMixture


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.2 * torch.eye(d, dtype=torch.float64)


GAUSS3 = Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), _spd(3, 0))

GMM2 = GaussianMixture(
    weights=[0.5, 0.3, 0.2],
    means=[[-1.0, 0.5], [1.5, 1.0], [0.0, -1.5]],
    variances=[[0.3, 0.1], [0.2, 0.4], [0.15, 0.15]],
)
GAUSS2_MEAN = np.array([0.3, -0.5])
GAUSS2_COV = np.array([[1.0, 0.6], [0.6, 0.8]])
GAUSS2 = Gaussian(torch.tensor(GAUSS2_MEAN), torch.tensor(GAUSS2_COV))


# ---------------------------------------------------------------------------------------------
# flow map vs a numerical solve of the PF-ODE
# ---------------------------------------------------------------------------------------------


def _ode_solve(target, path, x_T: np.ndarray, T: float, stops: list[float]) -> np.ndarray:
    """Integrate dx/dt = f(t) x - 0.5 g2(t) score(x, t) from T through ``stops`` (decreasing)."""
    shape = x_T.shape

    def rhs(t, y):
        x = torch.from_numpy(y.reshape(shape))
        score = target.score(x, t, path)
        return (float(path.f(t)) * x - 0.5 * float(path.g2(t)) * score).numpy().ravel()

    sol = solve_ivp(rhs, (T, stops[-1]), x_T.ravel(), method="DOP853", rtol=1e-11, atol=1e-12, t_eval=stops)
    assert sol.success, sol.message
    return sol.y.T.reshape(len(stops), *shape)


@pytest.mark.parametrize(
    "path, stops",
    [
        (P.VP(), [0.6, 0.2, 1e-3]),
        (P.EDM(), [10.0, 0.5, 0.002]),
        (P.Linear(), [0.5, 0.1, 1e-3]),
        (P.VPCosine(), [0.5, 1e-3]),
        (P.Trig(), [0.4, 1e-3]),
    ],
    ids=lambda v: repr(v) if isinstance(v, P.Path) else "",
)
def test_gaussian_flow_map_matches_ode_solve(path, stops):
    T = path.t_max
    g = torch.Generator().manual_seed(1)
    x0 = GAUSS3.sample(4, generator=g)
    x_T = float(path.alpha(T)) * x0 + float(path.sigma(T)) * torch.randn(
        4, 3, generator=g, dtype=torch.float64
    )
    ode = _ode_solve(GAUSS3, path, x_T.numpy(), T, stops)
    for k, t in enumerate(stops):
        exact = GAUSS3.flow_map(x_T, T, t, path)
        assert exact.shape == x_T.shape and exact.dtype == torch.float64
        np.testing.assert_allclose(exact.numpy(), ode[k], rtol=1e-8, atol=1e-8)


def test_flow_map_identity_and_composition():
    path = P.VP()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(GAUSS3.flow_map(x, 0.7, 0.7, path), x, rtol=1e-14, atol=1e-14)
    two = GAUSS3.flow_map(GAUSS3.flow_map(x, 0.9, 0.4, path), 0.4, 0.05, path)
    torch.testing.assert_close(two, GAUSS3.flow_map(x, 0.9, 0.05, path), rtol=1e-12, atol=1e-12)
    # per-sample times and extra trailing dimensions
    xb = x.reshape(5, 3, 1)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    out = GAUSS3.flow_map(xb, 0.9, t, path)
    assert out.shape == (5, 3, 1)
    for i in range(5):
        torch.testing.assert_close(out[i, :, 0], GAUSS3.flow_map(x[i : i + 1], 0.9, float(t[i]), path)[0])


# ---------------------------------------------------------------------------------------------
# denoisers vs Monte-Carlo posterior means and vs direct linear algebra
# ---------------------------------------------------------------------------------------------


def _gmm_prior_draws(n: int, rng) -> np.ndarray:
    w, m, v = GMM2.weights.numpy(), GMM2.means.numpy(), GMM2.variances.numpy()
    k = rng.choice(len(w), size=n, p=w)
    return m[k] + np.sqrt(v[k]) * rng.standard_normal((n, m.shape[1]))


def _mc_posterior_mean(x0_draws: np.ndarray, x: np.ndarray, a: float, s: float):
    """Self-normalised importance estimate of E[x0 | x_t = x] and its standard error."""
    logw = -0.5 * ((x[None, :] - a * x0_draws) ** 2).sum(1) / s**2
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = (w[:, None] * x0_draws).sum(0)
    se = np.sqrt((w[:, None] ** 2 * (x0_draws - mean) ** 2).sum(0))
    return mean, se


@pytest.mark.parametrize("which", ["gmm", "gaussian"])
@pytest.mark.parametrize("path, t", [(P.VP(), 0.3), (P.EDM(), 0.6), (P.Linear(), 0.45)])
def test_denoiser_matches_monte_carlo_posterior_mean(which, path, t):
    rng = np.random.default_rng(1234)
    n = 300_000
    if which == "gmm":
        target, draws = GMM2, _gmm_prior_draws(n, rng)
    else:
        target, draws = GAUSS2, rng.multivariate_normal(GAUSS2_MEAN, GAUSS2_COV, size=n)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    # query points from the marginal at t
    q0 = draws[:6] if which == "gmm" else rng.multivariate_normal(GAUSS2_MEAN, GAUSS2_COV, size=6)
    xq = a * q0 + s * rng.standard_normal(q0.shape)
    pool = draws[6:]
    x0_exact, eps_exact = target.x0_eps(torch.from_numpy(xq), t, path)
    for i in range(len(xq)):
        mc, se = _mc_posterior_mean(pool, xq[i], a, s)
        assert np.all(se < 0.02), se
        assert np.all(np.abs(x0_exact[i].numpy() - mc) <= 5 * se + 1e-12), (x0_exact[i], mc, se)
        # E[eps | x] = (x - a E[x0 | x]) / s
        mc_eps, se_eps = (xq[i] - a * mc) / s, a * se / s
        assert np.all(np.abs(eps_exact[i].numpy() - mc_eps) <= 5 * se_eps + 1e-12)


@pytest.mark.parametrize("path", [P.VP(), P.EDM(), P.Linear(), P.VPDiscrete.ddpm(), P.SubVP()], ids=repr)
def test_gaussian_denoiser_matches_linear_algebra(path):
    mu, cov = GAUSS3.mean, GAUSS3.cov
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    t = torch.tensor([0.2, 0.35, 0.5, 0.8], dtype=torch.float64) * (path.t_max if path.t_max < 2 else 2.0)
    x0h, epsh = GAUSS3.x0_eps(x, t, path)
    for i in range(4):
        a, s = float(path.alpha(t[i])), float(path.sigma(t[i]))
        m = a * a * cov + s * s * torch.eye(3, dtype=torch.float64)
        r = torch.linalg.solve(m, x[i] - a * mu)
        torch.testing.assert_close(x0h[i], mu + a * cov @ r, rtol=1e-11, atol=1e-12)
        torch.testing.assert_close(epsh[i], s * r, rtol=1e-11, atol=1e-12)
        torch.testing.assert_close(a * x0h[i] + s * epsh[i], x[i], rtol=1e-12, atol=1e-12)


def test_single_component_mixture_equals_diagonal_gaussian():
    mean = torch.tensor([0.4, -0.2, 1.1], dtype=torch.float64)
    var = torch.tensor([0.5, 1.3, 0.2], dtype=torch.float64)
    gmm = GaussianMixture([1.0], mean[None], var[None])
    gauss = Gaussian(mean, torch.diag(var))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    path = P.VPCosine()
    for t in (0.01, 0.5, 0.9):
        for u, v in zip(gmm.x0_eps(x, t, path), gauss.x0_eps(x, t, path)):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(
            gmm.log_prob(x, t, path), gauss.log_prob(x, t, path), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(gmm.score(x, t, path), gauss.score(x, t, path), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# densities and scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, t", [(P.VP(), 0.3), (P.EDM(), 2.5), (P.Linear(), 0.7), (P.VE(), 0.5)])
def test_gaussian_log_prob_matches_torch_distributions(path, t):
    a, s = float(path.alpha(t)), float(path.sigma(t))
    ref = MultivariateNormal(a * GAUSS3.mean, a * a * GAUSS3.cov + s * s * torch.eye(3, dtype=torch.float64))
    x = ref.sample((7,))
    torch.testing.assert_close(GAUSS3.log_prob(x, t, path), ref.log_prob(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path, t", [(P.VP(), 0.3), (P.EDM(), 0.8), (P.Trig(), 0.6)])
def test_gmm_log_prob_matches_torch_distributions(path, t):
    a, s = float(path.alpha(t)), float(path.sigma(t))
    comp = Independent(Normal(a * GMM2.means, torch.sqrt(a * a * GMM2.variances + s * s)), 1)
    ref = MixtureSameFamily(Categorical(probs=GMM2.weights), comp)
    x = ref.sample((9,))
    torch.testing.assert_close(GMM2.log_prob(x, t, path), ref.log_prob(x), rtol=1e-12, atol=1e-12)


def test_log_prob_with_per_sample_times():
    path = P.VP()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    lp = GMM2.log_prob(x, t, path)
    for i in range(3):
        torch.testing.assert_close(lp[i : i + 1], GMM2.log_prob(x[i : i + 1], float(t[i]), path))


@pytest.mark.parametrize("target", [GAUSS3, GMM2, GAUSS2], ids=repr)
@pytest.mark.parametrize("path, t", [(P.VP(), 0.05), (P.VP(), 0.6), (P.EDM(), 1.5), (P.Linear(), 0.3)])
def test_score_is_gradient_of_log_prob(target, path, t):
    x = torch.randn(
        5, target.d, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    ).requires_grad_()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(target.log_prob(x, t, path).sum(), x)
    torch.testing.assert_close(target.score(x.detach(), t, path), grad, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# denoiser(), moments and sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [GAUSS3, GMM2], ids=repr)
@pytest.mark.parametrize("path", [P.VP(), P.EDM(), P.Linear()], ids=repr)
def test_target_denoiser_equals_x0_eps(target, path):
    den = target.denoiser(path)
    assert isinstance(den, pfode.Denoiser)
    assert den.path is path and den.prediction == "x0"
    x = torch.randn(4, target.d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for t in (
        path.t_min * 3,
        0.5 * (path.t_min + path.t_max),
        torch.tensor([0.1, 0.2, 0.3, 0.4]) * path.t_max,
    ):
        got = den(x, t)
        want = target.x0_eps(x, t, path)
        for u, v in zip(got, want):
            assert u.dtype == torch.float64
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


def test_mixture_mean_cov_closed_form():
    w, m, v = GMM2.weights.numpy(), GMM2.means.numpy(), GMM2.variances.numpy()
    mu = (w[:, None] * m).sum(0)
    second = sum(wk * (np.diag(vk) + np.outer(mk, mk)) for wk, mk, vk in zip(w, m, v))
    mean, cov = GMM2.mean_cov()
    np.testing.assert_allclose(mean.numpy(), mu, rtol=1e-14)
    np.testing.assert_allclose(cov.numpy(), second - np.outer(mu, mu), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("target", [GAUSS3, GMM2], ids=repr)
def test_sample_moments(target):
    n = 40_000
    x = target.sample(n, generator=torch.Generator().manual_seed(8))
    assert x.shape == (n, target.d) and x.dtype == torch.float64
    mean, cov = (target.mean, target.cov) if isinstance(target, Gaussian) else target.mean_cov()
    sd = torch.sqrt(torch.diag(cov))
    assert bool(((x.mean(0) - mean).abs() < 5 * sd / math.sqrt(n)).all())
    emp = torch.cov(x.T)
    assert bool(((emp - cov).abs() < 6 * torch.outer(sd, sd) * math.sqrt(2.0 / n)).all())


def test_random_mixture_is_valid():
    gmm = GaussianMixture.random(d=4, k=5, std_range=(0.1, 0.5), generator=torch.Generator().manual_seed(9))
    assert gmm.k == 5 and gmm.d == 4
    assert abs(float(gmm.weights.sum()) - 1) < 1e-12 and bool((gmm.weights > 0).all())
    assert bool((gmm.variances >= 0.01 - 1e-12).all() & (gmm.variances <= 0.25 + 1e-12).all())


def test_isotropic_variances():
    gmm = GaussianMixture([0.25, 0.75], [[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]], [0.5, 2.0])
    torch.testing.assert_close(gmm.variances, torch.tensor([[0.5] * 3, [2.0] * 3], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_gaussian_bad_input():
    with pytest.raises(ValueError, match="mean"):
        Gaussian(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="cov"):
        Gaussian(torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="cov must be positive definite"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="cov must be positive definite"):
        Gaussian(torch.zeros(2), torch.diag(torch.tensor([1.0, -0.5])))
    with pytest.raises(ValueError, match="cov must be symmetric"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="finite"):
        Gaussian(torch.tensor([0.0, math.nan]), torch.eye(2))


def test_mixture_bad_input():
    m = [[0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="variances must be > 0"):
        GaussianMixture([0.5, 0.5], m, [[1.0, -0.1], [1.0, 1.0]])
    with pytest.raises(ValueError, match="variances must be > 0"):
        GaussianMixture([0.5, 0.5], m, [0.0, 1.0])
    with pytest.raises(ValueError, match="weights must sum to 1"):
        GaussianMixture([0.5, 0.6], m, [1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be non-negative"):
        GaussianMixture([1.5, -0.5], m, [1.0, 1.0])
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture([[0.5, 0.5]], m, [1.0, 1.0])
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture([0.2, 0.3, 0.5], m, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture([0.5, 0.5], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="variances must have shape"):
        GaussianMixture([0.5, 0.5], m, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="variances must have shape"):
        GaussianMixture([0.5, 0.5], m, [1.0, 1.0, 1.0])  # [K + 1] isotropic variances
    with pytest.raises(ValueError, match="finite"):
        GaussianMixture([0.5, 0.5], m, [1.0, math.inf])
    with pytest.raises(ValueError, match="std_range"):
        GaussianMixture.random(2, 2, std_range=(0.5, 0.1))


def test_target_bad_x_t_n():
    with pytest.raises(ValueError, match="x has 2 features"):
        GAUSS3.x0_eps(torch.zeros(4, 2), 0.5, P.VP())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        GMM2.log_prob(np.zeros((4, 2)), 0.5, P.VP())
    with pytest.raises(ValueError, match="t must"):
        GMM2.x0_eps(torch.zeros(4, 2), torch.tensor([0.1, 0.2]), P.VP())
    with pytest.raises(ValueError, match="n="):
        GMM2.sample(0)
    with pytest.raises(TypeError, match="n must"):
        GAUSS3.sample(2.5)
