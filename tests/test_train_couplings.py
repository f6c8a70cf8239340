"""Tests of :mod:`pfode.train.couplings`: minibatch OT against brute force, reflow pairs against
:func:`pfode.sample` and their resumable on-disk store."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

import pfode
from pfode import paths as P
from pfode.analytic import Gaussian
from pfode.predictions import PREDICTIONS, Coeffs, Denoiser, from_x0_eps
from pfode.train import FlowMatching, Independent, MinibatchOT, Paired, PairStore, generate_reflow_pairs
from pfode.train.couplings import get_coupling, ot_permutation


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cost(x, y):
    return float(((x - y) ** 2).sum())


@pytest.mark.parametrize("method", ["scipy", "pot"])
@pytest.mark.parametrize("seed", range(6))
def test_ot_permutation_equals_brute_force(method, seed):
    if method == "pot":
        pytest.importorskip("ot")
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed % 4
    x, y = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    best = min(_cost(x, y[list(p)]) for p in itertools.permutations(range(n)))
    perm = ot_permutation(x, y, method)
    assert sorted(perm.tolist()) == list(range(n))
    assert _cost(x, y[perm]) == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_minibatch_ot_reduces_cost_and_permutes_the_noise():
    x0 = pfode_data_moons(256)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _, e_ind = Independent()(x0, None, g1)
    _, e_ot = MinibatchOT()(x0, None, g2)
    # the same draw, re-ordered
    assert torch.equal(e_ot.sort(0).values, e_ind.sort(0).values)
    assert _cost(x0, e_ot) < 0.6 * _cost(x0, e_ind)
    # image-shaped batches work too (cost on flattened samples)
    xi = torch.randn(16, 1, 4, 4)
    _, ei = MinibatchOT()(xi, None, torch.Generator().manual_seed(0))
    assert ei.shape == xi.shape


def pfode_data_moons(n):
    from pfode.data import toy2d

    return toy2d("moons", n, seed=1)


def test_paired_and_errors():
    x, e = torch.randn(4, 2), torch.randn(4, 2)
    assert Paired()(x, e, None)[1] is e
    with pytest.raises(ValueError, match="needs data given as"):
        Paired()(x, None, None)
    with pytest.raises(ValueError, match="draws its own noise"):
        Independent()(x, e, None)
    assert isinstance(get_coupling("reflow"), Paired)
    assert isinstance(get_coupling({"name": "minibatch-ot", "method": "pot"}), MinibatchOT)


def _gauss():
    return Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([[0.6, 0.2], [0.2, 0.4]]))


def test_reflow_pairs_are_the_teachers_pf_ode_solutions(tmp_path, capsys):
    teacher = _gauss().denoiser(P.VP())
    store = generate_reflow_pairs(
        teacher, 250, tmp_path, (2,), batch_size=100, nfe=8, solver="dpm++2m", seed=4, progress=False
    )
    assert capsys.readouterr().err == ""
    sample, noise = store.load()
    assert sample.shape == noise.shape == (250, 2) and len(store) == 250 and store.complete
    # the shards hold standard normal noise and pfode.sample's solution from sigma(T) * noise
    want = pfode.sample(teacher, float(P.VP().sigma(P.VP().t_max)) * noise.double(), nfe=8, solver="dpm++2m")
    assert torch.allclose(sample.double(), want, atol=1e-5)
    idx = json.loads((tmp_path / "index.json").read_text())
    assert [s["count"] for s in idx["shards"]] == [100, 100, 50] and idx["teacher"]["prediction"] == "x0"


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_reflow_from_any_teacher_prediction_and_path(tmp_path, prediction):
    """Teachers of every prediction type, on the Linear and EDM paths, give the exact teacher's pairs."""
    g = _gauss()
    for path in (P.Linear(), P.EDM()):

        def net(x, t, path=path):
            c = Coeffs.at(path, t, like=x)
            x0, eps = g.x0_eps(x, t, path)
            return from_x0_eps(prediction, x0.to(x.dtype), eps.to(x.dtype), c)

        teacher = Denoiser(net, path, prediction)
        exact = g.denoiser(path)
        kw = dict(batch_size=64, nfe=6, solver="dpm++2m", progress=False, dtype=torch.float64)
        a = generate_reflow_pairs(teacher, 64, tmp_path / f"{path.name}-a", (2,), **kw).load()
        b = generate_reflow_pairs(exact, 64, tmp_path / f"{path.name}-b", (2,), **kw).load()
        assert torch.equal(a[1], b[1])
        assert torch.allclose(a[0], b[0], atol=1e-8)


