"""i-DODE training (pfode.train.idode): the likelihood weighting, its importance sampler, the velocity
parameterization and the second-order term, checked against the exact Gaussian-mixture denoiser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from pfode import paths as P
from pfode.analytic import GaussianMixture
from pfode.predictions import Coeffs, from_x0_eps
from pfode.train.config import check_config, make_trainer
from pfode.train.idode import LikelihoodDSM, LikelihoodTimeSampler, Reparameterized, likelihood_weight
from pfode.train.losses import error_scale, get_objective

ROOT = Path(__file__).resolve().parents[1]
CASES = [(P.VP(), "v"), (P.Linear(), "velocity"), (P.get_path("edm"), "eps"), (P.get_path("cosine"), "x0")]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_likelihood_weight_is_song_et_al_g2_over_2_on_the_score_error():
    for path, _ in CASES:
        t = torch.linspace(path.t_min, path.t_max, 7, dtype=torch.float64)[1:-1]
        a, s = path.alpha(t), path.sigma(t)
        want = 0.5 * path.g2(t) * a * a / s**4  # (g^2/2) |score error|^2 = this * |x0 error|^2
        torch.testing.assert_close(likelihood_weight(path, t), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("mode", ["importance", "uniform-t", "uniform-lambda"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_sampler_density_integrates_to_one_and_matches_its_histogram(case, mode):
    path, pred = CASES[case]
    s = LikelihoodTimeSampler(path, pred, mode)
    # integrate in lam (the density is piecewise constant there): exact to the quadrature of the map
    lam = torch.linspace(*s.lam_range, 400_001, dtype=torch.float64)
    assert abs(float(torch.trapezoid(s.density_lam(lam), lam)) - 1.0) < 2e-3
    t = torch.linspace(*s.t_range, 400_001, dtype=torch.float64)
    assert abs(float(torch.trapezoid(s.density(t), t)) - 1.0) < 2e-2  # steep in t near the data end
    n = 200_000
    draws = path.lam(s(n, torch.Generator().manual_seed(1)))
    edges = torch.linspace(*s.lam_range, 21, dtype=torch.float64)
    counts = torch.histogram(draws.clamp(*s.lam_range), edges).hist
    fine = torch.linspace(0, 1, 2001, dtype=torch.float64)
    probs = torch.stack(
        [torch.trapezoid(s.density_lam(a + (b - a) * fine), a + (b - a) * fine) for a, b in zip(edges, edges[1:])]
    )
    sd = torch.sqrt(n * probs * (1 - probs)) + 1
    assert bool(((counts - n * probs).abs() < 5 * sd).all()), (counts, n * probs)


@pytest.mark.parametrize("mode", ["importance", "uniform-t", "uniform-lambda"])
def test_weighting_expectation_is_the_unsampled_likelihood_weighted_integral(mode):
    path, pred = P.VP(), "v"
    s = LikelihoodTimeSampler(path, pred, mode)
    h = lambda t: 1.0 + torch.sin(7 * t) ** 2 + t  # noqa: E731  (any positive function of t)
    t = torch.linspace(*s.t_range, 400_001, dtype=torch.float64)
    w = likelihood_weight(path, t) / error_scale(pred, Coeffs.at(path, t))
    want = float(torch.trapezoid(w * h(t), t))
    ts = s(200_000, torch.Generator().manual_seed(2))
    vals = s.factor(ts) * h(ts)
    assert abs(float(vals.mean()) - want) < 5 * float(vals.std()) / math.sqrt(vals.numel()) + 1e-3 * want
    if mode == "importance":  # the variance reduction: the factor is (nearly) the constant Z
        f = s.factor(ts)
        assert float(f.std() / f.mean()) < 1e-2
        assert abs(float(f.mean()) - float(torch.trapezoid(w, t))) < 2e-3 * float(f.mean())


def _exact_net(gm, path, pred, delta=0.0, bump=0.0):
    """A network of prediction ``pred`` from the exact GMM denoiser, eps_hat scaled by ``1 + delta`` and
    shifted by ``bump * tanh(x)`` (a perturbation that changes the divergence)."""

    def net(x, t):
        x0, eps = gm.x0_eps(x, t, path)
        c = Coeffs.at(path, t, like=x)
        a, s = c.alpha, c.sigma
        eps = eps * (1 + delta) + bump * torch.tanh(x)
        x0 = (x - s * eps) / a
        return from_x0_eps(pred, x0, eps, c)

    return net


@pytest.mark.parametrize("case", [0, 1])
def test_exact_denoiser_minimises_first_and_second_order_losses(case):
    path, pred = CASES[case]
    gm = GaussianMixture.random(2, 3, std_range=(0.2, 0.6), generator=torch.Generator().manual_seed(0))
    x0 = gm.sample(6000, torch.Generator().manual_seed(3))
    o1 = get_objective("idode", path=path, prediction=pred, second_order=0.0, divergence="exact")
    o2 = LikelihoodDSM(path, pred, second_order=1.0, divergence="exact")
    batch = o1.prepare(x0, torch.Generator().manual_seed(4))

    def losses(**p):
        net = _exact_net(gm, path, pred, **p)
        first = float(o1.loss(net, batch)[0])
        return first, float(o2.loss(net, batch)[0].detach()) - first

    f0, s0 = losses()
    for p in ({"delta": 0.1}, {"delta": -0.1}, {"bump": 0.1}, {"bump": -0.1}):
        f1, s1 = losses(**p)
        assert f1 > f0 * 1.001, (p, f0, f1)
        assert s1 > s0 * 1.001, (p, s0, s1)


def test_config_trains_checkpoints_resumes_and_loads(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "moons_idode.yaml").read_text())
    small = dict(iterations=6, batch_size=64, ckpt_every=3, log_every=1, quiet=True, warmup_steps=0)
    cfg["model"].update(width=32, depth=2, time_dim=16)
    tr = make_trainer(cfg, tmp_path / "run", **small)
    tr.fit(3)
    tr.save()
    resumed = make_trainer(cfg, tmp_path / "run", resume=True, **small)
    assert resumed.step == 3
    resumed.fit()
    assert resumed.step == 6
    from pfode.models import load

    m = load(str(tmp_path / "run"))
    assert m.denoiser.prediction == "v" and isinstance(m.denoiser.path, P.VP)
    x0, _ = m.denoiser(torch.randn(4, 2), 0.5)
    assert x0.shape == (4, 2) and bool(torch.isfinite(x0).all())


def test_strict_keys_and_bad_values():
    cfg = yaml.safe_load((ROOT / "configs" / "moons_idode.yaml").read_text())
    check_config(cfg)
    bad = {**cfg, "objective": {**cfg["objective"], "weighting": "snr"}}
    with pytest.raises(ValueError, match="objective.weighting"):
        check_config(bad)
    for key, value, word in (
        ("second_order", -0.1, "second_order"),
        ("time_sampling", "sometimes", "time_sampling"),
        ("divergence", "guess", "divergence"),
        ("probes", 0, "probes"),
    ):
        with pytest.raises(ValueError, match=word):
            check_config({**cfg, "objective": {**cfg["objective"], key: value}})
    with pytest.raises(ValueError, match="finite log-SNR"):
        LikelihoodDSM("vp", "v", t_range=(0.0, 1.0))


def test_reparameterized_eps_network_as_velocity_keeps_the_denoiser():
    path = P.get_path("cosine")
    gm = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(0))
    eps_net = _exact_net(gm, path, "eps")

    class Wrap(torch.nn.Module):
        def forward(self, x, t):
            return eps_net(x, t)

    v_net = Reparameterized(Wrap(), path, "eps", "v")
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    from pfode.predictions import Denoiser

    a = Denoiser(eps_net, path, "eps")(x, t)[0]
    b = Denoiser(v_net, path, "v")(x, t)[0]
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
