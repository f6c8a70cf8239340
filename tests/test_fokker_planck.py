"""The score Fokker-Planck residual (pfode.fokker_planck, pfode.metrics.fp_residual) against the exact
Gaussian-mixture score, and the fp_weight regularizer of denoising score matching."""

from __future__ import annotations

import pytest
import torch

from pfode import paths as P
from pfode.analytic import GaussianMixture
from pfode.fokker_planck import FokkerPlanckDSM, fp_residual_vector
from pfode.metrics import fp_residual
from pfode.nets import build
from pfode.train.config import check_config
from pfode.train.losses import get_objective

PATHS = {"vp": P.VP(), "edm": P.get_path("edm"), "linear": P.Linear()}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _points(gm, path, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = path.t_min * 2 + (path.t_max * 0.98 - path.t_min * 2) * torch.rand(n, generator=g, dtype=torch.float64)
    x = path.alpha(t)[:, None] * gm.sample(n, g) + path.sigma(t)[:, None] * torch.randn(
        n, gm.d, generator=g, dtype=torch.float64
    )
    return x, t


GM = GaussianMixture.random(2, 4, std_range=(0.1, 0.8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["vp", "edm", "linear"])
def test_exact_gmm_score_has_zero_residual_and_a_perturbed_one_does_not(name):
    path = PATHS[name]
    x, t = _points(GM, path)
    score = lambda x, t: GM.score(x, t, path)  # noqa: E731
    r = fp_residual(score, path, x, t, scaled=True)
    assert float(r.max()) < 1e-10
    raw = fp_residual(score, path, x, t)
    scale = fp_residual(lambda x, t: 1.02 * GM.score(x, t, path), path, x, t)
    assert float((raw / scale).max()) < 1e-9  # round-off relative to a 2% error's residual
    assert float(scale.min()) > 0
    bad = fp_residual(lambda x, t: GM.score(x, t, path) + 0.05 * torch.tanh(x), path, x, t, scaled=True)
    assert float(bad.median()) > 1e-3
    # a central difference in t instead of autograd agrees to its truncation error
    fd = fp_residual(score, path, x, t, scaled=True, dt=1e-5 * (path.t_max - path.t_min))
    assert float(fd.max()) < 1e-5


def test_exact_denoiser_has_zero_residual_and_path_is_taken_from_it():
    path = PATHS["vp"]
    x, t = _points(GM, path)
    den = GM.denoiser(path)
    assert float(fp_residual(den, None, x, t, scaled=True).max()) < 1e-10
    with pytest.raises(ValueError, match="differs from the denoiser"):
        fp_residual(den, "edm", x, t)


def test_hutchinson_is_unbiased_for_the_residual():
    path = PATHS["vp"]
    x, t = _points(GM, path, n=4)
    score = lambda x, t: GM.score(x, t, path) * 1.1 + 0.2 * torch.sin(x[:, [1, 0]])  # noqa: E731
    exact = fp_residual_vector(score, path, x, t, divergence_mode="exact", scaled=True)
    reps = 20_000  # one probe per copy of each point, averaged over the copies
    est = fp_residual_vector(
        score,
        path,
        x.repeat(reps, 1),
        t.repeat(reps),
        divergence_mode="hutchinson",
        scaled=True,
        generator=torch.Generator().manual_seed(0),
    ).reshape(reps, 4, 2)
    sem = est.std(0) / reps**0.5
    assert bool(((est.mean(0) - exact).abs() < 5 * sem + 1e-9).all())
    assert float(sem.max()) < 0.05 * float(exact.abs().max())  # the check has power


def test_bad_input():
    path = PATHS["vp"]
    x, t = _points(GM, path, n=4)
    score = lambda x, t: GM.score(x, t, path)  # noqa: E731
    with pytest.raises(ValueError, match="path= is required"):
        fp_residual(score, None, x, t)
    with pytest.raises(ValueError, match="strictly inside"):
        fp_residual(score, path, x, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="divergence_mode"):
        fp_residual(score, path, x, t, divergence_mode="fast")
    with pytest.raises(TypeError, match="model must be"):
        fp_residual(3, path, x, t)


def test_fp_regularizer_is_differentiable_and_zero_weight_is_dsm():
    torch.manual_seed(0)
    net = build("mlp", data_shape=[2], width=32, depth=2, time_dim=16)
    with torch.no_grad():  # the output layer starts at zero (score 0, residual 0): move every weight
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x0 = GM.sample(64, torch.Generator().manual_seed(1)).float()
    dsm = get_objective("dsm", path="vp", prediction="eps")
    fp0 = get_objective("dsm-fp", path="vp", prediction="eps", fp_weight=0.0)
    fp1 = FokkerPlanckDSM(fp_weight=1.0, path="vp", prediction="eps")
    b = dsm.prepare(x0, torch.Generator().manual_seed(2))
    assert torch.equal(dsm.loss(net, b)[0], fp0.loss(net, b)[0])
    loss = fp1.loss(net, b)[0]
    assert float(loss.detach()) > float(dsm.loss(net, b)[0].detach())
    grads = torch.autograd.grad(loss - dsm.loss(net, b)[0], [p for p in net.parameters()])
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the penalty itself moves the weights
    assert fp1.spec()["fp_weight"] == 1.0


def test_config_keys_strict_and_negative_weight_refused():
    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 64},
        "model": {"name": "mlp", "width": 16, "depth": 1},
        "objective": {"name": "dsm-fp", "path": "vp", "prediction": "eps", "fp_weight": 0.1},
    }
    check_config(cfg)
    with pytest.raises(ValueError, match="fp_weight"):
        check_config({**cfg, "objective": {**cfg["objective"], "fp_weight": -1.0}})
    with pytest.raises(ValueError, match="objective.fp_wieght"):
        check_config({**cfg, "objective": {**cfg["objective"], "fp_wieght": 1.0}})
    with pytest.raises(ValueError, match="fp_t_range"):
        FokkerPlanckDSM(fp_weight=1.0, fp_t_range=(0.5, 0.2))


def test_dsm_fp_trains_through_the_config_and_checkpoints(tmp_path):
    from pfode.models import load
    from pfode.train.config import make_trainer

    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 256},
        "model": {"name": "mlp", "width": 16, "depth": 1, "time_dim": 8},
        "objective": {"name": "dsm-fp", "path": "vp", "prediction": "eps", "fp_weight": 0.1},
    }
    opts = dict(iterations=4, batch_size=32, ckpt_every=2, log_every=1, quiet=True, tensorboard=False)
    tr = make_trainer(cfg, tmp_path / "run", **opts)
    tr.fit(2)
    tr.save()
    resumed = make_trainer(cfg, tmp_path / "run", resume=True, **opts)
    assert resumed.step == 2
    resumed.fit()
    m = load(str(tmp_path / "run"))
    assert m.denoiser.prediction == "eps" and m.spec["objective"]["fp_weight"] == 0.1
