"""Model files: every checkpoint and exported model carries the description of its denoiser, and
:func:`pfode.models.load` rebuilds exactly that denoiser -- or refuses a file without one."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from pfode import models
from pfode import paths as P
from pfode.checkpoint import CheckpointError
from pfode.nets import MLP
from pfode.train import Consistency, DenoisingScoreMatching, FlowMatching, Trainer

DATA = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
CFG = {"iterations": 3, "batch_size": 64, "ckpt_every": 3, "quiet": True, "tensorboard": False}


def _train(objective, out, net=None, **cfg):
    torch.manual_seed(0)
    tr = Trainer(net or MLP((2,), width=16, depth=1, time_dim=8), objective, DATA, {**CFG, **cfg}, out)
    tr.fit()
    return tr


@pytest.mark.parametrize(
    "objective, path_cls, spec, prediction, time_input",
    [
        (
            lambda: DenoisingScoreMatching(P.Trig(t_min=0.02, t_max=0.95), "v", time_input="sigma"),
            P.Trig,
            {"name": "trig", "t_min": 0.02, "t_max": 0.95},
            "v",
            "sigma",
        ),
        (
            lambda: FlowMatching(path=P.Trig()),
            P.Trig,
            {"name": "trig", "t_min": 1e-3, "t_max": 1 - 1e-3},
            "velocity",
            "t",
        ),
        (
            lambda: DenoisingScoreMatching(P.VP(beta_min=0.5, beta_max=8.0), "score"),
            P.VP,
            {"name": "vp", "beta_min": 0.5, "beta_max": 8.0, "t_min": 1e-3, "t_max": 1.0},
            "score",
            "t",
        ),
        (
            lambda: DenoisingScoreMatching(P.VPDiscrete.ddpm(50), "x0", time_input="index"),
            P.VPDiscrete,
            {"name": "ddpm", "n": 50, "beta_start": 1e-4, "beta_end": 0.02},
            "x0",
            "index",
        ),
    ],
)
def test_a_model_trained_from_python_loads_with_its_own_path_and_prediction(
    tmp_path, objective, path_cls, spec, prediction, time_input
):
    tr = _train(objective(), tmp_path / "run")
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints", tr.last_checkpoint):
        m = models.load(source)
        den = m.denoiser
        assert type(den.path) is path_cls and den.path.spec() == spec
        assert den.prediction == prediction and den.time_input == time_input
        assert m.data_shape == (2,) and not m.net.training
    # the loaded network is the EMA network, evaluated the same way
    x, t = torch.randn(5, 2), torch.full((5,), 0.5, dtype=torch.float64)
    ref = tr.objective.denoiser(tr.ema)
    assert torch.equal(m.denoiser(x, t)[0], ref(x, t)[0])
    st, js = models.export(tmp_path / "run" / "checkpoints", tmp_path / "exported" / "model")
    assert json.loads(js.read_text())["denoiser"] == tr.objective.denoiser_spec()
    assert models.load(js).denoiser.path.spec() == spec
    assert models.load(tmp_path / "run", which="model").denoiser.prediction == prediction


def test_every_objective_describes_its_denoiser():
    fm = FlowMatching(path="linear").denoiser_spec()
    assert fm == {"version": 1, "path": P.Linear().spec(), "prediction": "velocity", "time_input": "t"}
    ct = Consistency(P.EDM(0.01, 50.0)).denoiser_spec()
    assert ct["prediction"] == "x0" and ct["path"] == {"name": "edm", "sigma_min": 0.01, "sigma_max": 50.0}
    dsm = DenoisingScoreMatching("cosine", "eps", time_input="reversed").denoiser_spec()
    assert dsm["path"]["name"] == "cosine" and dsm["time_input"] == "reversed"


def test_a_consistency_model_loads_with_its_wrapper(tmp_path):
    obj = Consistency(P.EDM(0.005, 40.0), steps=6)
    net = MLP((2,), width=16, depth=1, time_dim=8, log_time=True, time_scale=250.0)
    tr = _train(obj, tmp_path / "ct", net=net)
    m = models.load(tmp_path / "ct")
    assert m.denoiser.prediction == "x0" and m.denoiser.path.spec()["sigma_max"] == 40.0
    z = torch.randn(6, 2)
    a = obj.sample(m.net, z, nfe=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, obj.sample(tr.ema, z, nfe=2, generator=torch.Generator().manual_seed(1)))


def _strip_description(js):
    meta = json.loads(open(js).read())
    del meta["denoiser"]
    with open(js, "w") as f:
        json.dump(meta, f)


def test_a_file_without_the_description_is_refused_not_defaulted(tmp_path):
    tr = _train(FlowMatching(path=P.Trig()), tmp_path / "run")
    _strip_description(tr.last_checkpoint)
    with pytest.raises(CheckpointError, match=r"step-00000003\.json has no 'denoiser' description.*re-export"):
        models.load(tmp_path / "run")
    with pytest.raises(CheckpointError, match="has no 'denoiser' description"):
        models.export(tmp_path / "run" / "checkpoints", tmp_path / "out" / "m")
    # an old file gets its description when it is exported again
    desc = FlowMatching(path=P.Trig()).denoiser_spec()
    _, js = models.export(tmp_path / "run" / "checkpoints", tmp_path / "out" / "m", denoiser=desc)
    assert type(models.load(js).denoiser.path) is P.Trig
    with pytest.raises(ValueError, match="has no 'prediction'"):
        models.export(tmp_path / "run" / "checkpoints", tmp_path / "out" / "n", denoiser={"version": 1, "path": {}})


def test_an_undescribable_run_still_trains_and_resumes_but_does_not_load(tmp_path):
    path = P.Affine(lambda t: 1 - t, lambda t: t, t_min=1e-3, t_max=1 - 1e-3)
    with pytest.warns(UserWarning, match="cannot be loaded by pfode.models.load.*user functions"):
        _train(FlowMatching(path=path), tmp_path / "run")
    with pytest.raises(CheckpointError, match="has no 'denoiser' description"):
        models.load(tmp_path / "run")


def test_a_checkpoint_written_with_train_steps_resumes(tmp_path):
    tr = _train(FlowMatching(), tmp_path / "run")
    meta = json.loads(open(tr.last_checkpoint).read())
    meta["config"]["steps"] = meta["config"].pop("iterations")  # as written before the rename
    with open(tr.last_checkpoint, "w") as f:
        json.dump(meta, f)
    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1, time_dim=8)
    again = Trainer(net, FlowMatching(), DATA, {**CFG, "iterations": 5}, tmp_path / "run", resume=True)
    assert again.step == 3
    again.fit()
    assert again.step == 5


@pytest.mark.parametrize(
    "name, path_cls, prediction, shape",
    [("digits", P.VPCosine, "eps", (1, 8, 8)), ("moons", P.Linear, "velocity", (2,))],
)
def test_builtin_models_carry_their_description(name, path_cls, prediction, shape):
    m = models.load(f"builtin:{name}")
    assert type(m.denoiser.path) is path_cls and m.denoiser.prediction == prediction
    assert m.denoiser.time_input == "t" and m.data_shape == shape
    meta = json.loads(models.builtin_file(name).read_text())
    assert meta["objective"]["path"] == repr(m.denoiser.path)  # the description agrees with the training
    assert "iterations" in meta["config"] and "steps" not in meta["spec"]["train"]
    x = float(m.denoiser.path.sigma(m.denoiser.path.t_max)) * torch.randn(4, *shape)
    x0 = m.denoiser.x0_at(x, m.denoiser.path.t_max)
    assert x0.shape == x.shape and bool(torch.isfinite(x0).all()) and not math.isnan(float(x0.sum()))


def test_loading_a_model_does_not_import_training():
    code = (
        "import sys, pfode.models as M; M.load('builtin:moons'); "
        "bad = sorted(k for k in sys.modules if k.startswith('pfode.train')); assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_subpackages_are_usable_after_import_pfode():
    """``import pfode`` alone makes ``pfode.models`` (and the other subpackages) usable; checked in a fresh process."""
    import subprocess
    import sys

    code = (
        "import pfode; assert 'digits' in pfode.models.available(); pfode.train; pfode.data; pfode.nets; "
        "pfode.plots; pfode.integrations\n"
        "try:\n    pfode.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\nelse:\n    raise SystemExit(1)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_load_takes_the_dtype_of_the_weights_and_refuses_others():
    m = models.load("builtin:moons", dtype=torch.bfloat16)
    assert m.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in m.net.parameters())
    assert models.load("builtin:moons").dtype == torch.float32
    for bad in (torch.int32, "float16"):
        with pytest.raises(TypeError, match=r"dtype=.* valid: torch.float32, torch.float64, torch.float16"):
            models.load("builtin:moons", dtype=bad)
