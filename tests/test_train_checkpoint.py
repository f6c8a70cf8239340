"""Checkpoints: bit-exact round trip, exact resume, strict key/shape/dtype checks, refusal of pickles,
atomic writes and the NaN-loss stop."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pfode import checkpoint as C
from pfode.data import toy2d
from pfode.nets import MLP
from pfode.train import (
    CheckpointError,
    FlowMatching,
    NonFiniteLossError,
    Trainer,
    load_weights,
    read_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DATA = toy2d("moons", 1024, seed=0)
CFG = dict(iterations=24, batch_size=64, lr=2e-3, warmup_steps=5, ema_decay=0.9, log_every=1, quiet=True)


def _trainer(out, resume=False, width=32, coupling="minibatch-ot", **cfg):
    torch.manual_seed(0)
    net = MLP((2,), width=width, depth=2, time_dim=16)
    obj = FlowMatching(coupling=coupling, time_sampler="logit-normal")
    return Trainer(net, obj, DATA, {**CFG, **cfg}, out, resume=resume)


def _all_tensors(tr):
    return tr.state_tensors()[0]


def _losses(out):
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    return [tuple(r.split(",")[:4]) for r in rows]  # without the wall-clock column


def test_round_trip_is_bit_exact(tmp_path):
    a = _trainer(tmp_path / "a")
    a.fit(10)
    path = a.save()
    b = _trainer(tmp_path / "b")
    b.load(path)
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert (
        b.step == 10 and b.optimizer.state_dict()["param_groups"] == a.optimizer.state_dict()["param_groups"]
    )
    a.fit(14)
    b.fit(14)
    assert [h["loss"] for h in a.history[-4:]] == [h["loss"] for h in b.history[-4:]]


def test_resume_equals_uninterrupted(tmp_path):
    full = _trainer(tmp_path / "full", ckpt_every=8)
    full.fit()
    part = _trainer(tmp_path / "part", ckpt_every=8)
    part.fit(13, save_final=False)  # interrupted after 13 steps; the last checkpoint is step 8
    resumed = _trainer(tmp_path / "part", resume=True, ckpt_every=8)
    assert resumed.step == 8
    resumed.fit()
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    tf, tr = _all_tensors(full), _all_tensors(resumed)
    assert all(torch.equal(tf[k], tr[k]) for k in tf)
    a = read_checkpoint(tmp_path / "full" / "checkpoints")
    b = read_checkpoint(tmp_path / "part" / "checkpoints")
    assert a.step == b.step == 24 and a.meta["sha256"] == b.meta["sha256"]


def test_resume_refuses_changed_settings(tmp_path):
    _trainer(tmp_path / "r").fit(4)
    with pytest.raises(CheckpointError, match=r"batch_size: 64 -> 32.*lr: 0.002 -> 0.001"):
        _trainer(tmp_path / "r", resume=True, batch_size=32, lr=1e-3)
    assert _trainer(tmp_path / "r", resume=True, iterations=30).step == 4  # more iterations is fine


def test_wrong_and_missing_keys_are_listed(tmp_path):
    a = _trainer(tmp_path / "a")
    a.fit(2)
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path / "b", width=48).load(a.last_checkpoint)
    msg = str(e.value)
    assert "model weights" in msg and "inp.weight: shape (32, 2) in the checkpoint, (48, 2) expected" in msg
    # a checkpoint lacking keys, with an extra one
    tensors, ometa = a.state_tensors()
    tensors.pop("model/out.bias")
    tensors.pop("ema/blocks.0.lin1.weight")
    tensors["model/extra"] = torch.zeros(3)
    meta = json.loads(open(a.last_checkpoint).read())
    keep = {k: meta[k] for k in ("config", "optimizer")}
    p = C.save_checkpoint(tmp_path / "edited", 2, tensors, keep)
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path / "c").load(p)
    msg = str(e.value)
    assert "missing keys (1): out.bias" in msg and "unexpected keys (1): extra" in msg
    # dtype mismatch
    tensors, _ = a.state_tensors()
    tensors["model/out.bias"] = tensors["model/out.bias"].double()
    p = C.save_checkpoint(tmp_path / "dtype", 2, tensors, keep)
    with pytest.raises(
        CheckpointError, match="out.bias: dtype torch.float64 in the checkpoint, torch.float32"
    ):
        _trainer(tmp_path / "d").load(p)
    net = MLP((2,), width=32, depth=3, time_dim=16)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(net, a.last_checkpoint)


def test_pickles_and_foreign_files_are_refused(tmp_path):
    net = MLP((2,), width=8, depth=1)
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(CheckpointError, match="not a safetensors file.*torch.save.*arbitrary code"):
        read_checkpoint(pt)
    # renamed to .safetensors next to a valid-looking JSON: still refused before parsing
    a = _trainer(tmp_path / "a")
    a.fit(1)
    js = a.last_checkpoint
    st = js.replace(".json", ".safetensors")
    os.replace(pt, st)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_checkpoint(js)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_weights(net, st)
    raw = tmp_path / "pickle.safetensors"
    import pickle

    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="Python pickle"):
        read_checkpoint(raw)


def test_torn_tensor_file_is_detected(tmp_path):
    a = _trainer(tmp_path / "a")
    a.fit(1)
    st = a.last_checkpoint.replace(".json", ".safetensors")
    b = _trainer(tmp_path / "b")
    b.fit(2)
    os.replace(b.last_checkpoint.replace(".json", ".safetensors"), st)  # tensors of another run
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(a.last_checkpoint)


def test_damaged_header_is_named_without_the_pickle_warning(tmp_path):
    a = _trainer(tmp_path / "a")
    a.fit(1)
    st = tmp_path / "a" / "checkpoints" / "step-00000001.safetensors"
    raw = st.read_bytes()
    st.write_bytes(raw[:8] + b"#" + raw[9:])  # one byte of the JSON header
    with pytest.raises(CheckpointError, match="damaged or incomplete safetensors.*not the JSON object") as e:
        read_checkpoint(a.last_checkpoint)
    assert "pickle" not in str(e.value) and "arbitrary code" not in str(e.value)
    st.write_bytes(raw[:100])  # truncated inside the header
    with pytest.raises(CheckpointError, match="damaged or incomplete.*truncated"):
        read_checkpoint(st)


def test_truncated_latest_falls_back_to_the_previous_intact_checkpoint(tmp_path):
    _trainer(tmp_path / "r", ckpt_every=8).fit(16)
    folder = tmp_path / "r" / "checkpoints"
    latest = folder / "step-00000016.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step-00000016.*SHA-256.*intact earlier checkpoint, step-00000008.json"):
        ck = read_checkpoint(folder)
    assert ck.step == 8
    with pytest.raises(CheckpointError, match="An intact earlier checkpoint is .*step-00000008.json"):
        read_checkpoint(folder / "step-00000016.json")
    with pytest.warns(UserWarning, match="intact earlier"):
        assert _trainer(tmp_path / "r", resume=True, ckpt_every=8).step == 8


def test_a_renamed_exported_pair_loads(tmp_path):
    from pfode import models

    src = models.builtin_file("moons")
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"renamed{suffix}").write_bytes(src.with_suffix(suffix).read_bytes())
    m = models.load(tmp_path / "renamed.json")
    ref = models.load("builtin:moons")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5)
    assert torch.equal(m.net(x, t), ref.net(x, t))
    (tmp_path / "renamed.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names the tensor file 'moons.safetensors'.*no renamed.safetensors"):
        models.load(tmp_path / "renamed.json")


def test_writes_are_atomic_and_old_checkpoints_pruned(tmp_path, monkeypatch):
    a = _trainer(tmp_path / "a", ckpt_every=2, keep_checkpoints=2)
    a.fit(6)
    ck = tmp_path / "a" / "checkpoints"
    names = sorted(os.listdir(ck))
    assert names == [
        "latest.json",
        "step-00000004.json",
        "step-00000004.safetensors",
        "step-00000006.json",
        "step-00000006.safetensors",
    ]
    # a crash while writing the tensors leaves the previous checkpoint as the latest, and no debris
    import safetensors.torch as st

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    a.fit(7, save_final=False)
    with pytest.raises(OSError, match="disk full"):
        a.save()
    assert sorted(os.listdir(ck)) == names
    assert read_checkpoint(ck).step == 6


class _NaNAt(FlowMatching):
    def __init__(self, step):
        super().__init__()
        self.bad = step

    def loss(self, model, batch, *, step=0, target_model=None):
        mean, per = super().loss(model, batch, step=step)
        if step == self.bad:
            mean = mean * float("nan")
        return mean, per


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    tr = Trainer(MLP((2,), width=16, depth=1), _NaNAt(7), DATA, {**CFG, "ckpt_every": 5}, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 7.*step-00000005\.json") as e:
        tr.fit()
    assert e.value.step == 7 and e.value.checkpoint.endswith("step-00000005.json")
    assert read_checkpoint(tmp_path / "checkpoints").step == 5
    assert tr.step == 7 and all(torch.isfinite(p).all() for p in tr.model.parameters())


class _NaNGrad(FlowMatching):
    def loss(self, model, batch, *, step=0, target_model=None):
        mean, per = super().loss(model, batch, step=step)
        if step == 3:
            mean = mean + torch.sqrt(0.0 * mean)  # finite value; gradient inf * 0 = NaN
        return mean, per


def test_nan_gradient_stops_before_the_update(tmp_path):
    torch.manual_seed(0)
    tr = Trainer(MLP((2,), width=16, depth=1), _NaNGrad(), DATA, {**CFG, "ckpt_every": 2}, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at step 3.*step-00000002\.json"):
        tr.fit()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_checkpoint_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        C.save_checkpoint(tmp_path / "ck", 1, {"w": torch.zeros(2)}, {"note": "x"})
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "ck"):
        assert stat.S_IMODE(os.stat(tmp_path / "ck" / name).st_mode) == 0o644, name
