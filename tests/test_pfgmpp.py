"""PFGM++ (Xu et al., 2023): the heavy-tailed kernel, its EDM limit, the exact point-set flow, training hooks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import pfode
from pfode import paths
from pfode.nets import MLP
from pfode.pfgmpp import PFGMPP, PointSetDenoiser, sample_gamma
from pfode.train import DenoisingScoreMatching

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("D", [1.0, 3.0, 16.0])
def test_radial_law_is_the_beta_construction(D):
    """|x - y| against R = r sqrt(b / (1 - b)), b ~ Beta(N/2, D/2) (numpy's Beta: an independent sampler)."""
    n_dim, sigma, n = 3, 0.7, 6000
    path = PFGMPP(D=D)
    y = torch.randn(n, n_dim, generator=gen(0), dtype=F64)
    x = path.perturb(y, sigma, gen(1))
    radius = (x - y).norm(dim=1).numpy()
    b = np.random.default_rng(2).beta(n_dim / 2, D / 2, size=n)
    ref = sigma * math.sqrt(D) * np.sqrt(b / (1 - b))
    assert stats.ks_2samp(radius, ref).pvalue > 1e-3
    # directions are uniform: the mean unit vector vanishes
    u = (x - y) / (x - y).norm(dim=1, keepdim=True)
    assert float(u.mean(0).norm()) < 4 / math.sqrt(n)


def test_second_moment_of_the_kernel():
    """E|x - y|^2 = r^2 N / (D - 2) for D > 2 (r = sigma sqrt(D))."""
    n_dim, sigma, D, n = 2, 1.3, 12.0, 40000
    x = PFGMPP(D=D).perturb(torch.zeros(n, n_dim, dtype=F64), sigma, gen(3))
    r2 = x.pow(2).sum(1)
    expect = sigma**2 * D * n_dim / (D - 2)
    assert abs(float(r2.mean()) - expect) < 5 * float(r2.std()) / math.sqrt(n)


def test_large_d_is_gaussian_and_inf_is_edm():
    n = 20000
    big = PFGMPP(D=1e6).perturb(torch.zeros(n, 2, dtype=F64), 1.0, gen(4))
    assert stats.kstest(big[:, 0].numpy(), "norm").pvalue > 1e-3
    assert float(PFGMPP(D=1e6).radial_factor(1000, gen(5)).sub(1).abs().max()) < 1e-2
    eps = torch.randn(5, 3, generator=gen(6), dtype=F64)
    assert torch.equal(PFGMPP(D=math.inf).noise_from_gaussian(eps, gen(7)), eps)
    small = PFGMPP(D=4.0).perturb(torch.zeros(n, 2, dtype=F64), 1.0, gen(8))
    assert stats.kstest(small[:, 0].numpy(), "norm").pvalue < 1e-6  # heavy tails are not Gaussian


def test_gamma_sampler_matches_scipy():
    for a in (0.4, 2.5, 60.0):
        g = sample_gamma(a, 8000, gen(9)).numpy()
        assert stats.kstest(g, "gamma", args=(a,)).pvalue > 1e-3


def points():
    return torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64)


@pytest.mark.parametrize("D", [8.0, math.inf])
def test_exact_denoiser_ode_preserves_the_perturbed_marginals(D):
    """The PFGM++ ODE with the exact point-set denoiser maps p_sigma1 to p_sigma2: E|x|^2 at sigma2 is
    E|y|^2 + sigma2^2 D N / (D - 2) (E|y|^2 + N sigma2^2 for D = inf), and samples end on the points evenly."""
    path = PFGMPP(D=D, sigma_min=1e-3, sigma_max=10.0)
    pts = points()
    n = 3000
    y = pts[torch.randint(0, 3, (n,), generator=gen(10))]
    x_T = path.perturb(y, path.sigma_max, gen(11))
    den = PointSetDenoiser(pts, path).denoiser()
    mid = 1.0
    g = pfode.grid(path, 40, "karras", t_start=path.sigma_max, t_end=mid)
    x = pfode.sample(den, x_T, g, "heun", denoise=False)
    ey2 = float(pts.pow(2).sum(1).mean())
    spread = mid**2 * (D * 2 / (D - 2) if math.isfinite(D) else 2)
    got = x.pow(2).sum(1)
    ref = path.perturb(y, mid, gen(12)).pow(2).sum(1)  # a fresh draw from p_mid: the same statistic's noise
    assert abs(float(got.mean()) - (ey2 + spread)) < 5 * float(ref.std()) / math.sqrt(n)
    # all the way down: every sample lands on a point, each point gets its third
    out = pfode.sample(den, x_T, nfe=41, solver="heun")
    dist = torch.cdist(out.to(F64), pts)
    assert float(dist.min(1).values.max()) < 1e-2
    frac = torch.bincount(dist.argmin(1), minlength=3).to(F64) / n
    assert float((frac - 1 / 3).abs().max()) < 4 * math.sqrt(2 / 9 / n)


