"""The posterior-sampling methods of pfode.inverse (DPS, PiGDM, DDRM, RED-diff) against the exact posterior."""

import pytest
import torch

from pfode import analytic
from pfode.inverse import Inpaint, MatrixOperator, Nonlinear, RandomProjection, posterior, solve
from pfode.paths import EDM, VP, Linear, Trig
from pfode.predictions import Coeffs, Denoiser, from_x0_eps

MINE = ("dps", "pigdm", "ddrm", "reddiff")
GRADS = {"dps": True, "pigdm": True, "ddrm": False, "reddiff": False}
CASES = [(VP(), "eps"), (Linear(), "velocity"), (EDM(), "x0"), (Trig(), "v")]


def _den(target, path, prediction):
    """The exact denoiser of ``target`` on ``path``, as a network of type ``prediction``."""

    def net(x, t):
        x0, eps = target.x0_eps(x, t, path)
        return from_x0_eps(prediction, x0, eps, Coeffs.at(path, t, like=x))

    return Denoiser(net, path, prediction)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("path,prediction", CASES, ids=["vp-eps", "linear-velocity", "edm-x0", "trig-v"])
def test_every_method_runs_counts_and_fits_the_measurement(path, prediction):
    """On a GMM prior: finite samples of the right shape, nfe and gradient counts as documented, and a smaller
    measurement error than unconditional prior samples."""
    g = _gen(0)
    target = analytic.GaussianMixture.random(8, 3, std_range=(0.2, 0.6), generator=g)
    op = Inpaint.random((8,), 0.5, noise=0.1, generator=g)
    y = op.measure(target.sample(1, generator=g), generator=g)[0]
    prior_err = (op(target.sample(64, generator=g)) - y).norm(dim=1).mean()
    den = _den(target, path, prediction)
    options = {"dps": {"zeta": 0.5}}  # DPS's strength grows with zeta * steps
    for method in MINE:
        out = solve(den, y, op, method=method, nfe=12, n=64, generator=_gen(1), **options.get(method, {}))
        assert out.x.shape == (64, 8) and bool(torch.isfinite(out.x).all()), method
        assert out.nfe == 12, method
        assert out.grad_evals == (12 if GRADS[method] else 0), method
        err = (op(out.x) - y).norm(dim=1).mean()
        assert float(err) < 0.6 * float(prior_err), (method, float(err), float(prior_err))
        assert float((out.info["residual"] - (op(out.x) - y).norm(dim=1)).abs().max()) < 1e-10, method


@pytest.mark.parametrize("path", [VP(), EDM()], ids=["vp", "edm"])
def test_pigdm_is_exact_in_the_mean_for_a_unit_gaussian_prior(path):
    """With a N(mu, I) prior the paper's r_t^2 is Var[x0 | x_t], so the guided x0 is E[x0 | x_t, y] and the sample
    mean is the posterior mean at any nfe; with eta = 0 the covariance converges as nfe grows."""
    g = _gen(2)
    d = 6
    prior = analytic.Gaussian(torch.randn(d, dtype=torch.float64, generator=g), torch.eye(d, dtype=torch.float64))
    op = RandomProjection((d,), 3, noise=0.3, seed=4)
    y = op.measure(prior.sample(1, generator=g), generator=g)[0]
    post = posterior(prior, op, y)
    den = prior.denoiser(path)
    n = 4000
    out = solve(den, y, op, method="pigdm", nfe=8, n=n, generator=_gen(3))
    se = (post.cov().diagonal() / n).sqrt()
    assert float(((out.x.mean(0) - post.mean()).abs() / se).max()) < 4.5
    cov_err = []
    for nfe in (10, 80):
        out = solve(den, y, op, method="pigdm", nfe=nfe, n=n, eta=0.0, generator=_gen(3))
        cov_err.append(float((torch.cov(out.x.T) - post.cov()).abs().max()))
    assert cov_err[1] < 0.05 and cov_err[1] < 0.5 * cov_err[0], cov_err


def test_ddrm_identity_without_noise_returns_y():
    g = _gen(5)
    target = analytic.GaussianMixture.random(5, 2, generator=g)
    op = MatrixOperator(torch.eye(5, dtype=torch.float64))
    y = target.sample(3, generator=g)
    for path, prediction in CASES:
        out = solve(_den(target, path, prediction), y, op, method="ddrm", nfe=4)
        assert float((out.x - y).abs().max()) < 1e-12, (path, prediction)