def test_reflow_generation_resumes(tmp_path):
    teacher = _gauss().denoiser(P.Linear())
    kw = dict(batch_size=40, nfe=5, solver="euler", seed=1, progress=False)
    full = generate_reflow_pairs(teacher, 100, tmp_path / "full", (2,), **kw).load()
    part = tmp_path / "part"
    generate_reflow_pairs(teacher, 100, part, (2,), **kw)
    # simulate a run killed after the first shard: drop the later shards from the index
    idx = json.loads((part / "index.json").read_text())
    first_mtime = os.stat(part / idx["shards"][0]["file"]).st_mtime_ns
    for s in idx["shards"][1:]:
        os.unlink(part / s["file"])
    idx["shards"], idx["complete"] = idx["shards"][:1], False
    (part / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="did not finish"):
        PairStore(part).load()
    resumed = generate_reflow_pairs(teacher, 100, part, (2,), **kw).load()
    assert torch.equal(resumed[0], full[0]) and torch.equal(resumed[1], full[1])
    assert os.stat(part / idx["shards"][0]["file"]).st_mtime_ns == first_mtime  # not regenerated
    with pytest.raises(ValueError, match="other settings.*seed"):
        generate_reflow_pairs(teacher, 100, part, (2,), **{**kw, "seed": 2})
    # a corrupted shard is detected
    shard = part / idx["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        PairStore(part).load()


def test_reflow_coupling_trains_on_the_pairs(tmp_path):
    from pfode.nets import MLP
    from pfode.train import Trainer

    teacher = _gauss().denoiser(P.Linear())
    store = generate_reflow_pairs(
        teacher, 64, tmp_path / "p", (2,), batch_size=64, nfe=4, solver="euler", progress=False
    )
    obj = FlowMatching(coupling=Paired(store))
    tr = Trainer(MLP((2,), width=16, depth=1), obj, None, {"iterations": 3, "batch_size": 32, "quiet": True})
    batch = tuple(d[tr.batch_indices(0)] for d in tr.data)
    prep = obj.prepare(batch, torch.Generator().manual_seed(0))
    assert torch.equal(prep["x0"], batch[0]) and torch.equal(prep["eps"], batch[1])
    tr.fit()
    assert tr.step == 3


def test_reflow_pairs_from_a_teacher_checkpoint(tmp_path):
    from pfode.models import load
    from pfode.train.config import make_trainer

    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 256},
        "model": {"name": "mlp", "width": 16, "depth": 1, "time_dim": 8},
        "objective": {"name": "flow-matching"},
        "train": {"iterations": 2, "batch_size": 64, "quiet": True},
    }
    make_trainer(cfg, tmp_path / "t").fit()
    teacher = load(tmp_path / "t").denoiser
    store = generate_reflow_pairs(
        teacher, 50, tmp_path / "pairs", (2,), batch_size=20, nfe=4, solver="euler", progress=False
    )
    sample, noise = store.load()
    assert sample.shape == noise.shape == (50, 2) and torch.isfinite(sample).all()
    idx = json.loads((tmp_path / "pairs" / "index.json").read_text())
    assert [sh["count"] for sh in idx["shards"]] == [20, 20, 10] and idx["complete"]
    assert idx["teacher"]["prediction"] == "velocity"
    assert not [p for p in os.listdir(tmp_path / "pairs") if p.startswith(".")]  # no temporary files left


def test_blockwise_ot_is_exact_within_each_block():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    _, e = MinibatchOT(block=4)(x, None, torch.Generator().manual_seed(1))
    _, raw = Independent()(x, None, torch.Generator().manual_seed(1))
    for i, j in ((0, 4), (4, 8), (8, 10)):
        assert torch.equal(e[i:j].sort(0).values, raw[i:j].sort(0).values)  # noise stays in its block
        best = min(_cost(x[i:j], raw[i:j][list(p)]) for p in itertools.permutations(range(j - i)))
        assert _cost(x[i:j], e[i:j]) == pytest.approx(best, rel=1e-9)