def test_every_deterministic_solver_runs_from_the_prior():
    path = PFGMPP(D=4.0, sigma_min=2e-3, sigma_max=20.0)
    den = PointSetDenoiser(points(), path).denoiser()
    x_T = path.prior((64, 2), gen(13))
    assert x_T.dtype == torch.float32
    for name in ("euler", "heun", "dpm++2m", "unipc", "ddim", "dpm++3m"):
        x = pfode.sample(den, x_T, nfe=13, solver=name)
        assert bool(torch.isfinite(x).all()), name
        assert float(torch.cdist(x.double(), points()).min(1).values.median()) < 0.5, name


def test_spec_round_trips():
    for D in (4.0, math.inf):
        p = PFGMPP(D=D, sigma_min=0.01, sigma_max=40.0)
        spec = json.loads(json.dumps(p.spec(), allow_nan=False))  # strict JSON, also for D = inf
        back = paths.from_spec(spec)
        assert isinstance(back, PFGMPP) and back.D == p.D and back.spec() == p.spec()
        assert (back.sigma_min, back.sigma_max) == (0.01, 40.0)
    assert paths.get_path("pfgmpp", D=16).D == 16.0
    assert "pfgmpp" in paths.available()


def test_bad_d_is_named():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="D="):
            PFGMPP(D=bad)
    with pytest.raises(TypeError, match="D must be"):
        PFGMPP(D="many")
    with pytest.raises(ValueError, match="sigma"):
        PFGMPP(D=4).perturb(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(TypeError, match="PFGMPP"):
        PointSetDenoiser(points(), paths.EDM())


def test_dsm_trains_on_the_heavy_tailed_kernel():
    """DenoisingScoreMatching on a PFGMPP path draws x_t from the path's kernel; x0-prediction and the
    EDM weighting work unchanged, and a few steps of a small MLP lower the loss."""
    torch.manual_seed(0)
    path = PFGMPP(D=3.0, sigma_min=0.01, sigma_max=5.0)
    obj = DenoisingScoreMatching(path, prediction="x0", weighting="edm", time_sampler="edm-lognormal")
    x0 = torch.zeros(4000, 2)
    batch = obj.prepare(x0, gen(14))
    sigma = path.sigma(batch["t"])
    x_t, target = obj.target(batch["x0"], batch["eps"], batch["t"])
    assert torch.equal(target, batch["x0"])
    # the radius of x_t - x0 over sigma follows the kernel: sqrt(D b / (1 - b)), b ~ Beta(N/2, D/2)
    rad = ((x_t - x0).double().norm(dim=1) / sigma).numpy()
    b = np.random.default_rng(15).beta(1.0, 1.5, size=4000)
    assert stats.ks_2samp(rad, np.sqrt(3.0 * b / (1 - b))).pvalue > 1e-3
    net = MLP((2,), width=64, depth=2)
    data = torch.randn(512, 2) * 0.3 + 1.0
    losses = []
    for step in range(60):  # plain gradient steps (torch.optim's first construction alone costs seconds)
        b = obj.prepare(data, gen(100 + step))
        loss, _ = obj.loss(net, b)
        net.zero_grad()
        loss.backward()
        with torch.no_grad():  # normalised steps: the EDM weight spans orders of magnitude
            norm = torch.sqrt(sum(prm.grad.pow(2).sum() for prm in net.parameters()))
            for prm in net.parameters():
                prm -= 0.05 * prm.grad / norm
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    z = torch.randn(256, 2, generator=gen(16))
    x = obj.sample(net, z, nfe=11, solver="heun")
    assert bool(torch.isfinite(x).all())
