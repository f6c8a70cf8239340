"""Tests of InstaFlow-style distillation (:class:`pfode.train.distill.Distillation`, objective ``"distill"``).

Truth: on a Gaussian target the teacher's pair map ``z -> x0`` is the exact flow map
(:meth:`pfode.analytic.Gaussian.flow_map`, see ``test_rectified_diffusion.py``); a student that outputs it
has zero loss under every distance, anything else a positive one, and its 1- or k-step sampler returns the
teacher's samples.
"""

from __future__ import annotations

import pytest
import torch
from test_rectified_diffusion import exact_pairs, rectified_net

from pfode.cli import main
from pfode.models import load
from pfode.nets import MLP
from pfode.paths import get_path
from pfode.train import Trainer
from pfode.train.config import check_config
from pfode.train.distill import (
    Distillation,
    RandomFourierFeatures,
    RectifiedDiffusion,
    distill_config,
    uniform_times,
)
from pfode.train.losses import get_objective


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("distance", ["l2", "pseudo-huber", "features"])
@pytest.mark.parametrize("path_name, prediction, nfe", [("linear", "velocity", 1), ("linear", "velocity", 3),
                                                        ("cosine", "eps", 1), ("vp", "x0", 2)])  # fmt: skip
def test_exact_minimiser_is_the_pair_map(distance, path_name, prediction, nfe):
    path = get_path(path_name)
    obj = Distillation(path, prediction, distance=distance, nfe=nfe)
    assert obj.times.numel() == nfe and float(obj.times[0]) == path.t_max
    x0, z = exact_pairs(path, 128, seed=2)
    prep = obj.prepare((x0, z), torch.Generator().manual_seed(0))
    assert set(prep["t"].tolist()) <= set(obj.times.tolist())
    net = rectified_net(path, prediction, obj.s_start)  # outputs the pair's x0 on its first-order path
    best, per = obj.loss(net, prep)
    assert float(per.abs().max()) < 1e-10
    g = torch.Generator().manual_seed(1)
    for scale in (1e-3, 1e-1):
        d = scale * torch.randn(2, generator=g, dtype=torch.float64)
        worse = float(obj.loss(lambda x, t, d=d: net(x, t) + d * (1 if prediction != "eps" else 0.01), prep)[0])
        assert worse > float(best) + 1e-12
    # the student's sampler with the trained number of steps reproduces the teacher's samples
    assert float((obj.sample(net, z) - x0).abs().max()) < 1e-9


def test_features_distance_is_mse_over_bandwidth_squared_for_small_errors():
    phi = RandomFourierFeatures(dim=20000, bandwidth=0.5, seed=3)
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = 1e-3 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = (phi(x + d) - phi(x)).pow(2).sum(1)
    want = d.reshape(64, -1).pow(2).mean(1) / 0.5**2
    assert torch.allclose(got, want, rtol=0.1)
    far = (phi(x + 100.0) - phi(x)).pow(2).sum(1)  # bounded: ~2 for unrelated points
    assert torch.allclose(far, torch.full_like(far, 2.0), atol=0.1)


def test_custom_feature_network_distance():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 5))
    obj = Distillation("linear", "velocity", distance="features", features=net)
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    want = (net(a) - net(b)).pow(2).mean(1)
    assert torch.allclose(obj.distance_per_sample(a, b), want)
    assert obj.spec()["features"] == "callable"


