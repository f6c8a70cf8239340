"""Stochastic interpolants: reduction to the Gaussian paths, exact GMM-to-GMM truth, samplers, training."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from pfode import analytic, paths
from pfode import interpolants as I
from pfode.nets import MLP

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gauss(mean, var):
    return analytic.GaussianMixture(torch.ones(1), torch.tensor([mean], dtype=F64), torch.tensor([var], dtype=F64))


DATA = analytic.GaussianMixture.random(2, 3, generator=_gen(1))
SOURCE = analytic.GaussianMixture.random(2, 2, generator=_gen(2))
STD = _gauss([0.0, 0.0], [1.0, 1.0])
# milder mixtures (stds 0.3-0.8) for the sampling tests: coarse grids resolve them
DATA2 = analytic.GaussianMixture.random(2, 3, std_range=(0.3, 0.8), generator=_gen(1))
SOURCE2 = analytic.GaussianMixture.random(2, 2, std_range=(0.3, 0.8), generator=_gen(2))
ALL = [
    I.LinearInterpolant(),
    I.LinearInterpolant("sqrt"),
    I.TrigInterpolant({"name": "quadratic", "scale": 2.0}),
    I.EncoderDecoder(),
]


# --- reduction to today's paths ---------------------------------------------------------------------
@pytest.mark.parametrize("interp,path", [(I.LinearInterpolant(), paths.Linear()), (I.TrigInterpolant(), paths.Trig())])
def test_reduces_to_gaussian_paths(interp, path):
    t = torch.linspace(0, 1, 41, dtype=F64)
    c = interp.coeffs(t)
    for mine, theirs in ((c.a, path.alpha), (c.b, path.sigma), (c.da, path.d_alpha), (c.db, path.d_sigma)):
        torch.testing.assert_close(mine, theirs(t), rtol=0, atol=1e-14)
    assert float(c.gamma.abs().max()) == 0.0
    # with an N(0, I) source the exact bridge is the GMM's marginal on that path: velocity alpha' x0 + sigma' eps
    br = analytic.GMMBridge(DATA, STD, interp)
    x = 2 * torch.randn(64, 2, generator=_gen(3), dtype=F64)
    tt = torch.rand(64, generator=_gen(4), dtype=F64) * 0.98 + 0.01
    x0, eps = DATA.x0_eps(x, tt, path)
    want = path.d_alpha(tt)[:, None] * x0 + path.d_sigma(tt)[:, None] * eps
    torch.testing.assert_close(br.velocity(x, tt), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(br.log_prob(x, tt), DATA.log_prob(x, tt, path), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(br.score(x, tt), DATA.score(x, tt, path), rtol=1e-9, atol=1e-9)


def test_interpolant_ends_and_encoder_decoder_midpoint():
    xd, xs, z = (torch.randn(5, 3, generator=_gen(i)) for i in range(3))
    for interp in ALL:
        torch.testing.assert_close(interp(0.0, xd, xs, z), xd)
        torch.testing.assert_close(interp(1.0, xd, xs, z), xs)
    torch.testing.assert_close(I.EncoderDecoder()(0.5, xd, xs, z), z)  # pure noise at t = 1/2


def test_custom_interpolant_autograd_derivatives_match_builtin():
    cust = I.CustomInterpolant(lambda t: torch.cos(t * math.pi / 2), lambda t: torch.sin(t * math.pi / 2), "sqrt")
    ref = I.TrigInterpolant("sqrt")
    t = torch.linspace(0.01, 0.99, 17, dtype=F64)
    c, r = cust.coeffs(t), ref.coeffs(t)
    for k in ("a", "b", "da", "db", "gamma", "dgamma", "g2", "dg2"):
        torch.testing.assert_close(getattr(c, k), getattr(r, k), rtol=1e-12, atol=1e-12)
    g = I.CustomInterpolant(lambda t: 1 - t, lambda t: t, gamma=lambda t: t * (1 - t))
    torch.testing.assert_close(g.coeffs(t).dgamma, 1 - 2 * t)
    with pytest.raises(ValueError, match="spec|JSON"):
        g.spec()


def test_spec_round_trip():
    for interp in ALL:
        spec = json.loads(json.dumps(interp.spec()))
        back = I.from_spec(spec)
        assert back == interp and type(back) is type(interp)
        t = torch.linspace(0, 1, 9, dtype=F64)
        torch.testing.assert_close(back.coeffs(t).g2, interp.coeffs(t).g2)


# --- exact truth -------------------------------------------------------------------------------------
@pytest.mark.parametrize("interp", ALL, ids=lambda i: f"{i.name}-{i.gamma.name}")
def test_exact_fields_satisfy_transport_equation(interp):
    """d/dt log rho + div b + b . grad log rho = 0 (continuity equation), score = grad log rho, eta = -gamma s."""
    br = analytic.GMMBridge(DATA, SOURCE, interp)
    for t in (0.1, 0.35, 0.8):
        x = br.sample(100, t=t, generator=_gen(5))[0]
        h = 1e-5
        dlog = (br.log_prob(x, t + h) - br.log_prob(x, t - h)) / (2 * h)
        xr = x.clone().requires_grad_(True)
        v = br.velocity(xr, t)
        div = sum(torch.autograd.grad(v[:, i].sum(), xr, retain_graph=True)[0][:, i] for i in range(2))
        s = br.score(x, t)
        resid = dlog + div.detach() + (v.detach() * s).sum(1)
        assert float(resid.abs().max()) < 1e-4 * (1 + float(dlog.abs().max()))
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(br.log_prob(xg, t).sum(), xg)
        torch.testing.assert_close(s, grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(br.denoiser(x, t), -interp.gamma(torch.tensor(t, dtype=F64)) * s)


def test_exact_velocity_is_a_conditional_expectation():
    """Monte Carlo: E[(b(t, x_t) - dI/dt) . phi(x_t)] = 0 for test functions phi (b is E[dI/dt | x_t])."""
    interp = I.LinearInterpolant("sqrt")
    br = analytic.GMMBridge(DATA, SOURCE, interp)
    x_t, xd, xs, z, t = br.sample(200_000, t=0.4, generator=_gen(6))
    _, target = interp.sample_and_velocity(t, xd, xs, z)
    resid = br.velocity(x_t, t) - target
    for phi in (torch.ones_like(x_t), torch.tanh(x_t), torch.sin(x_t)):
        err = (resid * phi).mean(0)
        se = (resid * phi).std(0) / math.sqrt(x_t.shape[0])
        assert bool((err.abs() < 5 * se).all()), (err, se)
    wrong = resid + 0.05  # a biased velocity is detected
    assert bool(((wrong.mean(0)).abs() > 5 * wrong.std(0) / math.sqrt(x_t.shape[0])).any())


# --- samplers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("interp", ALL, ids=lambda i: f"{i.name}-{i.gamma.name}")
def test_ode_convergence_order_gaussian_to_gaussian(interp):
    """Diagonal Gaussian to Gaussian: the flow map is x_0 = mu + sqrt(S / T) (x_1 - nu) for every interpolant."""
    data, src = _gauss([1.0, -2.0], [0.3, 2.0]), _gauss([-1.0, 0.5], [1.5, 0.2])
    br = analytic.GMMBridge(data, src, interp)
    x1 = src.sample(64, _gen(7))
    exact = data.means[0] + (data.variances[0] / src.variances[0]).sqrt() * (x1 - src.means[0])
    for solver, order in (("euler", 1), ("heun", 2), ("rk4", 4)):
        n = (16, 32, 64) if solver != "rk4" else (8, 16, 32)
        errs = [float((I.transport(br, x1, steps=k, solver=solver) - exact).abs().mean()) for k in n]
        lx, ly = torch.log(torch.tensor(n, dtype=F64)), torch.log(torch.tensor(errs, dtype=F64))
        slope = -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())
        # at least the declared order (coarse grids may be pre-asymptotic and steeper for rk4)
        assert order - 0.4 < slope < order + 1.5, (solver, errs, slope)


def test_ode_and_sde_transport_gmm_to_gmm_hit_target():
    torch.set_num_threads(1)
    br = analytic.GMMBridge(DATA2, SOURCE2, I.LinearInterpolant("sqrt"))
    m, c = DATA2.mean_cov()
    x1 = SOURCE2.sample(2000, _gen(8))
    runs = {
        "ode": (br, dict(steps=10, solver="rk4")),
        "sde": (br, dict(steps=50, solver="euler", eps=1.0, generator=_gen(9))),
        # the drift b + eps s (the wrong sign for decreasing t) must miss the target
        "sde-wrong-sign": (_NegScore(br), dict(steps=50, solver="euler", eps=1.0, generator=_gen(9))),
    }
    err = {}
    for name, (model, kw) in runs.items():
        x0 = I.transport(model, x1, **kw)
        err[name] = (float((x0.mean(0) - m).norm()), float((torch.cov(x0.T) - c).norm() / c.norm()))
    # Monte Carlo floor with 2000 exact samples: ~0.09 on the mean, ~0.02 on the covariance
    assert err["ode"][0] < 0.25 and err["ode"][1] < 0.06, err
    assert err["sde"][0] < 0.25 and err["sde"][1] < 0.06, err
    assert err["sde-wrong-sign"][1] > 0.15, err


class _NegScore:
    def __init__(self, br):
        self.br, self.interpolant = br, br.interpolant

    def velocity(self, x, t):
        return self.br.velocity(x, t)

    def score(self, x, t):
        return -self.br.score(x, t)

    def score_defined(self, t):
        return self.br.score_defined(t)


def test_sde_gaussian_to_gaussian_moments_exact():
    data, src = _gauss([1.0, -2.0], [0.3, 2.0]), _gauss([-1.0, 0.5], [1.5, 0.2])
    br = analytic.GMMBridge(data, src, I.TrigInterpolant("quadratic"))
    x1 = src.sample(20000, _gen(10))
    x0 = I.transport(br, x1, steps=60, solver="heun", eps=0.5, generator=_gen(11))
    torch.testing.assert_close(x0.mean(0), data.means[0], atol=0.04, rtol=0)
    torch.testing.assert_close(x0.var(0), data.variances[0], atol=0, rtol=0.05)


def test_likelihood_matches_exact_density():
    br = analytic.GMMBridge(DATA2, SOURCE2, I.LinearInterpolant("sqrt"))
    x = DATA2.sample(16, _gen(12))
    out = I.log_likelihood(br, x, lambda y: br.log_prob(y, 1.0), steps=20, solver="rk4")
    torch.testing.assert_close(out.logp, br.log_prob(x, 0.0), atol=2e-3, rtol=0)
    hut = I.log_likelihood(
        br, x, lambda y: br.log_prob(y, 1.0), steps=20, divergence="hutchinson", probes=64, generator=_gen(13)
    )
    assert float((hut.logp - out.logp).abs().mean()) < 0.3


# --- learned fields ----------------------------------------------------------------------------------
def test_training_learns_exact_velocity():
    torch.manual_seed(0)
    data = analytic.GaussianMixture(
        torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.1, 0.1])
    )
    src = _gauss([0.0, 1.0], [0.5, 0.5])
    obj = I.InterpolantObjective(
        "linear", gamma="quadratic", field="velocity", source=lambda n, g: src.sample(n, g).float()
    )
    model = obj.wrap(MLP((2,), width=48, depth=2, time_scale=1.0))
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    g = _gen(14)
    xd = data.sample(256 * 200, g).float()
    for i in range(200):
        loss, _ = obj.loss(model, obj.prepare(xd[256 * i : 256 * (i + 1)], g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    br = analytic.GMMBridge(data, src, obj.interpolant)
    tt = torch.rand(2000, generator=_gen(15), dtype=F64) * 0.9 + 0.05
    x_t = br.sample(2000, t=tt, generator=_gen(16))[0]
    with torch.no_grad():
        err = (model.velocity(x_t.float(), tt).double() - br.velocity(x_t, tt)).norm() / br.velocity(x_t, tt).norm()
    print("relative L2 error of the learned velocity", float(err))
    assert float(err) < 0.3, float(err)


def test_trainer_checkpoint_carries_spec_and_loads(tmp_path):
    from pfode.train import Trainer
    from pfode.train.config import check_config

    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 64},
        "model": {"name": "mlp", "width": 16, "depth": 1},
        "objective": {
            "name": "interpolant",
            "interpolant": "trig",
            "gamma": "sqrt",
            "field": "both",
            "source": {"name": "toy2d", "kind": "checkerboard", "n": 64, "seed": 1},
        },
        "train": {"iterations": 2, "batch_size": 16},
    }
    check_config(cfg)
    with pytest.raises(ValueError, match="objective.bogus"):
        check_config({**cfg, "objective": {**cfg["objective"], "bogus": 1}})
    obj = I.InterpolantObjective("trig", "sqrt", field="both", source="checkerboard", coupling="minibatch-ot")
    x = torch.randn(64, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoints describe the model: nothing to warn about
        tr = Trainer(
            MLP((2,), width=16, depth=1),
            obj,
            x,
            {"iterations": 2, "batch_size": 16, "quiet": True, "tensorboard": False},
            tmp_path,
        )
    tr.fit()
    from pfode.checkpoint import read_checkpoint

    ck = read_checkpoint(tmp_path / "checkpoints")
    assert ck.meta["objective"]["interpolant"] == obj.interpolant.spec()
    assert ck.meta["objective"]["name"] == "interpolant" and ck.meta["model_config"]["field"] == "both"
    loaded = I.load_model(tmp_path)
    assert loaded.field == "both" and loaded.interpolant == obj.interpolant
    xt, tt = torch.randn(8, 2), torch.full((8,), 0.3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(xt, tt), tr.ema.velocity(xt, tt))
        torch.testing.assert_close(loaded.score(xt, tt), tr.ema.score(xt, tt))
    out = obj.sample(tr.ema, torch.randn(10, 2), nfe=4, eps=0.2, generator=_gen(0))
    assert out.shape == (10, 2) and bool(torch.isfinite(out).all())


def test_paired_source_data():
    obj = I.InterpolantObjective("linear", source="pairs", coupling="independent")
    assert obj.coupling.paired
    xd, xs = torch.randn(8, 2), torch.randn(8, 2) + 5
    prep = obj.prepare((xd, xs), _gen(0))
    assert torch.equal(prep["x_data"], xd) and bool((prep["x_src"].mean(1) > 2).all())
    assert not torch.equal(prep["x_src"], xs)  # independent: re-paired
    obj = I.InterpolantObjective("linear", source="pairs", coupling="paired")
    prep = obj.prepare((xd, xs), _gen(0))
    assert torch.equal(prep["x_src"], xs)


# --- errors --------------------------------------------------------------------------------------------
def test_errors():
    interp = I.LinearInterpolant("sqrt")
    with pytest.raises(ValueError, match=r"x_data has shape \(4, 2\) and x_src \(4, 3\)"):
        interp(0.5, torch.zeros(4, 2), torch.zeros(4, 3))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="t must lie in"):
            interp.coeffs(bad)
    with pytest.raises(ValueError, match="gamma='cubic' is unknown"):
        I.LinearInterpolant("cubic")
    with pytest.raises(TypeError, match="gamma must be"):
        I.LinearInterpolant(0.3)
    with pytest.raises(ValueError, match="a\\(0\\), a\\(1\\)"):
        I.CustomInterpolant(lambda t: 1 - t / 2, lambda t: t)
    with pytest.raises(ValueError, match="encoder-decoder"):
        I.EncoderDecoder(0)
    br = analytic.GMMBridge(DATA, SOURCE, interp)
    x1 = SOURCE.sample(4, _gen(0))
    with pytest.raises(ValueError, match="eps=-0.5 must be >= 0"):
        I.transport(br, x1, steps=2, eps=-0.5)
    with pytest.raises(ValueError, match="rk4"):
        I.transport(br, x1, steps=2, solver="rk4", eps=0.1)
    with pytest.raises(ValueError, match="multiple of 4"):
        I.transport(br, x1, nfe=6, solver="rk4")
    with pytest.raises(ValueError, match="t_start"):
        I.transport(br, x1, steps=2, t_start=0.2, t_end=0.5)
    with pytest.raises(ValueError, match="eps\\(t\\) must be"):
        I.transport(br, x1, steps=2, solver="euler", eps=lambda t: -1.0)
    velocity_only = I.InterpolantModel(interp, MLP((2,), width=8, depth=1))
    with pytest.raises(ValueError, match="denoiser"):
        velocity_only.score(x1.float(), 0.5)
    den_model = I.InterpolantModel(interp, None, MLP((2,), width=8, depth=1))
    with pytest.raises(ValueError, match="gamma\\(t\\) = 0"):
        den_model.score(x1.float(), 1.0)
    with pytest.raises(ValueError, match="interpolant.*unknown"):
        I.from_spec({"name": "bogus"})
    with pytest.raises(ValueError, match="t_range"):
        I.InterpolantObjective("linear", "sqrt", t_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="field='x' is unknown"):
        I.InterpolantObjective(field="x")
    with pytest.raises(ValueError, match="d=2 and source d=3"):
        analytic.GMMBridge(DATA, analytic.GaussianMixture.random(3, 2), interp)


def test_pfode_sample_transports_an_interpolant_model():
    """``pfode.sample`` dispatches an interpolant model (here the exact bridge) to ``transport``: ODE and SDE
    (``eps`` chosen at sampling) land on the data mixture; plain-denoiser options are refused by name."""
    import pfode

    g = torch.Generator().manual_seed(0)
    data = analytic.GaussianMixture.random(2, 3, generator=g)
    src = analytic.GaussianMixture.random(2, 2, generator=g)
    bridge = analytic.GMMBridge(data, src, I.LinearInterpolant("sqrt"))
    x = src.sample(4000, generator=g)
    mean, cov = data.mean_cov()
    for eps in (None, 0.5):
        y = pfode.sample(bridge, x, nfe=256, solver="rk4" if eps is None else "heun", eps=eps,
                         generator=torch.Generator().manual_seed(1))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float((y.mean(0) - mean).norm()) < 0.1 and float((torch.cov(y.T) - cov).norm()) < 0.06 * float(
            cov.norm()
        ), (eps, y.mean(0), mean)
    with pytest.raises(ValueError, match="return_info"):
        pfode.sample(bridge, x, nfe=4, return_info=True)
    with pytest.raises(ValueError, match="eps is the diffusion"):
        pfode.sample(data.denoiser(paths.Linear()), x, nfe=4, eps=0.1)
