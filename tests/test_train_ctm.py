"""Consistency trajectory models (pfode.nets.ctm, pfode.train.ctm) against the exact Gaussian flow map."""

import pytest
import torch
from torch import nn

import pfode
from pfode import analytic, metrics
from pfode.nets import MLP
from pfode.nets.ctm import CTMModel, TwoTimeMLP, ctm_sample, ctm_times, jump_coefficients
from pfode.paths import get_path
from pfode.train import CTM, get_objective
from pfode.train.config import check_config, make_trainer


def _maxdiff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


GAUSS = analytic.Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.30, 0.10], [0.10, 0.20]]))


class ExactCTM(CTMModel):
    """``G(x, t, s)`` = the exact PF-ODE flow map of ``target`` (float64); ``g`` the matching DDIM estimate."""

    def __init__(self, target, path, t_min=None, t_max=None, eps=0.0):
        super().__init__(nn.Identity(), path, t_min=t_min, t_max=t_max)
        self.target, self.eps = target, eps

    def forward(self, x, t, s=None, output="G"):
        if s is None:
            return super().forward(x, t, s)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
        G = self.target.flow_map(x, t, s, self.path) + self.eps * torch.sin(3 * x) * (t - s)[:, None]
        if output == "G":
            return G
        a, b = jump_coefficients(self.path, t, s)
        same = (b == 0)[:, None]
        x0 = self.target.x0_eps(x, t, self.path)[0] + self.eps * torch.cos(2 * x)
        return torch.where(same, x0, (G - a[:, None] * x) / torch.where(same, 1.0, b[:, None]))


@pytest.mark.parametrize("path", ["linear", "vp", "edm"])
def test_exact_flow_map_has_zero_soft_consistency(path):
    p = get_path(path)
    obj = CTM(p, teacher=GAUSS.denoiser(p), steps=12)
    exact = ExactCTM(GAUSS, p, *obj.t_range)
    g = torch.Generator().manual_seed(0)
    batch = obj.prepare(GAUSS.sample(256, g), g)
    t, u, s = batch["path_t"][:, 0], batch["path_t"][:, -1], batch["s"]
    c = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x_t = c[0] * batch["x0"] + c[1] * batch["eps"]
    x_u = GAUSS.flow_map(x_t, t, u, p)  # an exact teacher
    est, target = obj.consistency_pair(exact, x_t, t, u, x_u, s, target_model=exact)
    assert float((est - target).abs().max()) < 1e-9
    want = GAUSS.flow_map(x_t, t, torch.full_like(t, obj.t_range[0]), p)
    assert float((est - want).abs().max()) < 1e-9
    # a perturbed student breaks it
    bad = ExactCTM(GAUSS, p, *obj.t_range, eps=0.05)
    est_b, target_b = obj.consistency_pair(bad, x_t, t, u, x_u, s, target_model=exact)
    assert float((est_b - target_b).pow(2).mean()) > 1e-5


def test_loss_with_a_heun_teacher_converges_to_zero_and_is_minimal():
    """With the Heun teacher the exact G's loss is the teacher's error: one step of size h has local error
    O(h^3), so the squared loss falls 64x per halving of h (at least 30x here)."""
    p = get_path("vp")
    obj = CTM(p, teacher=GAUSS.denoiser(p), steps=8, dsm_weight=0.0)
    exact = ExactCTM(GAUSS, p, *obj.t_range)
    bad = ExactCTM(GAUSS, p, *obj.t_range, eps=0.05)
    g = torch.Generator().manual_seed(1)
    x0, eps = GAUSS.sample(512, g), torch.randn(512, 2, generator=g, dtype=torch.float64)
    t = torch.full((512,), 0.6, dtype=torch.float64)
    losses = []
    for h in (0.2, 0.1, 0.05):
        batch = {"x0": x0, "eps": eps, "path_t": torch.stack([t, t - h], 1), "s": t - h}
        losses.append(float(obj.loss(exact, batch, target_model=exact)[0]))
    assert losses[0] / losses[1] > 30 and losses[1] / losses[2] > 30, losses
    assert float(obj.loss(bad, batch, target_model=exact)[0]) > 30 * losses[-1]


def test_dsm_head_is_minimal_at_the_exact_denoiser():
    p = get_path("linear")
    obj = CTM(p, teacher=GAUSS.denoiser(p), steps=8)
    g = torch.Generator().manual_seed(2)
    batch = obj.prepare(GAUSS.sample(2048, g), g)
    exact = ExactCTM(GAUSS, p, *obj.t_range)
    bad = ExactCTM(GAUSS, p, *obj.t_range, eps=0.05)
    batch["path_t"] = batch["path_t"][:, :1].repeat(1, 2)  # t = u and s = t: the consistency term vanishes
    batch["s"] = batch["path_t"][:, 0]
    l_exact = float(obj.loss(exact, batch, target_model=exact)[0])
    l_bad = float(obj.loss(bad, batch, target_model=exact)[0])
    assert l_bad > l_exact > 0