def test_distillation_without_pairs_is_refused():
    with pytest.raises(ValueError, match="paired coupling"):
        Distillation(coupling="independent")
    obj = Distillation()
    with pytest.raises(ValueError, match="no paired noise"):
        obj.prepare(torch.randn(8, 2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pair"):
        Trainer(MLP((2,), width=8, depth=1), obj, torch.randn(16, 2), {"batch_size": 8})
    with pytest.raises(ValueError, match="pair store"):
        Trainer(MLP((2,), width=8, depth=1), obj, None, {"batch_size": 8})


def test_bad_arguments():
    with pytest.raises(ValueError, match="distance='lpips'"):
        Distillation(distance="lpips")
    with pytest.raises(ValueError, match="nfe=0"):
        Distillation(nfe=0)
    with pytest.raises(ValueError, match="decrease"):
        Distillation(times=[0.2, 0.5])
    with pytest.raises(ValueError, match="features="):
        Distillation(distance="l2", features={"dim": 8})
    with pytest.raises(ValueError, match="features.kind"):
        Distillation(distance="features", features={"kind": "lpips"})
    with pytest.raises(ValueError, match="unknown features key"):
        Distillation(distance="features", features={"width": 3})
    with pytest.raises(TypeError, match="features must be"):
        Distillation(distance="features", features=3)
    with pytest.raises(ValueError, match="prediction"):
        Distillation(prediction="noise")
    assert torch.allclose(uniform_times(get_path("linear"), 2), torch.tensor([0.999, 0.5], dtype=torch.float64))


def _pairs(n=64):
    x0, z = exact_pairs(get_path("linear"), n, seed=4)
    return x0.float(), z.float()


@pytest.mark.parametrize("objective", ["distill", "rectified-diffusion"])
def test_checkpoint_and_resume_continue_the_same_run(tmp_path, objective):
    opts = {"distance": "pseudo-huber", "nfe": 2} if objective == "distill" else {"path": "cosine"}
    cfg = {"iterations": 6, "batch_size": 16, "lr": 1e-3, "ckpt_every": 3, "quiet": True, "log_every": 0}

    def trainer(out, resume=False, iterations=6):
        torch.manual_seed(0)
        obj = get_objective(objective, coupling="paired", **opts)
        return Trainer(MLP((2,), width=16, depth=1), obj, _pairs(), {**cfg, "iterations": iterations}, out,
                       resume=resume)  # fmt: skip

    full = trainer(tmp_path / "a")
    full.fit()
    part = trainer(tmp_path / "b", iterations=3)
    part.fit()
    again = trainer(tmp_path / "b", resume=True)
    assert again.step == 3
    again.fit()
    assert [r["loss"] for r in again.history] == [r["loss"] for r in full.history[3:]]
    for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    model = load(tmp_path / "b")  # the checkpoint describes its denoiser
    assert model.denoiser.prediction == ("velocity" if objective == "distill" else "eps")


def test_config_keys_are_strict():
    cfg = {
        "data": {"name": "reflow-pairs", "path": "pairs"},
        "model": {"name": "mlp", "width": 16, "depth": 1},
        "objective": {"name": "distill", "distance": "features", "features": {"dim": 64}, "coupling": "reflow"},
        "train": {"iterations": 3},
    }
    check_config(cfg)
    with pytest.raises(ValueError, match="objective.weighting"):
        check_config({**cfg, "objective": {**cfg["objective"], "weighting": "snr"}})
    with pytest.raises(ValueError, match="features"):
        check_config({**cfg, "objective": {**cfg["objective"], "features": {"dims": 64}}})
    with pytest.raises(ValueError, match="paired coupling"):
        check_config({**cfg, "objective": {**cfg["objective"], "coupling": "independent"}})
    reflow = {**cfg, "objective": {"name": "flow-matching", "coupling": "reflow", "metric": "pseudo-huber"}}
    d = distill_config(reflow, "p2", "l2")
    assert d["objective"] == {"name": "distill", "path": "linear", "prediction": "velocity", "distance": "l2",
                              "coupling": "reflow"}  # fmt: skip
    check_config(d)
    with pytest.raises(ValueError, match="distillation follows"):
        distill_config({**cfg, "objective": {"name": "consistency-training"}}, "p2")


def test_rectified_and_distill_objectives_by_name():
    assert isinstance(get_objective("distill"), Distillation)
    assert isinstance(get_objective("rectified-diffusion", path="cosine"), RectifiedDiffusion)


def test_cli_reflow_then_distill_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["reflow", "--teacher", "builtin:moons", "--out", "r", "--pairs", "32", "--pair-batch", "16",
            "--solver", "euler", "--nfe", "2", "--iterations", "2", "--batch-size", "16", "--sample-every", "0",
            "--quiet", "--distill", "--distance", "pseudo-huber", "--ckpt-every", "2", "--no-tensorboard"]  # fmt: skip
    assert main([*argv, "--distill-iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "32 reflow-student pairs" in out and "distilled (pseudo-huber) iterations 0..2" in out
    assert main([*argv, "--distill-iterations", "4", "--resume"]) == 0
    assert "distilled (pseudo-huber) iterations 2..4" in capsys.readouterr().out
    student = load(tmp_path / "r" / "distill")
    assert student.spec["objective"]["name"] == "distill" and student.denoiser.prediction == "velocity"
    assert main(["reflow", "--out", "r2", "--distance", "l2"]) != 0  # --distance needs --distill


@pytest.mark.parametrize("name", ["moons_instaflow.yaml", "digits_rectified.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from pfode.io import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / name)
    check_config(cfg)
    assert cfg["objective"]["name"] in ("distill", "rectified-diffusion")