def test_ddrm_noiseless_inpainting_pins_y_and_converges_to_the_posterior_with_eta_0():
    """Diagonal Gaussian prior, noise-free inpainting: the observed entries equal y exactly; the unobserved ones have
    the posterior (= prior) mean at any eta, and with eta = 0 (DDIM) their variance converges to the posterior's."""
    g = _gen(6)
    d = 8
    prior = analytic.Gaussian(
        torch.randn(d, dtype=torch.float64, generator=g),
        torch.diag(torch.rand(d, dtype=torch.float64, generator=g) + 0.3),
    )
    mask = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    op = Inpaint(mask)
    y = op(prior.sample(1, generator=g))[0]
    post = posterior(prior, op, y)
    den = prior.denoiser(Linear())
    n = 4000
    se = (post.cov().diagonal()[~mask] / n).sqrt()
    var_err = []
    for eta, nfe in ((0.85, 10), (0.0, 10), (0.0, 100)):
        out = solve(den, y, op, method="ddrm", nfe=nfe, n=n, eta=eta, generator=_gen(7))
        assert float((op(out.x) - y).abs().max()) == 0.0
        assert float(((out.x.mean(0) - post.mean())[~mask].abs() / se).max()) < 4.5, (eta, nfe)
        var_err.append(float((out.x.var(0) / post.cov().diagonal() - 1)[~mask].abs().max()))
    assert var_err[2] < 0.12 and var_err[2] < 0.25 * var_err[1] < var_err[0], var_err


def test_dps_and_reddiff_take_a_nonlinear_operator():
    g = _gen(8)
    target = analytic.GaussianMixture.random(4, 2, std_range=(0.3, 0.6), generator=g)
    op = Nonlinear(lambda x: torch.tanh(x[:, :2]) + x[:, 2:] ** 2, (4,), noise=0.05)
    y = op.measure(target.sample(1, generator=g), generator=g)[0]
    prior_err = float((op(target.sample(200, generator=g)) - y).norm(dim=1).mean())
    den = target.denoiser(VP())
    for method, opts in (("dps", {"zeta": 0.03}), ("reddiff", {})):
        out = solve(den, y, op, method=method, nfe=40, n=32, generator=_gen(9), **opts)
        assert bool(torch.isfinite(out.x).all())
        assert float(out.info["residual"].mean()) < 0.6 * prior_err, method


def test_bad_input_is_rejected_with_a_clear_error():
    g = _gen(10)
    target = analytic.GaussianMixture.random(4, 2, generator=g)
    den = target.denoiser(VP())
    nonlin = Nonlinear(lambda x: x[:, :2] ** 2, (4,))
    for method in ("ddrm", "pigdm"):
        with pytest.raises(ValueError, match=f"{method}.*Nonlinear"):
            solve(den, torch.zeros(2), nonlin, method=method, nfe=3)
    op = Inpaint.random((4,), 0.5, noise=0.1, generator=g)
    y = torch.zeros(op.m)
    for method, bad in (
        ("dps", {"zeta": -1.0}),
        ("dps", {"eta": 1.5}),
        ("pigdm", {"data_var": 0.0}),
        ("ddrm", {"eta_b": 2.0}),
        ("reddiff", {"lr": 0.0}),
        ("ddrm", {"spacing": "nope"}),
    ):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            solve(den, y, op, method=method, nfe=3, **bad)
    detached = Denoiser(lambda x, t: target.x0_eps(x, t, den.path)[0].detach(), den.path, "x0")
    for method in ("dps", "pigdm"):
        with pytest.raises(ValueError, match=f"{method}.*gradients"):
            solve(detached, y, op, method=method, nfe=3)
    # the gradient-free methods run on the same network
    for method in ("ddrm", "reddiff"):
        assert bool(torch.isfinite(solve(detached, y, op, method=method, nfe=3).x).all())


def test_pigdm_snr_weighting_damps_high_noise_guidance():
    """``weighting="snr"`` multiplies the Bayes weight by ``alpha^2 / (alpha^2 + sigma^2)``: still finite and still
    fitting the measurement on the exact denoiser; an unknown weighting is named."""
    path = VP()
    target = analytic.GaussianMixture.random(8, 3, generator=torch.Generator().manual_seed(0))
    op = Inpaint.random(8, 0.5, noise=0.05, generator=torch.Generator().manual_seed(1))
    x = target.sample(16, generator=torch.Generator().manual_seed(2))
    y = op.measure(x, generator=torch.Generator().manual_seed(3))
    out = {
        w: solve(target.denoiser(path), y, op, "pigdm", nfe=20, weighting=w,
                         generator=torch.Generator().manual_seed(4)).x
        for w in ("bayes", "snr")
    }
    for w, xr in out.items():
        assert bool(torch.isfinite(xr).all()) and float((op(xr) - y).norm(dim=1).mean()) < 0.5 * float(
            (op(target.sample(16, generator=torch.Generator().manual_seed(5))) - y).norm(dim=1).mean()
        ), w
    assert not torch.allclose(out["bayes"], out["snr"])
    with pytest.raises(ValueError, match="weighting"):
        solve(target.denoiser(path), y, op, "pigdm", nfe=4, weighting="paper")
