"""Entropy production and probability current (pfode.physics) against the closed-form Ornstein-Uhlenbeck system."""

from __future__ import annotations

import math

import pytest
import torch

from pfode import analytic, paths
from pfode.physics import (
    OrnsteinUhlenbeck,
    current_velocity,
    entropy_production_rate,
    probability_current,
    score_from_denoiser,
    solve_lyapunov,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _driven(d=3, seed=0, drive=1.0):
    return OrnsteinUhlenbeck.random(d, drive=drive, generator=_gen(seed))


# --- closed forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 5, 8])
def test_lyapunov_residual_and_kronecker(d):
    g = _gen(d)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) + 2 * d**0.5 * torch.eye(d, dtype=torch.float64)
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    ou = OrnsteinUhlenbeck(A, B @ B.T + 0.1 * torch.eye(d, dtype=torch.float64))
    S = ou.cov
    res = ou.A @ S + S @ ou.A.T - 2 * ou.D
    assert float(res.abs().max()) < 1e-11 * float(ou.D.abs().max())
    # an independent solve: (I kron A + A kron I) vec(S) = vec(2 D) (column-major vec)
    eye = torch.eye(d, dtype=torch.float64)
    K = torch.kron(eye, ou.A) + torch.kron(ou.A, eye)
    S2 = torch.linalg.solve(K, (2 * ou.D).T.reshape(-1)).reshape(d, d).T
    assert torch.allclose(S, S2, rtol=1e-9, atol=1e-12)
    assert torch.allclose(S, S.T) and float(torch.linalg.eigvalsh(S).min()) > 0
    assert torch.allclose(solve_lyapunov(ou.A, 2 * ou.D), S)


