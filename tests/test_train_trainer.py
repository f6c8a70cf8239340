"""The training loop: schedule, clipping, EMA, outputs, bad input, configs, and DDP (2 CPU processes with
torchrun, gloo) against one process with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfode.data import toy2d
from pfode.io import load_config
from pfode.models import load
from pfode.nets import MLP, UNet
from pfode.train import (
    Consistency,
    DenoisingScoreMatching,
    FlowMatching,
    TrainConfig,
    Trainer,
    read_checkpoint,
)
from pfode.train.config import SECTIONS, build, make_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DATA = toy2d("checkerboard", 512, seed=0)


def _net(width=16):
    torch.manual_seed(0)
    return MLP((2,), width=width, depth=1, time_dim=8)


def test_lr_warmup_and_cosine():
    tr = Trainer(
        _net(), FlowMatching(), DATA, {"iterations": 110, "lr": 1.0, "warmup_steps": 10, "lr_schedule": "cosine"}
    )
    assert [tr.lr_at(k) for k in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert tr.lr_at(60) == pytest.approx(0.5) and tr.lr_at(109) == pytest.approx(0.0, abs=1e-3)
    const = Trainer(_net(), FlowMatching(), DATA, {"iterations": 10, "lr": 0.5})
    assert const.lr_at(0) == const.lr_at(9) == 0.5


def test_gradient_clipping_bounds_the_update():
    cfg = {
        "iterations": 1,
        "batch_size": 64,
        "lr": 1.0,
        "optimizer": "sgd",
        "betas": (0.0, 0.0),
        "grad_clip": 1e-3,
    }
    tr = Trainer(_net(), FlowMatching(), DATA * 100, cfg)
    before = torch.cat([p.detach().flatten().clone() for p in tr.model.parameters()])
    rec = tr.train_step()
    after = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert rec["grad_norm"] > 1e-3  # the pre-clipping norm is reported
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-4)


def test_ema_update():
    tr = Trainer(_net(), FlowMatching(), DATA, {"iterations": 1, "batch_size": 64, "ema_decay": 0.75})
    p0 = [p.detach().clone() for p in tr.model.parameters()]
    tr.train_step()
    for e, a, b in zip(tr.ema.parameters(), p0, tr.model.parameters()):
        assert torch.allclose(e, 0.75 * a + 0.25 * b, atol=1e-7)


def test_outputs_csv_and_sample_plots(tmp_path):
    cfg = {
        "iterations": 6,
        "batch_size": 64,
        "log_every": 2,
        "sample_every": 3,
        "sample_n": 64,
        "sample_nfe": 2,
        "quiet": True,
    }
    tr = Trainer(_net(), FlowMatching(), DATA, cfg, tmp_path)
    tr.fit()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,grad_norm,elapsed_s" and [r.split(",")[0] for r in rows[1:]] == [
        "2",
        "4",
        "6",
    ]
    pngs = sorted(os.listdir(tmp_path / "samples"))
    assert pngs == ["step-00000003.png", "step-00000006.png"]
    assert (tmp_path / "samples" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # image data: an image grid
    img = torch.rand(64, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    ti = Trainer(
        UNet((1, 8, 8), base=8, mults=(1,)), DenoisingScoreMatching("vp", "eps"), img, {**cfg, "iterations": 3}
    )
    assert ti.sample_plot(tmp_path / "grid.png").exists()


def test_bf16_autocast_on_request():
    tr = Trainer(
        _net(), FlowMatching(), DATA, {"iterations": 2, "batch_size": 64, "precision": "bf16", "quiet": True}
    )
    assert tr.amp and all(torch.isfinite(torch.tensor(h["loss"])) for h in tr.fit())
    assert Trainer(_net(), FlowMatching(), DATA, {"iterations": 1}).amp is False  # off on the CPU by default


def test_bad_input_messages(monkeypatch):
    with pytest.raises(
        ValueError, match=r"dataset samples have shape \(64,\) but the network expects \(2,\)"
    ):
        Trainer(_net(), FlowMatching(), torch.randn(100, 64), {"batch_size": 10})
    with pytest.raises(ValueError, match=r"dataset samples have shape \(1, 8, 8\).*\(1, 28, 28\)"):
        Trainer(UNet((1, 28, 28), base=8), FlowMatching(), torch.randn(100, 1, 8, 8), {"batch_size": 10})

    class Plain(torch.nn.Module):  # no data_shape: the probe forward pass reports the failure
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, t):
            return self.lin(x)

    with pytest.raises(ValueError, match=r"cannot be trained on dataset samples of shape \(2,\)"):
        Trainer(Plain(), FlowMatching(), DATA, {"batch_size": 10})
    with pytest.raises(ValueError, match="fewer than batch_size=1000"):
        Trainer(_net(), FlowMatching(), DATA, {"batch_size": 1000})
    with pytest.raises(ValueError, match="unknown training options.*valid options"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="train.steps was renamed to train.iterations"):
        TrainConfig.from_dict({"steps": 3})

    def two_procs(self):
        self.rank, self.world, self.local_rank = 0, 2, 0

    monkeypatch.setattr(Trainer, "_setup_dist", two_procs)
    with pytest.raises(ValueError, match="batch_size=63 cannot be split evenly across 2 processes"):
        Trainer(_net(), FlowMatching(), DATA, {"batch_size": 63})


def test_consistency_objective_trains_and_samples():
    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1, time_dim=8, log_time=True, time_scale=250.0)
    obj = Consistency("edm", steps=10)
    tr = Trainer(net, obj, DATA, {"iterations": 3, "batch_size": 64, "quiet": True})
    tr.fit()
    x = obj.sample(tr.ema, torch.randn(20, 2), nfe=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20, 2) and torch.isfinite(x).all()


def test_shipped_configs_parse_and_build():
    cfgs = sorted((ROOT / "configs").glob("*.yaml"))
    assert cfgs, "configs/ holds the training configurations"
    for p in cfgs:
        cfg = load_config(p)
        assert set(cfg) <= set(SECTIONS), p
        if "teacher" in cfg["objective"] or cfg["data"]["name"] == "reflow-pairs":
            continue  # they need a trained teacher / generated pairs
        b = build(cfg)
        assert b["data"].shape[1:] == tuple(b["model"].data_shape), p
        TrainConfig.from_dict(cfg.get("train", {}))


def _ddp_config(tmp_path):
    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 512, "seed": 0},
        "model": {"name": "mlp", "width": 32, "depth": 2, "time_dim": 16},
        "objective": {"name": "flow-matching", "coupling": "minibatch-ot", "time_sampler": "logit-normal"},
        "train": {"iterations": 5, "batch_size": 64, "lr": 1e-3, "quiet": True, "log_every": 1, "ema_decay": 0.9},
    }
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    return p, cfg


def test_ddp_two_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    path, cfg = _ddp_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "pfode.train", str(path), "--out", str(tmp_path / "ddp"), "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    single = make_trainer(cfg, tmp_path / "one")  # batch 64 in one process = 2 x 32 above
    single.fit()
    a = read_checkpoint(tmp_path / "ddp" / "checkpoints")
    b = read_checkpoint(tmp_path / "one" / "checkpoints")
    assert a.meta["world_size"] == 2 and b.meta["world_size"] == 1 and a.step == b.step == 5
    for k in b.tensors:
        if k.startswith(("model/", "ema/")):
            assert torch.allclose(a.tensors[k], b.tensors[k], rtol=1e-5, atol=1e-6), k
    la = [float(r.split(",")[1]) for r in (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()[1:]]
    lb = [float(r.split(",")[1]) for r in (tmp_path / "one" / "metrics.csv").read_text().splitlines()[1:]]
    assert la == pytest.approx(lb, rel=1e-5)


def test_distillation_config_loads_its_teacher_from_a_checkpoint(tmp_path):
    teacher_cfg = {
        "data": {"name": "toy2d", "kind": "8gaussians", "n": 256},
        "model": {"name": "mlp", "width": 16, "depth": 1, "time_dim": 8},
        "objective": {"name": "dsm", "path": "cosine", "prediction": "v", "weighting": "snr"},
        "train": {"iterations": 2, "batch_size": 64, "quiet": True},
    }
    make_trainer(teacher_cfg, tmp_path / "teacher").fit()
    student_cfg = {
        "data": {"name": "toy2d", "kind": "8gaussians", "n": 256},
        "model": {"name": "mlp", "width": 16, "depth": 1, "time_dim": 8, "log_time": True},
        "objective": {
            "name": "consistency-distillation",
            "path": "edm",
            "steps": 8,
            "teacher": {"checkpoint": str(tmp_path / "teacher" / "checkpoints")},
        },
        "train": {"iterations": 2, "batch_size": 64, "quiet": True},
    }
    st = make_trainer(student_cfg, tmp_path / "student")
    teacher = st.objective.teacher
    assert teacher.prediction == "v" and type(teacher.path).__name__ == "VPCosine"
    st.fit()
    m = load(tmp_path / "student")
    assert m.spec["objective"]["name"] == "consistency-distillation"
    assert m.denoiser.prediction == "x0" and m.denoiser.path.spec() == st.objective.path.spec()
    z = torch.randn(8, 2)
    assert torch.equal(st.objective.sample(m.net, z, nfe=1), st.objective.sample(st.ema, z, nfe=1))
