"""AdaFlow: exact velocity variance, the variance-adaptive solver and the variance-matching loss."""

import pytest
import torch

import pfode
from pfode.analytic import Gaussian, GaussianMixture
from pfode.paths import VP, Linear
from pfode.solvers import AdaFlow, exact_velocity_variance, tweedie_velocity_variance
from pfode.solvers.adaflow import posterior_x0_variance
from pfode.train.variance import VarianceMatching, fit_variance


def _gmm():
    return GaussianMixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[-1.5, 0.5], [1.0, -0.5]]), torch.tensor([[0.2, 0.05], [0.1, 0.3]])
    )


def _bimodal():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    return GaussianMixture(torch.tensor([0.5, 0.5]), means, torch.tensor([0.01, 0.01]))


@pytest.mark.parametrize("path", [Linear(), VP()], ids=["linear", "vp"])
def test_exact_variance_matches_monte_carlo(path):
    """tr Var[dx/dt | x_t] by self-normalised importance sampling of x0 from the prior (likelihood weights)."""
    g = torch.Generator().manual_seed(0)
    target, t = _gmm(), 0.45
    x = torch.tensor([[0.3, 0.1], [-1.0, 0.4], [1.2, -0.8]], dtype=torch.float64)
    var = exact_velocity_variance(target, path)(x, t)
    tt = torch.tensor(t, dtype=torch.float64)
    a, s, da, ds = (float(f(tt)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    x0 = target.sample(400_000, generator=g)
    for i in range(x.shape[0]):
        logw = -0.5 * ((x[i] - a * x0) ** 2).sum(1) / s**2
        w = torch.softmax(logw, 0)[:, None]
        u = da * x0 + ds * (x[i] - a * x0) / s  # the conditional velocity alpha' x0 + sigma' eps at x_t = x[i]
        m = (w * u).sum(0)
        mc = (w * (u - m) ** 2).sum()
        assert float(var[i]) == pytest.approx(float(mc), rel=0.03)
        # the posterior mean agrees with the library's exact denoiser (same posterior)
        x0_mean = (w * x0).sum(0)
        assert torch.allclose(x0_mean, target.x0_eps(x[i : i + 1], t, path)[0][0], atol=0.02)


def test_posterior_variance_gaussian_equals_single_component_mixture():
    path, x = Linear(), torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 2.0])
    a = posterior_x0_variance(Gaussian(mean, torch.diag(var)), x, 0.3, path)
    b = posterior_x0_variance(GaussianMixture(torch.ones(1), mean[None], var[None]), x, 0.3, path)
    assert torch.allclose(a, b, rtol=1e-12)
    assert bool((a > 0).all()) and bool((a < var.sum()).all())


def test_unimodal_one_step_lands_on_the_mean():
    path = Linear()
    lam = 1e-6
    target = Gaussian(torch.tensor([1.0, -2.0]), lam * torch.eye(2))
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ada = AdaFlow(exact_velocity_variance(target, path), eta=0.1, max_steps=20)
    y, info = ada.solve(target.denoiser(path), x, 1.0, 0.0)
    assert info["nfe"] == 1 and bool((info["steps"] == 1).all())
    exact = target.flow_map(x, 1.0, 0.0, path)  # = mean + sqrt(lam) x
    assert torch.allclose(y, target.mean.expand_as(y), atol=1e-9)
    assert bool(((y - exact).norm(dim=1) <= lam**0.5 * x.norm(dim=1) + 1e-9).all())


def test_multimodal_takes_more_steps_and_is_accurate():
    path, target = Linear(), _bimodal()
    den = target.denoiser(path)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ada = AdaFlow(exact_velocity_variance(target, path), eta=0.1, max_steps=50)
    y, info = ada.solve(den, x, 1.0, 0.0)
    assert info["mean_nfe"] > 4 and info["nfe"] <= 50
    ref, _ = AdaFlow(lambda x, t: torch.full((x.shape[0],), 1e12), eta=1.0, max_steps=400).solve(den, x, 1.0, 0.0)
    one, _ = AdaFlow(lambda x, t: torch.zeros(x.shape[0]), eta=1.0, max_steps=1).solve(den, x, 1.0, 0.0)
    err, err_one = (y - ref).norm(dim=1).mean(), (one - ref).norm(dim=1).mean()
    assert float(err) < 0.1 * float(err_one)
    # the NFE cap holds and samples are independent of their batch
    capped, info_c = AdaFlow(ada.variance_fn, eta=0.1, max_steps=3).solve(den, x, 1.0, 0.0)
    assert int(info_c["steps"].max()) == 3
    y5, _ = ada.solve(den, x[:5], 1.0, 0.0)
    assert torch.allclose(y5, y[:5], atol=1e-12)