def test_circulation_is_antisymmetric_and_driven_roundtrip():
    g = _gen(3)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    cov = (q * torch.tensor([0.3, 0.7, 1.0, 2.5], dtype=torch.float64)) @ q.T
    G = torch.randn(4, 4, generator=g, dtype=torch.float64)
    Q = G - G.T
    D = torch.diag(torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
    ou = OrnsteinUhlenbeck.driven(cov, D, Q)
    assert torch.allclose(ou.cov, cov, atol=1e-11)
    assert torch.allclose(ou.circulation, Q, atol=1e-10)
    assert torch.allclose(ou.circulation, -ou.circulation.T, atol=1e-10)
    # the velocity is -Q S^{-1} x (closed form) and the score -S^{-1} x
    x = ou.sample(7, _gen(1))
    assert torch.allclose(ou.velocity(x), -x @ (Q @ torch.linalg.inv(cov)).T, atol=1e-10)


@pytest.mark.parametrize("d,drive", [(2, 1.0), (3, 0.5), (6, 2.0)])
def test_entropy_production_trace_forms_and_monte_carlo(d, drive):
    ou = _driven(d, seed=d, drive=drive)
    pi = ou.entropy_production_rate()
    assert pi > 0
    assert math.isclose(pi, ou.entropy_production_rate_circulation(), rel_tol=1e-10)
    assert math.isclose(pi, ou.entropy_production_rate(ou.precision), rel_tol=1e-10)
    x = ou.sample(100_000, _gen(10 + d))
    local = entropy_production_rate(ou.score, ou.drift, ou.D, x, per_sample=True)
    assert local.shape == (x.shape[0],) and bool((local >= 0).all())
    err = abs(float(local.mean()) - pi)
    assert err < 4.0 * float(local.std()) / math.sqrt(x.shape[0])
    # a wrong score (zero) gives the drift's energy instead, far from Pi
    wrong = float(entropy_production_rate(torch.zeros_like, ou.drift, ou.D, x))
    assert abs(wrong - pi) > 20 * float(local.std()) / math.sqrt(x.shape[0])


def test_reversible_system_has_zero_entropy_production():
    g = _gen(5)
    d = 4
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    D = B @ B.T + 0.5 * torch.eye(d, dtype=torch.float64)
    C = torch.randn(d, d, generator=g, dtype=torch.float64)
    H = C @ C.T + torch.eye(d, dtype=torch.float64)
    ou = OrnsteinUhlenbeck(D @ H, D)  # A = D H: not symmetric, yet in detailed balance
    assert not torch.allclose(ou.A, ou.A.T)
    assert ou.reversible
    assert torch.allclose(ou.cov, torch.linalg.inv(H), atol=1e-10)
    assert abs(ou.entropy_production_rate()) < 1e-9 * float(torch.trace(ou.A))
    x = ou.sample(1000, g)
    assert float(ou.velocity(x).abs().max()) < 1e-9 * float(x.abs().max())
    assert abs(float(entropy_production_rate(ou.score, ou.drift, D, x))) < 1e-15
    assert not _driven(4, drive=0.3).reversible


def test_current_is_divergence_free_pointwise():
    ou = _driven(3, seed=2, drive=1.5)
    x = ou.sample(64, _gen(3)).requires_grad_(True)
    j = ou.current(x)
    div = sum(torch.autograd.grad(j[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3))
    scale = torch.exp(ou.log_prob(x)).detach() * ou.velocity(x).detach().norm(dim=1) / ou.cov.diag().sqrt().min()
    assert float((div.abs() / scale).max()) < 1e-10
    # the drift alone is not a stationary flux: div(b p) != 0
    bp = ou.drift(x) * torch.exp(ou.log_prob(x))[:, None]
    div_b = sum(torch.autograd.grad(bp[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3))
    assert float((div_b.abs() / scale).max()) > 1e-2


def test_current_is_divergence_free_in_law():
    """E_p[v . grad f] = -int f div(p v) = 0 for test functions f (Monte Carlo; the drift alone fails it)."""
    ou = _driven(2, seed=4, drive=1.0)
    x = ou.sample(200_000, _gen(6))
    w = torch.tensor([0.9, -1.3], dtype=torch.float64)
    c = torch.tensor([0.4, 0.7], dtype=torch.float64)

    def grad_f(x):  # f = sin(w . x) + cos(c . x) + (c . x)^4 + x_0^2 x_1
        return (
            torch.cos(x @ w)[:, None] * w
            - torch.sin(x @ c)[:, None] * c
            + 4 * (x @ c)[:, None] ** 3 * c
            + torch.stack([2 * x[:, 0] * x[:, 1], x[:, 0] ** 2], 1)
        )

    g = grad_f(x)
    for v, expect_zero in ((current_velocity(ou.score, ou.drift, ou.D, x), True), (ou.drift(x), False)):
        terms = (v * g).sum(1)
        z = float(terms.mean()) / (float(terms.std()) / math.sqrt(x.shape[0]))
        assert (abs(z) < 4.0) if expect_zero else (abs(z) > 10.0), z


def test_probability_current_with_density_matches_exact():
    ou = _driven(3, seed=7)
    x = ou.sample(50, _gen(8))
    j = probability_current(ou.score, ou.drift, ou.D, x, density=lambda y: torch.exp(ou.log_prob(y)))
    assert torch.allclose(j, ou.current(x), rtol=1e-12, atol=1e-15)
    assert torch.allclose(probability_current(ou.score, ou.drift, ou.D, x), ou.velocity(x))


def test_euler_maruyama_reaches_its_stationary_covariance():
    ou = _driven(2, seed=9, drive=1.0)
    dt = 0.05
    x = ou.simulate(ou.sample(20_000, _gen(1)), dt, 200, generator=_gen(2))
    emp = torch.cov(x.T)
    C = ou.em_cov(dt)
    # sampling error of a covariance entry ~ sqrt((C_ii C_jj + C_ij^2) / n); 5 standard errors
    se = torch.sqrt((torch.outer(C.diag(), C.diag()) + C * C) / x.shape[0])
    assert bool(((emp - C).abs() < 5 * se).all())
    # em_cov is S + O(dt)
    e1 = float((ou.em_cov(1e-2) - ou.cov).abs().max())
    e2 = float((ou.em_cov(5e-3) - ou.cov).abs().max())
    assert 1.8 < e1 / e2 < 2.2
    traj = ou.simulate(x[:3], dt, 4, generator=_gen(3), return_trajectory=True)
    assert traj.shape == (5, 3, 2) and torch.equal(traj[0], x[:3])


# --- the score of a denoiser at small noise -------------------------------------------------
@pytest.mark.parametrize("path", [paths.VP(), paths.EDM(), paths.Linear()], ids=repr)
def test_score_from_exact_denoiser_is_the_smoothed_score(path):
    ou = _driven(3, seed=11)
    target = analytic.Gaussian(torch.zeros(3, dtype=torch.float64), ou.cov)
    den = target.denoiser(path)
    x = ou.sample(32, _gen(12))
    errs = []
    for t in (path.t_min, 2 * path.t_min, 4 * path.t_min):
        score = score_from_denoiser(den, t)
        s = float(path.sigma(t) / path.alpha(t))
        assert math.isclose(score.s, s, rel_tol=1e-12)
        got = score(x)
        assert torch.allclose(got, ou.smoothed_score(x, s), rtol=1e-8, atol=1e-10)
        errs.append(float((got - ou.score(x)).norm() / ou.score(x).norm()))
    # the bias is O(s^2); s is ~linear in t near t_min on these paths except VP (s ~ sqrt(t)), so the ratio of
    # the bias to s^2 must stay constant
    ss = [float(path.sigma(t) / path.alpha(t)) ** 2 for t in (path.t_min, 2 * path.t_min, 4 * path.t_min)]
    ratios = [e / q for e, q in zip(errs, ss)]
    assert max(ratios) / min(ratios) < 1.05
    assert errs[0] < errs[1] < errs[2]


def test_entropy_production_bias_of_smoothed_score_vanishes():
    """For a score error that is a gradient, d = grad g, stationarity E[v . grad g] = 0 gives exactly
    Pi(score + d) = Pi + E[d^T D d]: the smoothed score's bias in Pi is O(s^4), not O(s^2)."""
    ou = _driven(2, seed=13, drive=1.0)
    path = paths.VP()
    den = analytic.Gaussian(torch.zeros(2, dtype=torch.float64), ou.cov).denoiser(path)
    x = ou.sample(20_000, _gen(14))
    pi = ou.entropy_production_rate()
    per_s4 = []
    for t in (0.05, 0.0125):
        score = score_from_denoiser(den, t)
        P = torch.linalg.inv(ou.cov + score.s**2 * torch.eye(2, dtype=torch.float64))
        closed = ou.entropy_production_rate(P)
        dP = ou.precision - P
        assert math.isclose(closed - pi, float(torch.trace(dP @ ou.D @ dP @ ou.cov)), rel_tol=1e-8)
        # the Monte-Carlo estimator with the read-off score converges to that closed form
        local = entropy_production_rate(score, ou.drift, ou.D, x, per_sample=True)
        exact_local = entropy_production_rate(
            lambda y, s=score.s: ou.smoothed_score(y, s), ou.drift, ou.D, x, per_sample=True
        )
        assert torch.allclose(local, exact_local, rtol=1e-8)
        assert abs(float(local.mean()) - closed) < 4 * float(local.std()) / math.sqrt(x.shape[0])
        per_s4.append((closed - pi) / score.s**4)
    assert per_s4[0] > 0 and 0.8 < per_s4[0] / per_s4[1] < 1.05


def test_score_from_denoiser_calls_net_in_dtype():
    ou = _driven(2, seed=15)
    den = analytic.Gaussian(torch.zeros(2, dtype=torch.float64), ou.cov).denoiser(paths.EDM())
    seen = []
    inner = den.net

    def spy(x, t):
        seen.append(x.dtype)
        return inner(x, t).to(x.dtype)

    den.net = spy
    out = score_from_denoiser(den, 0.01, dtype=torch.float32)(ou.sample(4, _gen(1)))
    assert seen == [torch.float32] and out.dtype == torch.float64


# --- errors -------------------------------------------------------------------------------------
def test_errors():
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="D must be a square"):
        OrnsteinUhlenbeck(eye, torch.ones(2, 3))
    with pytest.raises(ValueError, match="D must be positive definite"):
        OrnsteinUhlenbeck(eye, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="D must be symmetric"):
        OrnsteinUhlenbeck(eye, torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="D has shape"):
        OrnsteinUhlenbeck(eye, torch.eye(3))
    with pytest.raises(ValueError, match="A must be stable"):
        OrnsteinUhlenbeck(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), eye)  # eigenvalues +-i
    with pytest.raises(ValueError, match="A must be stable"):
        OrnsteinUhlenbeck(-eye, eye)
    with pytest.raises(ValueError, match="A must be a square"):
        OrnsteinUhlenbeck(torch.ones(2, 3), eye)
    with pytest.raises(TypeError, match="A must be"):
        OrnsteinUhlenbeck("A", eye)
    with pytest.raises(ValueError, match="Q must be antisymmetric"):
        OrnsteinUhlenbeck.driven(eye, eye, eye)
    ou = OrnsteinUhlenbeck(eye, 1.0)
    x = ou.sample(5)
    with pytest.raises(ValueError, match="D has shape"):
        entropy_production_rate(ou.score, ou.drift, torch.eye(3), x)
    with pytest.raises(ValueError, match=r"D=-1.0 must be > 0"):
        current_velocity(ou.score, ou.drift, -1.0, x)
    with pytest.raises(ValueError, match="score_fn"):
        entropy_production_rate(lambda y: y[:, :1], ou.drift, eye, x)
    with pytest.raises(TypeError, match="drift_fn"):
        current_velocity(ou.score, None, eye, x)
    with pytest.raises(ValueError, match=r"x must have shape \[B, d\]"):
        current_velocity(ou.score, ou.drift, eye, x[0])
    with pytest.raises(ValueError, match="density"):
        probability_current(ou.score, ou.drift, eye, x, density=torch.ones(3))
    with pytest.raises(ValueError, match="dt"):
        ou.simulate(x, -0.1, 3)
    with pytest.raises(ValueError, match="too large"):
        ou.em_cov(5.0)
    den = analytic.Gaussian(torch.zeros(2), eye).denoiser(paths.VP())
    with pytest.raises(TypeError, match="den must be a pfode.Denoiser"):
        score_from_denoiser(lambda x, t: x)
    with pytest.raises(ValueError, match="outside the path's range"):
        score_from_denoiser(den, 2.0)
    with pytest.raises(ValueError, match="sigma"):
        score_from_denoiser(den, 0.0)
