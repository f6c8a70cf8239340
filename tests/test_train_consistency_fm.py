"""Consistency Flow Matching (pfode.train.consistency_fm) against the exact Gaussian flow map."""

import pytest
import torch

import pfode
from pfode import analytic
from pfode.nets import MLP
from pfode.paths import get_path
from pfode.train import ConsistencyFM, Trainer, get_objective
from pfode.train.config import check_config, make_trainer

GAUSS = analytic.Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.30, 0.10], [0.10, 0.20]]))


def exact_velocity(obj: ConsistencyFM, target: analytic.Gaussian):
    """The straight-segment velocity of the exact flow map: ``v*(x, t) = (Phi_{t -> b}(x) - x) / (b - t)``,
    ``b`` the end of ``t``'s segment -- a minimiser of the Consistency-FM loss."""

    def net(x, t):
        t = t.to(torch.float64)
        end = obj.segment_end(t)
        x64 = x.to(torch.float64)
        phi = target.flow_map(x64, t, end, obj.path)
        x0, eps = target.x0_eps(x64, t, obj.path)  # at the segment's end: the PF-ODE velocity (the limit)
        u = obj.path.d_alpha(t)[:, None] * x0 + obj.path.d_sigma(t)[:, None] * eps
        h = (end - t)[:, None]
        return torch.where(h == 0, u, (phi - x64) / torch.where(h == 0, 1.0, h)).to(x.dtype)

    return net


def perturbed(net, eps=0.05):
    def out(x, t):
        return net(x, t) + eps * torch.sin(3 * x + t[:, None].to(x.dtype))

    return out


@pytest.mark.parametrize("path", ["linear", "vp", "trig"])
@pytest.mark.parametrize("segments", [1, 3])
def test_exact_flow_map_has_zero_f_violation(path, segments):
    obj = ConsistencyFM(path, segments=segments, t_range=(0.05, 0.95) if path == "vp" else None)
    g = torch.Generator().manual_seed(0)
    n = 256
    x0, eps = GAUSS.sample(n, g), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = obj.prepare(x0, g)["t"]
    end = obj.segment_end(t)
    r = end + 0.4 * (t - end)  # a later point of the same segment
    x_t = obj._state(x0, eps, t)
    x_r = GAUSS.flow_map(x_t, t, r, obj.path)  # on the exact PF-ODE trajectory through x_t
    v = exact_velocity(obj, GAUSS)
    df, dv = obj.violation(v, x_t, t, x_r, r)
    assert float(df.max()) < 1e-20
    # the velocity term vanishes only for straight trajectories: a Gaussian of width ~0.5 has curved ones
    assert float(dv.mean()) > 1e-3
    # the perturbed field violates consistency
    df_p, _ = obj.violation(perturbed(v), x_t, t, x_r, r)
    assert float(df_p.mean()) > 1e-5


def test_velocity_consistency_vanishes_on_straight_flows():
    """A nearly point-like target on the Linear path has straight trajectories: both violations vanish."""
    point = analytic.Gaussian(torch.tensor([0.7, -0.2]), 1e-12 * torch.eye(2, dtype=torch.float64))
    obj = ConsistencyFM("linear", segments=2)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(128, 2, generator=g, dtype=torch.float64)
    t = torch.full((128,), 0.9, dtype=torch.float64)
    x_t = point.flow_map(x_t, torch.ones(128, dtype=torch.float64), t, obj.path)
    r = torch.full((128,), 0.6, dtype=torch.float64)
    x_r = point.flow_map(x_t, t, r, obj.path)
    df, dv = obj.violation(exact_velocity(obj, point), x_t, t, x_r, r)
    assert float(df.max()) < 1e-18 and float(dv.max()) < 1e-10