def test_sample_accepts_adaflow_and_conditioning_is_sliced():
    path, target = Linear(), _bimodal()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ada = AdaFlow(exact_velocity_variance(target, path), eta=0.2, max_steps=30)
    out = pfode.sample(target.denoiser(path), x, solver=ada, return_info=True)
    assert out.nfe == out.info["nfe"] + 1 and torch.isfinite(out.x).all()
    # conditioning: per-sample tensors are sliced to the active samples
    seen = []

    def net(x, t, c):
        seen.append(c.shape[0] == x.shape[0])
        return x * 0 + c[:, None]

    den = pfode.Denoiser(net, path, "velocity")
    var = torch.tensor([0.0, 100.0])

    def variance_fn(x, t, c):
        return var[c.long()]

    c = torch.tensor([0.0, 1.0, 0.0, 1.0])
    y, info = AdaFlow(variance_fn, eta=0.1, max_steps=10).solve(den, torch.zeros(4, 2), 1.0, 0.0, cond={"c": c})
    assert info["steps"].tolist() == [1, 10, 1, 10] and all(seen)
    assert torch.allclose(y, -c[:, None].expand(4, 2).float())


def test_variance_loss_is_calibrated_and_decreases():
    torch.manual_seed(5)
    path, target = Linear(), _bimodal()
    den = target.denoiser(path)
    obj = VarianceMatching(den)
    g = torch.Generator().manual_seed(6)
    batch = obj.prepare(target.sample(10_000, generator=g).float(), g)
    exact = exact_velocity_variance(target, path)
    # with an exact velocity, log sigma from the exact variance beats a mis-scaled one (the NLL's minimiser)
    x_t, t, _ = obj.residual(batch)
    ls_exact = 0.5 * torch.log(exact(x_t, t).clamp_min(1e-12))

    def net_of(ls):
        return lambda x, tn: ls

    losses = {k: float(obj.loss(net_of(ls_exact + k), batch)[0]) for k in (-0.5, 0.0, 0.5)}
    assert losses[0.0] < losses[-0.5] and losses[0.0] < losses[0.5]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))

        def forward(self, x, t):
            return self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))[:, 0]

    net = Net()
    hist = fit_variance(obj, net, target.sample(2000, generator=g).float(), steps=150, batch_size=256, lr=1e-2,
                        generator=g)
    assert sum(hist[-20:]) / 20 < sum(hist[:20]) / 20 - 0.1
    # it learned how the variance depends on (x_t, t): better than the best constant sigma on fresh data
    fresh = obj.prepare(target.sample(10_000, generator=g).float(), g)
    _, _, err = obj.residual(fresh)
    best_constant = 0.5 + 0.5 * float(torch.log(err.mean()))
    with torch.no_grad():
        assert float(obj.loss(net, fresh)[0]) < best_constant - 0.1
    v = obj.variance_fn(net)(torch.zeros(4, 2), torch.full((4,), 0.5))
    assert v.shape == (4,) and bool((v > 0).all())


def test_bad_arguments_raise():
    fn = exact_velocity_variance(_bimodal(), Linear())
    for kw, name in ((dict(eta=0.0), "eta"), (dict(max_steps=0), "max_steps"), (dict(min_step=-1.0), "min_step")):
        with pytest.raises(ValueError, match=name):
            AdaFlow(fn, **kw)
    with pytest.raises(TypeError, match="variance_fn"):
        AdaFlow(3.0)
    den = _bimodal().denoiser(Linear())
    with pytest.raises(ValueError, match="t_start"):
        AdaFlow(fn).solve(den, torch.zeros(2, 2), 0.1, 0.5)
    with pytest.raises(ValueError, match="variance_fn"):
        AdaFlow(lambda x, t: -torch.ones(x.shape[0])).solve(den, torch.zeros(2, 2), 1.0, 0.0)
    with pytest.raises(TypeError, match="target"):
        exact_velocity_variance("gmm", Linear())
    obj = VarianceMatching(den)
    with pytest.raises(ValueError, match="steps"):
        fit_variance(obj, torch.nn.Linear(3, 1), torch.zeros(4, 2), steps=0)
    with pytest.raises(ValueError, match="cond"):
        fit_variance(obj, torch.nn.Linear(3, 1), torch.zeros(4, 2), cond={"c": torch.zeros(3)})