def test_gamma_sampling_with_the_exact_jump():
    p = get_path("linear")
    exact = ExactCTM(GAUSS, p)
    z = torch.randn(6000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_T = float(p.sigma(torch.tensor(p.t_max))) * z
    times = ctm_times(exact, 3)
    det = ctm_sample(exact, x_T, times)  # gamma = 0: follows the ODE
    assert _maxdiff(det, GAUSS.flow_map(x_T, p.t_max, p.t_min, p)) < 1e-9
    a, s = p.alpha(torch.tensor(p.t_min)), p.sigma(torch.tensor(p.t_min))
    mean, cov = a * GAUSS.mean, a * a * GAUSS.cov + s * s * torch.eye(2, dtype=torch.float64)
    for gamma in (0.5, 1.0):  # stochastic jumps keep the marginals of the exact model
        x = ctm_sample(exact, x_T, times, gamma=gamma, generator=torch.Generator().manual_seed(4))
        w2 = metrics.w2_gaussian(x.mean(0), torch.cov(x.T), mean, cov)
        assert w2 < 0.03, (gamma, w2)
        assert float((x - det).abs().mean()) > 0.01  # and are not the deterministic samples
    assert torch.equal(pfode.sample(exact, x_T, nfe=3), det)  # pfode.sample dispatches to the jumps


def test_ctm_model_parameterisation_and_plain_call_error():
    p = get_path("vp")
    torch.manual_seed(0)
    net = TwoTimeMLP((2,), width=16, depth=1, time_dim=8)
    nn.init.normal_(net.out.weight)
    model = CTMModel(net, p)
    x = torch.randn(5, 2)
    t = torch.full((5,), 0.7, dtype=torch.float64)
    assert _maxdiff(model(x, t, t), x) < 1e-6  # G(x, t, t) = x
    s = torch.full((5,), 0.3, dtype=torch.float64)
    g = model(x, t, s, output="g")
    assert _maxdiff(model(x, t, s), model.jump(x, t, s, g)) < 1e-6
    with pytest.raises(TypeError, match="second time|target time s"):
        model(x, t)
    with pytest.raises(TypeError, match="target time s"):
        pfode.Denoiser(model, p, "x0")(x, t)
    with pytest.raises(TypeError, match="second time s"):
        net(x, t)
    x0, _ = model.denoiser()(x, t)  # the DSM head is a plain denoiser
    assert _maxdiff(x0, model(x, t, t, output="g")) < 1e-6
    with pytest.raises(ValueError, match="not supported"):
        pfode.sample(model, x, nfe=2, return_info=True)


def test_errors():
    p = get_path("linear")
    with pytest.raises(TypeError, match="teacher"):
        CTM(p)
    teacher = GAUSS.denoiser(p)
    with pytest.raises(ValueError, match="heun_steps"):
        CTM(p, teacher=teacher, steps=5, heun_steps=5)
    with pytest.raises(ValueError, match="t_range"):
        CTM(p, teacher=teacher, t_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="spacing"):
        CTM(p, teacher=teacher, spacing="log")
    with pytest.raises(TypeError, match="second time"):
        CTM(p, teacher=teacher).wrap(MLP((2,), width=8, depth=1, time_dim=8))
    with pytest.raises(ValueError, match="gamma"):
        ctm_sample(ExactCTM(GAUSS, p), torch.zeros(2, 2), nfe=1, gamma=1.5)
    assert isinstance(get_objective("ctm", teacher=teacher), CTM)


def _cfg(teacher, **objective):
    return {
        "data": {"name": "toy2d", "kind": "moons", "n": 512, "seed": 0},
        "model": {"name": "ctm-mlp", "width": 32, "depth": 1, "time_dim": 16},
        "objective": {"name": "ctm", "teacher": {"checkpoint": teacher}, "steps": 8, "spacing": "uniform", **objective},
        "train": {
            "iterations": 4,
            "batch_size": 64,
            "lr": 1e-3,
            "quiet": True,
            "log_every": 1,
            "ckpt_every": 2,
            "tensorboard": False,
        },
    }


def test_config_strict_keys():
    check_config(_cfg("builtin:moons", heun_steps=3))
    with pytest.raises(ValueError, match="objective.gama"):
        check_config(_cfg("builtin:moons", gama=0.5))
    with pytest.raises(ValueError, match="heun_steps"):
        check_config(_cfg("builtin:moons", heun_steps=0))
    cfg = _cfg("builtin:moons")
    del cfg["objective"]["teacher"]
    with pytest.raises(ValueError, match="teacher"):
        check_config(cfg)


def test_trainer_checkpoint_resume_load_and_sample(tmp_path):
    cfg = _cfg("builtin:moons", heun_steps=2)
    full = make_trainer(cfg, tmp_path / "full")
    full.fit()
    part = make_trainer(cfg, tmp_path / "part", iterations=2)
    part.fit()
    resumed = make_trainer(cfg, tmp_path / "part", resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[2:]]
    loaded = pfode.models.load(tmp_path / "full")
    assert isinstance(loaded.net, CTMModel)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="target time s"):
        loaded.denoiser(z, 0.5)
    x = pfode.sample(loaded.denoiser, z, nfe=2)
    assert torch.equal(x, ctm_sample(loaded.net, z, nfe=2))
    x_ema = full.objective.sample(full.ema, z, nfe=2, gamma=0.3, generator=torch.Generator().manual_seed(1))
    assert x_ema.shape == (8, 2) and bool(torch.isfinite(x_ema).all())