@pytest.mark.parametrize("boundary", [0.0, 0.1])
def test_exact_solution_minimises_the_loss(boundary):
    obj = ConsistencyFM("linear", segments=2, boundary=boundary, alpha=1e-5)
    g = torch.Generator().manual_seed(2)
    batch = obj.prepare(GAUSS.sample(4096, g), g)
    exact = exact_velocity(obj, GAUSS)
    loss_exact, _ = obj.loss(exact, batch, target_model=exact)
    for eps in (0.02, -0.05, 0.1):
        loss_p, _ = obj.loss(perturbed(exact, eps), batch, target_model=exact)
        assert float(loss_p) > float(loss_exact) + 0.1 * eps**2 / 12
    if boundary == 0.0:  # without the data-end anchor the exact solution has (almost) zero loss: O(delta^2)
        assert float(loss_exact) < 1e-5


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_one_euler_step_per_segment_reproduces_the_flow_map(segments):
    obj = ConsistencyFM("linear", segments=segments)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []
    exact = exact_velocity(obj, GAUSS)

    def counted(x, t):
        calls.append(1)
        return exact(x, t)

    x = obj.sample(counted, z)
    assert len(calls) == segments
    want = GAUSS.flow_map(z, 1.0, 0.0, obj.path)
    assert float((x - want).abs().max()) < 1e-9
    assert obj.sample_grid(2 * segments).numel() == 2 * segments + 1
    assert set(obj.boundaries().tolist()) <= set(obj.sample_grid(2 * segments).tolist())


def test_errors():
    with pytest.raises(ValueError, match="segments"):
        ConsistencyFM(segments=0)
    with pytest.raises(TypeError, match="segments"):
        ConsistencyFM(segments=2.0)
    with pytest.raises(ValueError, match="delta"):
        ConsistencyFM(segments=4, delta=0.3)
    with pytest.raises(ValueError, match="boundary"):
        ConsistencyFM(boundary=1.5)
    with pytest.raises(ValueError, match="target"):
        ConsistencyFM(target="online")
    with pytest.raises(ValueError, match="t_range"):
        ConsistencyFM(t_range=(0.5, 0.2))
    assert isinstance(get_objective("consistency-fm", segments=2), ConsistencyFM)


def _cfg(**objective):
    return {
        "data": {"name": "toy2d", "kind": "moons", "n": 512, "seed": 0},
        "model": {"name": "mlp", "width": 32, "depth": 1, "time_dim": 16},
        "objective": {"name": "consistency-fm", "segments": 2, **objective},
        "train": {
            "iterations": 6,
            "batch_size": 64,
            "lr": 1e-3,
            "quiet": True,
            "log_every": 1,
            "ckpt_every": 3,
            "tensorboard": False,
        },
    }


def test_config_strict_keys():
    check_config(_cfg(alpha=1e-4, target="ema"))
    with pytest.raises(ValueError, match="objective.segmentz"):
        check_config(_cfg(segmentz=2))
    with pytest.raises(ValueError, match="segments"):
        check_config(_cfg(segments=0))


def test_trainer_checkpoint_resume_and_load(tmp_path):
    full = make_trainer(_cfg(), tmp_path / "full")
    full.fit()
    part = make_trainer(_cfg(), tmp_path / "part", iterations=3)
    part.fit()
    resumed = make_trainer(_cfg(), tmp_path / "part", resume=True)
    assert resumed.step == 3
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[3:]]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)
    model = pfode.models.load(tmp_path / "full")
    assert model.denoiser.prediction == "velocity"
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    obj = get_objective("consistency-fm", segments=2)
    x = obj.sample(model.net, z)
    assert x.shape == (16, 2) and bool(torch.isfinite(x).all())


def test_trainer_with_ema_target_runs():
    obj = ConsistencyFM(segments=2, target="ema")
    data = analytic.Gaussian(torch.zeros(2), torch.eye(2)).sample(256).float()
    torch.manual_seed(0)
    tr = Trainer(
        MLP((2,), width=16, depth=1, time_dim=8),
        obj,
        data,
        {"iterations": 3, "batch_size": 64, "quiet": True, "log_every": 0},
    )
    hist = tr.fit(save_final=False)
    assert len(hist) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert get_path("linear").t_hi == obj.t_range[1]
