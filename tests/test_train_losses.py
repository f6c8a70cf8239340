"""Tests of :mod:`pfode.train.losses`.

Targets are checked against their definitions (``v = alpha eps - sigma x0``, ``score = -eps / sigma``, the
velocity as a finite-difference time derivative of ``alpha(t) x0 + sigma(t) eps``); weightings against the
x0-space convention (the loss of any prediction type equals ``w(t) |x0_hat - x0|^2`` with ``x0_hat``
recovered by :func:`pfode.predictions.to_x0_eps`); time samplers against their distributions.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from pfode import paths as P
from pfode.analytic import Gaussian
from pfode.predictions import PREDICTIONS, Coeffs, to_x0_eps
from pfode.train import losses as L


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PATHS = {
    "vp": P.VP(),
    "cosine": P.VPCosine(),
    "subvp": P.SubVP(),
    "ve": P.VE(),
    "edm": P.EDM(),
    "linear": P.Linear(),
    "trig": P.Trig(),
}
INTERIOR = {"ve": (0.1, 0.9), "edm": (0.05, 20.0)}


def _batch(b=64, d=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)


def _times(name, b=64, seed=1):
    lo, hi = INTERIOR.get(name, (0.05, 0.95))
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", list(PATHS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_matches_definition(name, prediction):
    path = PATHS[name]
    x0, eps = _batch()
    t = _times(name)
    obj = L.DenoisingScoreMatching(path, prediction)
    x_t, target = obj.target(x0, eps, t)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    assert torch.allclose(x_t, a * x0 + s * eps, rtol=1e-12, atol=1e-12)
    if prediction == "eps":
        want = eps
    elif prediction == "x0":
        want = x0
    elif prediction == "v":
        want = a * eps - s * x0
    elif prediction == "score":
        want = -eps / s
    else:  # d/dt of alpha(t) x0 + sigma(t) eps by central differences
        h = 1e-6 * max(1.0, float(t.max()))
        fwd = path.alpha(t + h)[:, None] * x0 + path.sigma(t + h)[:, None] * eps
        bwd = path.alpha(t - h)[:, None] * x0 + path.sigma(t - h)[:, None] * eps
        want = (fwd - bwd) / (2 * h)
    tol = 1e-5 if prediction == "velocity" else 1e-12
    assert torch.allclose(target, want, rtol=tol, atol=tol)


def test_flow_matching_target_is_noise_minus_data():
    x0, eps = _batch(dtype=torch.float32)
    t = torch.rand(64, dtype=torch.float64)
    _, target = L.FlowMatching().target(x0, eps, t)
    assert torch.allclose(target, eps - x0, atol=1e-6)


class _Fixed(torch.nn.Module):
    """A 'network' returning a fixed pseudo-random function of its input."""

    def __init__(self, d):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3

    def forward(self, x, t):
        return (x.double() @ self.w + torch.sin(t.double())[:, None]).to(x.dtype)


@pytest.mark.parametrize("name", ["vp", "edm", "linear", "trig"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["uniform", "snr", "min-snr", "edm", "sigmoid"])
def test_weighting_is_an_x0_space_weight_for_every_prediction(name, prediction, weighting):
    path = PATHS[name]
    x0, eps = _batch(b=32, dtype=torch.float32)
    t = _times(name, b=32)
    net = _Fixed(3)
    obj = L.DenoisingScoreMatching(path, prediction, weighting, gamma=2.0, sigma_data=0.7, sigmoid_bias=0.5)
    _, per = obj.loss(net, {"x0": x0, "eps": eps, "t": t})
    c = Coeffs.at(path, t, like=x0.double())
    x_t = c.alpha * x0.double() + c.sigma * eps.double()
    out = net(x_t.float(), t.float()).double()
    x0_hat, _ = to_x0_eps(prediction, out, x_t, c)
    snr = (path.alpha(t) / path.sigma(t)) ** 2
    w = {
        "uniform": torch.ones_like(snr),
        "snr": snr,
        "min-snr": torch.clamp(snr, max=2.0),
        "edm": snr + 1 / 0.7**2,
        "sigmoid": snr / (1 + torch.exp(torch.log(snr) - 0.5)),
    }[weighting]
    want = w * ((x0_hat - x0.double()) ** 2).mean(1)
    assert torch.allclose(per.double(), want, rtol=2e-3, atol=1e-6)


def test_named_weightings_reduce_to_familiar_losses():
    path = PATHS["vp"]
    x0, eps = _batch(dtype=torch.float32)
    t = _times("vp")
    net = _Fixed(3)
    b = {"x0": x0, "eps": eps, "t": t}
    x_t, _ = L.DenoisingScoreMatching(path, "eps").target(x0, eps, t)
    out = net(x_t, t.float())
    # eps-prediction with SNR weighting is DDPM's eps-MSE; x0 with uniform is the x0-MSE
    _, per = L.DenoisingScoreMatching(path, "eps", "snr").loss(net, b)
    assert torch.allclose(per, ((out - eps) ** 2).mean(1), rtol=1e-5)
    _, per = L.DenoisingScoreMatching(path, "x0", "uniform").loss(net, b)
    assert torch.allclose(per, ((out - x0) ** 2).mean(1), rtol=1e-5)
    _, per = L.DenoisingScoreMatching(path, "v", "native").loss(net, b)
    a, s = path.alpha(t)[:, None].float(), path.sigma(t)[:, None].float()
    assert torch.allclose(per, ((out - (a * eps - s * x0)) ** 2).mean(1), rtol=1e-5)


def test_weight_values_closed_form():
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    c = Coeffs.at(P.Linear(), t)
    snr = ((1 - t) / t) ** 2
    assert torch.allclose(L.x0_weight("min-snr", c, gamma=1.0), torch.clamp(snr, max=1.0))
    assert torch.allclose(L.x0_weight("edm", c, sigma_data=0.5), snr + 4.0)
    # at log SNR = bias the sigmoid weight is SNR / 2
    bias = float(torch.log(snr[1]))
    assert math.isclose(float(L.x0_weight("sigmoid", c, bias=bias)[1]), float(snr[1]) / 2, rel_tol=1e-12)
    assert torch.allclose(L.error_scale("velocity", c), 1 / t**2)  # alpha sigma' - sigma alpha' = 1 on Linear
    assert torch.equal(L.loss_weight("native", "v", c), torch.ones(3, dtype=torch.float64))


def test_flow_matching_equals_dsm_velocity_native():
    x0, eps = _batch(dtype=torch.float32)
    t = torch.rand(64, dtype=torch.float64)
    net = _Fixed(3)
    b = {"x0": x0, "eps": eps, "t": t}
    fm, _ = L.FlowMatching().loss(net, b)
    dsm, _ = L.DenoisingScoreMatching("linear", "velocity", "native").loss(net, b)
    assert torch.equal(fm, dsm)


def test_pseudo_huber_closed_form():
    e = torch.randn(8, 5, dtype=torch.float64)
    c = 0.3
    got = L.metric("pseudo-huber", e, c)
    assert torch.allclose(got, torch.sqrt((e**2).sum(1) + c * c) - c)
    small = 1e-4 * e
    assert torch.allclose(L.metric("pseudo-huber", small, c), (small**2).sum(1) / (2 * c), rtol=1e-6)
    assert torch.allclose(L.metric("l2", e), (e**2).mean(1))
    d = L.metric("pseudo-huber", e)  # default c = 0.00054 sqrt(d)
    c0 = 0.00054 * math.sqrt(5)
    assert torch.allclose(d, torch.sqrt((e**2).sum(1) + c0 * c0) - c0)


def test_time_samplers_follow_their_distributions():
    g = torch.Generator().manual_seed(0)
    n = 20000
    u = L.TimeSampler("uniform", t_range=(0.2, 0.6))(n, g)
    assert 0.2 <= float(u.min()) and float(u.max()) <= 0.6
    assert stats.kstest(((u - 0.2) / 0.4).numpy(), "uniform").pvalue > 1e-3
    ln = L.TimeSampler("logit-normal", t_range=(0.0, 1.0), mean=0.5, std=0.8)(n, g)
    z = torch.log(ln / (1 - ln))
    assert abs(float(z.mean()) - 0.5) < 0.03 and abs(float(z.std()) - 0.8) < 0.03
    e = L.TimeSampler("edm-lognormal", P.EDM())(n, g)  # t = sigma on the EDM path
    assert abs(float(torch.log(e).mean()) + 1.2) < 0.04 and abs(float(torch.log(e).std()) - 1.2) < 0.04
    lin = L.TimeSampler("edm-lognormal", P.Linear(), t_range=(0.0, 1.0))(n, g)  # s = t / (1 - t)
    ls = torch.log(lin / (1 - lin))
    assert abs(float(ls.mean()) + 1.2) < 0.04 and abs(float(ls.std()) - 1.2) < 0.04
    a = 4.0
    us = L.TimeSampler("u-shaped", t_range=(0.0, 1.0), a=a)(n, g)

    def cdf(x):
        return (torch.sinh(a * (torch.as_tensor(x) - 0.5)) + math.sinh(a / 2)) / (2 * math.sinh(a / 2))

    assert stats.kstest(us.numpy(), lambda x: cdf(x).numpy()).pvalue > 1e-3
    ends = float(((us < 0.1) | (us > 0.9)).float().mean())
    middle = float(((us > 0.4) & (us < 0.6)).float().mean())
    assert 2.8 < ends / middle < 3.3  # U-shaped: (sinh 2 - sinh 1.6) / sinh 0.4 = 3.05


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid values: native, uniform, snr, min-snr, edm, sigmoid"):
        L.DenoisingScoreMatching("vp", "eps", "p2")
    with pytest.raises(ValueError, match="uniform, logit-normal, edm-lognormal, u-shaped"):
        L.DenoisingScoreMatching("vp", "eps", time_sampler="beta")
    with pytest.raises(
        ValueError, match="dsm, flow-matching, consistency-training, consistency-distillation"
    ):
        L.get_objective("score-matching")
    with pytest.raises(ValueError, match="l2, pseudo-huber"):
        L.FlowMatching(metric="lpips")
    with pytest.raises(ValueError, match="independent, minibatch-ot"):
        L.FlowMatching(coupling="sinkhorn")
    with pytest.raises(ValueError, match="eps, x0, v, score, velocity"):
        L.DenoisingScoreMatching("vp", "mu")


def test_consistency_model_boundary_condition():
    from pfode.nets import MLP

    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1, time_dim=8)
    torch.nn.init.normal_(net.out.weight)
    for path in (P.EDM(), P.VP(), P.Linear()):
        cm = L.ConsistencyModel(net, path, sigma_data=0.5)
        x = torch.randn(10, 2)
        t = torch.full((10,), path.t_min, dtype=torch.float64)
        assert torch.allclose(cm(x, t), x / float(path.alpha(path.t_min)), atol=1e-6)
        assert not torch.allclose(cm(x, t * 50), x, atol=1e-3)


def test_consistency_discretisation_and_curriculum():
    obj = L.Consistency("edm", curriculum=True, s0=10, s1=1280, total_steps=8000)
    assert obj.n_points(0) == 11 and obj.n_points(7999) == 1281
    kp = math.floor(8000 / (math.log2(128) + 1))
    assert obj.n_points(kp) == 21
    s, t = obj.boundaries(11)
    assert torch.all(s[1:] > s[:-1]) and float(s[0]) == 0.002 and float(s[-1]) == 80.0
    assert torch.allclose(t, s)  # EDM: t = sigma = s
    g = torch.Generator().manual_seed(0)
    b = obj.prepare(torch.zeros(4000, 2), g, step=0)
    assert torch.all(b["t_hi"] > b["t_lo"])
    assert torch.allclose(b["w"], 1 / (b["t_hi"] - b["t_lo"]))
    lg = L.Consistency("edm", steps=40, index_sampler="lognormal").prepare(torch.zeros(4000, 2), g)
    mid = torch.log(lg["t_lo"]).median()
    assert -2.5 < float(mid) < 0.5  # centred near p_mean = -1.1


def test_consistency_sampler_uses_one_evaluation_per_time():
    calls = []

    def model(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    obj = L.Consistency("edm")
    z = torch.randn(5, 2)
    for nfe in (1, 2, 3):
        calls.clear()
        obj.sample(model, z, nfe=nfe)
        assert len(calls) == nfe and calls[0] == 80.0
        assert all(b < a for a, b in zip(calls, calls[1:]))


def test_distillation_teacher_step_is_path_invariant_and_follows_the_exact_flow():
    """One teacher step (DDIM or Heun in s) from a teacher on any path gives the same update, and its error
    against the exact PF-ODE flow of a Gaussian shrinks at the local orders 2 (DDIM) and 3 (Heun)."""
    g = Gaussian(torch.tensor([0.3, -0.2]), torch.tensor([[0.5, 0.1], [0.1, 0.3]]))
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t_hi = torch.full((16,), 1.0, dtype=torch.float64)
    for solver, order in (("ddim", 2), ("heun", 3)):
        steps = {}
        for tp in ("edm", "vp", "cosine", "linear", "ve"):
            obj = L.Consistency(
                "edm", mode="distillation", teacher=g.denoiser(P.get_path(tp)), teacher_solver=solver
            )
            steps[tp] = [obj._teacher_step(x, t_hi, t_hi - h) for h in (0.1, 0.05)]
        for tp, got in steps.items():
            assert torch.allclose(got[0], steps["edm"][0], atol=1e-9), tp
        errs = [
            float((steps["edm"][k] - g.flow_map(x, 1.0, 1.0 - h, P.EDM())).abs().max())
            for k, h in enumerate((0.1, 0.05))
        ]
        assert errs[0] < (5e-3 if solver == "ddim" else 5e-4)
        assert errs[0] / errs[1] > 2**order * 0.8


ALL_PATHS = {**PATHS, "ddpm": P.VPDiscrete.ddpm()}


@pytest.mark.parametrize("name", list(ALL_PATHS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_path_and_prediction_trains_and_samples(name, prediction):
    """A few optimiser steps of DSM give finite losses and gradients, and the model samples with pfode."""
    from pfode.nets import MLP

    path = ALL_PATHS[name]
    time_input = "index" if name == "ddpm" else "t"
    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1, time_dim=8, time_scale=1.0 if name in ("ddpm", "edm") else 1000.0)
    obj = L.DenoisingScoreMatching(
        path, prediction, "snr" if prediction != "score" else "native", time_input=time_input
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2)
    for _ in range(3):
        loss, per = obj.loss(net, obj.prepare(x, g))
        assert torch.isfinite(per).all()
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
    with torch.no_grad():
        s = obj.sample(net, torch.randn(8, 2), nfe=4, solver="ddim")
    assert s.shape == (8, 2)
