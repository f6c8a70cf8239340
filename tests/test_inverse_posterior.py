"""The exact posterior of analytic priors under linear Gaussian measurements, and the measurement operators."""

import pytest
import torch

from pfode import analytic
from pfode.inverse import Blur, Downsample, Inpaint, MatrixOperator, Nonlinear, RandomProjection, posterior


def _ops(g):
    return [
        Inpaint.random((1, 4, 4), 0.5, generator=g),
        Downsample((1, 4, 4), 2),
        Blur((1, 4, 4), std=0.8),
        RandomProjection((16,), 5, seed=1),
        Downsample(16, 4),
    ]


def test_operators_equal_their_matrices_and_adjoints():
    g = torch.Generator().manual_seed(0)
    for op in _ops(g):
        a = op.matrix()
        x = torch.randn(3, *op.shape, dtype=torch.float64, generator=g)
        y = op(x)
        assert y.shape == (3, op.m) == (3, a.shape[0]), op
        torch.testing.assert_close(y, x.reshape(3, -1) @ a.T, rtol=1e-12, atol=1e-12)
        v = torch.randn(3, op.m, dtype=torch.float64, generator=g)
        # <A x, v> = <x, A^T v>
        lhs, rhs = (y * v).sum(), (x * op.adjoint(v)).sum()
        assert float((lhs - rhs).abs()) < 1e-10, op
        u, s, vt = op.svd()
        torch.testing.assert_close(u @ torch.diag(s) @ vt.T, a, rtol=1e-10, atol=1e-10)


def test_posterior_matches_brute_force_importance_sampling():
    """Prior samples weighted by the measurement likelihood converge to the posterior: mean, covariance and the
    mixture weights (the fraction of weight per prior component)."""
    g = torch.Generator().manual_seed(1)
    target = analytic.GaussianMixture.random(4, 3, generator=g)
    op = RandomProjection((4,), 2, noise=0.3, seed=2)
    y = op.measure(target.sample(1, generator=g), generator=g)[0]
    post = posterior(target, op, y)
    n = 400_000
    idx = torch.multinomial(target.weights, n, replacement=True, generator=g)
    xs = target.means[idx] + torch.randn(n, 4, dtype=torch.float64, generator=g) * target.variances[idx].sqrt()
    w = torch.softmax(-0.5 * ((op(xs) - y) ** 2).sum(1) / op.noise**2, 0)
    mean = (w[:, None] * xs).sum(0)
    cov = (w[:, None, None] * (xs - mean)[:, :, None] * (xs - mean)[:, None, :]).sum(0)
    comp = torch.zeros(3, dtype=torch.float64).index_add_(0, idx, w)
    assert float((post.mean() - mean).abs().max()) < 0.01
    assert float((post.cov() - cov).abs().max()) < 0.01
    assert float((post.weights - comp).abs().max()) < 0.01
    # the evidence: log p(y) against the prior-sample average of the likelihood
    lik = torch.exp(-0.5 * ((op(xs) - y) ** 2).sum(1) / op.noise**2) / (2 * torch.pi * op.noise**2)
    assert post.log_evidence == pytest.approx(float(torch.log(lik.mean())), abs=0.02)


def test_posterior_samples_density_and_intervals_agree():
    g = torch.Generator().manual_seed(3)
    target = analytic.GaussianMixture.random(3, 2, generator=g)
    op = MatrixOperator(torch.tensor([[1.0, 0.5, 0.0]]), noise=0.2)
    post = posterior(target, op, torch.tensor([0.4]))
    s = post.sample(100_000, generator=g)
    torch.testing.assert_close(s.mean(0), post.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), post.cov(), atol=0.01, rtol=0)
    lo, hi = post.credible_interval(0.8)
    inside = ((s > lo) & (s < hi)).double().mean(0)
    assert float((inside - 0.8).abs().max()) < 0.01, inside
    # the log-density integrates to 1: E_q[p / q] over a wide Gaussian proposal
    q = torch.distributions.MultivariateNormal(post.mean(), 4 * post.cov() + 0.1 * torch.eye(3, dtype=torch.float64))
    z = q.sample((200_000,))
    assert float(torch.exp(post.log_prob(z) - q.log_prob(z)).mean()) == pytest.approx(1.0, abs=0.02)


def test_gaussian_prior_posterior_is_the_kalman_update_and_pins_observed_entries():
    mean, cov = torch.tensor([0.0, 1.0, -1.0, 2.0]), torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    op = Inpaint(torch.tensor([True, False, True, False]))  # noise 0: the observed entries are pinned
    post = analytic.posterior(analytic.Gaussian(mean, cov), op, torch.tensor([0.3, -0.7]))
    torch.testing.assert_close(post.mean(), torch.tensor([0.3, 1.0, -0.7, 2.0], dtype=torch.float64))
    torch.testing.assert_close(post.cov().diagonal(), torch.tensor([0.0, 2.0, 0.0, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="degenerate"):
        post.log_prob(torch.zeros(1, 4))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="noise"):
        Downsample(16, 4, noise=-1.0)
    with pytest.raises(ValueError, match="factor=3"):
        Downsample((1, 4, 4), 3)
    with pytest.raises(ValueError, match="x must have shape"):
        Downsample(16, 4)(torch.zeros(2, 8))
    with pytest.raises(TypeError, match="linear"):
        posterior(analytic.Gaussian(torch.zeros(2), torch.eye(2)), Nonlinear(lambda x: x**2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="dimension"):
        posterior(analytic.Gaussian(torch.zeros(3), torch.eye(3)), Downsample(16, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="keep"):
        Inpaint.random(8, 1.5)
    # through solve(): a NaN measurement, a measurement of the wrong size, an operator of another shape
    from pfode.inverse import solve
    from pfode.paths import VP

    den = analytic.Gaussian(torch.zeros(16), torch.eye(16)).denoiser(VP())
    op = Downsample(16, 4, noise=0.1)
    with pytest.raises(ValueError, match="NaN"):
        solve(den, torch.full((2, 4), float("nan")), op, "ddrm", nfe=2)
    with pytest.raises(ValueError, match="m=4"):
        solve(den, torch.zeros(2, 5), op, "ddrm", nfe=2)
    with pytest.raises(ValueError, match="x_T must have shape"):
        solve(den, torch.zeros(2, 4), op, "ddrm", nfe=2, x_T=torch.zeros(2, 8))
