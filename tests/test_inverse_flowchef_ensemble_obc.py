"""FlowChef, the approximation-free ensemble sampler and optimal-boundary-condition sampling, on exact denoisers."""

import pytest
import torch

from pfode import Denoiser, analytic, paths
from pfode.inverse import Downsample, Inpaint, MatrixOperator, Nonlinear, posterior, solve
from pfode.inverse.obc import find_boundary
from pfode.predictions import Coeffs, from_x0_eps
from pfode.sample import sample

METHODS = ("flowchef", "ensemble", "obc")


def _wrap(target, path, prediction):
    """The exact denoiser of ``target`` as a network of the given prediction type."""
    base = target.denoiser(path)

    def net(x, t):
        x0, eps = base.pair_at(x, t)
        return from_x0_eps(prediction, x0, eps, Coeffs.at(path, t, like=x))

    return Denoiser(net, path, prediction=prediction)


@pytest.fixture(scope="module")
def gmm():
    return analytic.GaussianMixture.random(16, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path_name,prediction", [("linear", "velocity"), ("vp", "eps")])
def test_methods_reduce_the_measurement_error_and_count_evaluations(gmm, method, path_name, prediction):
    g = torch.Generator().manual_seed(1)
    den = _wrap(gmm, paths.get_path(path_name), prediction)
    ops = [Inpaint.random(16, 0.5, noise=0.05, generator=g), Downsample(16, 4, noise=0.05)]
    for op in ops:
        x0 = gmm.sample(6, generator=g)
        y = op.measure(x0, generator=g)
        prior_err = ((op(gmm.sample(6, generator=g)) - y) ** 2).sum(1).mean()
        opts = {"candidates": 3, "n_reference": 4} if method == "obc" else {}
        out = solve(den, y, op, method, nfe=12, generator=torch.Generator().manual_seed(2), **opts)
        assert out.x.shape == x0.shape and bool(torch.isfinite(out.x).all())
        err = ((op(out.x) - y) ** 2).sum(1).mean()
        assert float(err) < 0.2 * float(prior_err), (method, op, float(err), float(prior_err))
        assert out.nfe == 12 and out.grad_evals == 0  # none of the three backpropagates through the network
        if method == "obc":
            # 3 candidates x 4 references x 12 evaluations, plus the 4 model references (11 steps + denoise)
            assert out.info["search_nfe"] == 3 * 4 * 12 + 4 * 12


def test_flowchef_is_the_ode_without_steering_and_knows_its_path(gmm):
    """lr = 0 leaves the DDIM probability-flow ODE (pfode.sample on the same grid); the rectified-flow path is
    flagged as FlowChef's own, VP is not."""
    for name, pred, native in [("linear", "velocity", True), ("vp", "eps", False)]:
        path = paths.get_path(name)
        den = _wrap(gmm, path, pred)
        op = Inpaint.random(16, 0.5, generator=torch.Generator().manual_seed(3))
        x_T = float(path.sigma(torch.tensor(path.t_max))) * torch.randn(4, 16, dtype=torch.float64)
        y = torch.zeros(4, op.m, dtype=torch.float64)
        out = solve(den, y, op, "flowchef", nfe=8, x_T=x_T, lr=0.0)
        ref = sample(den, x_T, grid=torch.tensor(out.info["times"], dtype=torch.float64), solver="ddim", denoise=True)
        assert float((out.x - ref).abs().max()) < 1e-9
        assert out.info["rectified_flow"] is native
        steered = solve(den, y, op, "flowchef", nfe=8, x_T=x_T, lr=1.0)  # Inpaint: ||A||_2 = 1
        # a full Landweber step at the last time: A x = y on the rectified-flow path (x0 moves by 1/(alpha + sigma)
        # of the state's step elsewhere: VP keeps about sigma(t_min) of the residual)
        tol = 1e-9 if native else 2e-2 * float(op(ref).abs().max())
        assert float(op(steered.x).abs().max()) < tol


def test_ensemble_approaches_the_exact_posterior_as_it_grows():
    """A correlated Gaussian prior, one noisy projection: the ensemble's mean and covariance approach the exact
    posterior's as the ensemble grows, and its evidence estimate approaches log p(y). With a deliberately poor tilt
    (prior_var=0.2) the reweighting still corrects the guided SDE, which alone stays biased."""
    prior = analytic.Gaussian(
        torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    )
    op = MatrixOperator(torch.tensor([[1.0, 1.0]]), noise=0.3)
    y = torch.tensor([1.5], dtype=torch.float64)
    post = posterior(prior, op, y)
    den = _wrap(prior, paths.get_path("vp"), "eps")

    def run(n, seed, **kw):
        out = solve(den, y, op, "ensemble", nfe=50, n=n, generator=torch.Generator().manual_seed(seed), **kw)
        x = out.x
        err = float((x.mean(0) - post.mean()).norm()) + float((torch.cov(x.T) - post.cov()).norm())
        return err, float(out.info["log_evidence"][0])

    small = sum(run(16, s)[0] for s in range(3)) / 3
    large, log_z = run(1536, 0)
    assert large < 0.12, large
    assert large < 0.7 * small, (small, large)
    assert log_z == pytest.approx(post.log_evidence, abs=0.1)
    weighted, unweighted = run(1536, 1, prior_var=0.2)[0], run(1536, 1, prior_var=0.2, reweight=False)[0]
    assert weighted < 0.15 and unweighted > 2 * weighted, (weighted, unweighted)


def test_ensemble_resamples_particles_per_sample_and_on_nonlinear_operators(gmm):
    den = _wrap(gmm, paths.get_path("vp"), "eps")
    op = Nonlinear(lambda x: torch.tanh(x[:, :4]), 16, noise=0.1)
    x0 = gmm.sample(3, generator=torch.Generator().manual_seed(4))
    y = op.measure(x0, generator=torch.Generator().manual_seed(5))
    out = solve(den, y, op, "ensemble", nfe=10, particles=8, generator=torch.Generator().manual_seed(6))
    assert out.x.shape == (3, 16) and bool(torch.isfinite(out.x).all())
    assert out.nfe == 8 * 10 and out.info["groups"].tolist() == [0, 1, 2]
    assert out.info["log_evidence"].shape == (3,)
    assert float(((op(out.x) - y) ** 2).mean()) < float(((op(gmm.sample(3)) - y) ** 2).mean())


def test_find_boundary_keeps_the_best_candidate_and_it_generalises(gmm):
    """The searched x_T has the least reference error of the candidates (recomputed here), and on new
    measurements it is no worse on average than the other candidates."""
    den = _wrap(gmm, paths.get_path("vp"), "eps")
    op = Downsample(16, 4, noise=0.0)
    g = torch.Generator().manual_seed(7)
    ref = gmm.sample(24, generator=g)
    x_T, info = find_boundary(den, op, ref, candidates=6, nfe=8, generator=torch.Generator().manual_seed(8))
    assert info["best"] == int(info["scores"].argmin()) and x_T.shape == (1, 16)
    assert info["search_nfe"] == 6 * 24 * 8
    test = gmm.sample(64, generator=g)
    y = op(test)
    out = solve(den, y, op, "obc", nfe=8, boundary=x_T)
    mse_best = float(((out.x - test) ** 2).mean())
    worst = []
    for c in range(4):
        xc = torch.randn(1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + c))
        o = solve(den, y, op, "obc", nfe=8, boundary=xc * float(den.path.sigma(torch.tensor(den.path.t_max))))
        worst.append(float(((o.x - test) ** 2).mean()))
    assert mse_best <= sum(worst) / len(worst) * 1.05, (mse_best, worst)


def test_bad_options_are_named(gmm):
    den = gmm.denoiser(paths.get_path("vp"))
    op = Inpaint.random(16, 0.5, generator=torch.Generator().manual_seed(9))
    y = torch.zeros(op.m, dtype=torch.float64)
    with pytest.raises(ValueError, match="lr"):
        solve(den, y, op, "flowchef", nfe=4, lr=-1.0)
    with pytest.raises(ValueError, match="ess"):
        solve(den, y, op, "ensemble", nfe=4, ess=1.5)
    with pytest.raises(ValueError, match="nfe"):
        solve(den, y, op, "ensemble", nfe=1)
    with pytest.raises(ValueError, match="reference"):
        solve(den, y, op, "obc", nfe=4, reference=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="boundary"):
        solve(den, y, op, "obc", nfe=4, boundary=torch.zeros(2, 16))
    with pytest.raises(ValueError, match="inner"):
        solve(den, y, op, "obc", nfe=4, inner="nope", candidates=1, n_reference=1)
    with pytest.raises(ValueError, match="candidates"):
        find_boundary(den, op, torch.zeros(2, 16, dtype=torch.float64), candidates=0)