@pytest.mark.parametrize("path", [Linear(), VP()], ids=["linear", "vp"])
def test_tweedie_variance_equals_the_exact_one(path):
    """The model-only variance (Tweedie's second-order identity through the denoiser's Jacobian) equals the closed
    form on a GMM; Hutchinson's estimate is unbiased (its error falls with probes)."""
    target = _gmm()
    den = target.denoiser(path)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for t in (0.2, 0.7):
        exact = exact_velocity_variance(target, path)(x, t)
        torch.testing.assert_close(tweedie_velocity_variance(den)(x, t), exact, rtol=1e-10, atol=1e-12)
        errs = []
        for probes in (4, 256):
            est = tweedie_velocity_variance(den, probes, generator=torch.Generator().manual_seed(4))(x, t)
            errs.append(float((est.mean() - exact.mean()).abs() / exact.mean()))
        assert errs[1] < 0.05 and errs[1] < errs[0] + 0.01, errs


def test_registered_adaflow_reads_the_variance_off_the_model():
    """``solver="adaflow"`` needs no variance head: on a near-deterministic target it takes one step; on a bimodal one
    more; Jacobian products are reported apart from nfe; alpha = 0 at the start is refused by name."""
    assert "adaflow" in pfode.solvers.available()
    desc = {d["name"]: d for d in pfode.solvers.describe()}["adaflow"]
    assert "AdaFlow" in desc["paper"] and desc["adaptive"]
    path = Linear()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    point = Gaussian(torch.tensor([1.0, -2.0]), 1e-8 * torch.eye(2))
    one = pfode.sample(point.denoiser(path), x, solver="adaflow", return_info=True)
    assert float(one.info["mean_nfe"]) == 1.0 and one.info["jacobian_products"] == 2
    torch.testing.assert_close(one.x, torch.tensor([1.0, -2.0], dtype=torch.float64).expand(16, 2), atol=1e-3, rtol=0)
    many = pfode.sample(_bimodal().denoiser(path), x, solver="adaflow", return_info=True)
    assert float(many.info["mean_nfe"]) > 2.0
    with pytest.raises(ValueError, match="alpha > 0"):
        AdaFlow().solve(point.denoiser(Linear(t_max=1.0)), x, 1.0, 0.001)


def test_step_rule_is_the_papers_clip():
    """Per sample ``dt = clip(eta / sigma, dt_min, remaining)`` with ``dt_min = 1 / N`` by default (as the authors'
    ``max(eta / sigma, 1 / N)`` then ``min(., 1 - t)``): known variances give known step counts and sizes."""
    path, target = Linear(), _gmm()
    eta = 0.1
    # sigma = 0 (one step), eta / sigma = 0.25 (4 steps), 0.3 (3 steps of 0.3, then the rest 0.1), below 1/N = 0.1
    sig = torch.tensor([0.0, eta / 0.25, eta / 0.3, eta / 0.01], dtype=torch.float64)
    seen, rows_active = [], [torch.arange(4)]  # the solver evaluates only the samples not yet at t_end

    def var_fn(x, t):
        return sig[rows_active[0]] ** 2

    def cb(info):
        seen.append((info["t_prev"] - info["t"]).clone())
        rows_active[0] = (info["t"] > 0.0).nonzero().squeeze(1)

    ada = AdaFlow(var_fn, eta=eta, max_steps=10)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    _, info = ada.solve(target.denoiser(path), x, 1.0, 0.0, callback=cb)
    assert info["steps"].tolist() == [1, 4, 4, 10]
    dt = torch.stack(seen)  # [iterations, B]
    assert torch.allclose(dt[:1, 0], torch.tensor([1.0], dtype=torch.float64))
    assert torch.allclose(dt[:4, 1], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(dt[:4, 2], torch.tensor([0.3, 0.3, 0.3, 0.1], dtype=torch.float64))
    assert torch.allclose(dt[:, 3], torch.full((10,), 0.1, dtype=torch.float64))
