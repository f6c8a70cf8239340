"""``pfode.distributed``: shards, per-sample noise, gathering; two gloo ranks under torchrun give one process's bits.

The two-rank tests launch this file once under ``torchrun --standalone --nproc_per_node 2`` (see ``_worker``):
each rank runs the Python API and the ``sample`` / ``nll`` commands, and the results are compared bit for bit
with the same calls made here, in one process without a process group.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import pfode
from pfode import distributed as D
from pfode.cli import main
from pfode.cli.common import resolve_model


# -- one process -----------------------------------------------------------------------------------------
def test_shard_deals_whole_batches_in_rank_order():
    for n in range(0, 12):
        for batch_size in (1, 2, 3, 5):
            n_batches = -(-n // batch_size)
            for world in (1, 2, 3, 5):
                shards = [D.shard(n, r, world, batch_size=batch_size) for r in range(world)]
                assert [i for s in shards for i in s] == list(range(n))  # a partition, in rank order
                whole = [len(D.batches(n, batch_size, r, world)) for r in range(world)]
                assert sum(whole) == n_batches and max(whole) - min(whole) <= 1
                for r, s in enumerate(shards):
                    assert s.start % batch_size == 0 or s.start == n  # whole, globally aligned batches
                    got = D.batches(n, batch_size, r, world)
                    assert [k for k, _ in got] == [rows.start // batch_size for _, rows in got]
                    assert [i for _, rows in got for i in rows] == list(s)
    assert D.shard(7, 1, 2, batch_size=2) == range(4, 7)  # 4 batches: [0, 4) and [4, 7)
    assert D.shard(3, 1, 2, batch_size=4) == range(3, 3)  # one batch: rank 1 gets none
    assert D.shard(5) == range(5)  # no process group: everything here


def test_noise_of_a_sample_depends_only_on_seed_and_index():
    full = D.noise(10, (3, 2), seed=4)
    assert full.shape == (10, 3, 2) and full.dtype == torch.float32
    assert torch.equal(D.noise(range(3, 7), (3, 2), seed=4), full[3:7])
    assert torch.equal(D.noise(range(3, 4), [3, 2], seed=4), full[3:4])
    assert torch.equal(D.noise(25, (3, 2), seed=4)[:10], full)  # n does not matter either
    assert not torch.equal(D.noise(10, (3, 2), seed=5), full)
    assert D.noise(range(4, 4), (3, 2)).shape == (0, 3, 2)
    z = D.noise(range(1000, 5000), (5,), seed=1, dtype=torch.float64)
    assert z.dtype == torch.float64 and abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03
    rows = z.reshape(len(z), -1)
    assert float(torch.corrcoef(torch.stack([rows[:-1, 0], rows[1:, 0]]))[0, 1]) < 0.05  # neighbours independent


def test_batch_generator_of_the_first_batch_is_the_seed():
    a = torch.rand(5, generator=D.batch_generator(11, 0))
    assert torch.equal(a, torch.rand(5, generator=torch.Generator().manual_seed(11)))
    b1, b1_again = (torch.rand(5, generator=D.batch_generator(11, 1)) for _ in range(2))
    assert torch.equal(b1, b1_again) and not torch.equal(a, b1)
    assert not torch.equal(b1, torch.rand(5, generator=D.batch_generator(12, 1)))


def test_without_a_process_group_everything_runs_in_this_process(monkeypatch):
    for k in D.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    with D.process_group("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
        assert not D.is_distributed() and (D.rank(), D.world_size()) == (0, 1)
        t = torch.arange(6.0).reshape(3, 2)
        assert D.gather(t) is t and D.gather(t, dst=0) is t
        assert D.reduce(3) == 3 and D.reduce(2.5, "max") == 2.5


def _gmm(dim=2):
    return resolve_model(f"analytic:gmm:{dim}")


def test_sample_starts_each_aligned_batch_from_per_sample_noise():
    den = _gmm().denoiser
    x = D.sample(den, 5, (2,), seed=3, batch_size=2, nfe=4, dtype=torch.float64)
    sigma = float(den.path.sigma(den.path.t_max))
    by_hand = [
        pfode.sample(den, sigma * D.noise(rows, (2,), seed=3, dtype=torch.float64), nfe=4)
        for rows in (range(0, 2), range(2, 4), range(4, 5))
    ]
    assert x.dtype == torch.float64 and torch.equal(x, torch.cat(by_hand))
    # a stochastic solver's noise is per sample too: the batch size moves results by rounding only
    kw = dict(solver="dpm++2m-sde", nfe=6, seed=3, dtype=torch.float64)
    a, b = D.sample(den, 5, (2,), batch_size=2, **kw), D.sample(den, 5, (2,), batch_size=5, **kw)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(a, D.sample(den, 5, (2,), batch_size=5, **{**kw, "seed": 4}), atol=1e-3)
    # per-sample conditioning tensors go with their samples
    label_den = pfode.Denoiser(lambda x, t, label: label[:, None].expand_as(x), den.path, prediction="x0")
    out = D.sample(
        label_den, 5, (2,), seed=0, batch_size=2, nfe=3, dtype=torch.float64, cond={"label": torch.arange(5.0)}
    )
    assert torch.equal(out, torch.arange(5.0, dtype=torch.float64)[:, None].expand(5, 2))


def test_likelihood_first_batch_draws_from_the_seed():
    m = _gmm(3)
    x = m.target.sample(4, generator=torch.Generator().manual_seed(0))
    opts = dict(divergence="hutchinson", probes=2, solver="rk4", grid=pfode.grid(m.denoiser.path, 2))
    o = D.log_likelihood(m.denoiser, x, batch_size=4, seed=9, **opts)
    ref = pfode.log_likelihood(m.denoiser, x, generator=torch.Generator().manual_seed(9), **opts)
    assert torch.equal(o.logp, ref.logp) and torch.equal(o.stderr, ref.stderr) and o.nfe == ref.nfe
    assert torch.equal(o.info["per_probe"], ref.info["per_probe"])
    two = D.log_likelihood(m.denoiser, x, batch_size=2, seed=9, **opts)  # batch 1 has its own generator
    assert torch.equal(
        two.logp[:2], pfode.log_likelihood(m.denoiser, x[:2], generator=torch.Generator().manual_seed(9), **opts).logp
    )
    assert two.nfe == 2 * ref.nfe and two.info["per_probe"].shape == (2, 4)


def test_bad_arguments_name_the_argument():
    den = _gmm().denoiser
    with pytest.raises(ValueError, match="rank=2 must be < world=2"):
        D.shard(4, 2, 2)
    with pytest.raises(ValueError, match="both rank and world"):
        D.shard(4, 1)
    with pytest.raises(ValueError, match="batch_size=0"):
        D.shard(4, batch_size=0)
    with pytest.raises(TypeError, match="shape"):
        D.noise(3, 2)
    with pytest.raises(ValueError, match="rows"):
        D.noise(range(0, 6, 2), (2,))
    with pytest.raises(TypeError, match="seed"):
        D.batch_generator(1.5, 0)
    with pytest.raises(TypeError, match="generator"):
        D.sample(den, 3, (2,), nfe=3, generator=torch.Generator())
    with pytest.raises(ValueError, match="N >= 1"):
        D.log_likelihood(den, torch.zeros(0, 2))
    with pytest.raises(TypeError, match="gather takes a tensor"):
        D.gather([1.0])
    with pytest.raises(ValueError, match="op="):
        D.reduce(1, "mean")


# -- two ranks under torchrun ------------------------------------------------------------------------------
def _api(rank: int) -> dict:
    """The Python API calls both sides make (``rank`` only shapes the gather checks)."""
    digits, gmm2, gmm3 = resolve_model("builtin:digits"), _gmm(2), _gmm(3)
    r = {}
    with torch.no_grad():
        r["digits"] = D.sample(digits.denoiser, 7, digits.data_shape, seed=5, batch_size=2, nfe=4)
        sde = D.sample(
            gmm2.denoiser,
            5,
            (2,),
            solver="dpm++2m-sde",
            nfe=6,
            seed=1,
            batch_size=2,
            dtype=torch.float64,
            return_trajectory=True,
            dst=0,
        )
        r["sde"] = None if sde is None else (sde.x, torch.stack(sde.trajectory), sde.nfe, sde.times)
        r["one_batch"] = D.sample(gmm2.denoiser, 3, (2,), seed=2, batch_size=4, nfe=4, dtype=torch.float64)
    x = gmm3.target.sample(5, generator=torch.Generator().manual_seed(0))
    ll = D.log_likelihood(
        gmm3.denoiser,
        x,
        batch_size=2,
        seed=3,
        divergence="hutchinson",
        probes=2,
        solver="rk4",
        grid=pfode.grid(gmm3.denoiser.path, 2),
    )
    r["ll"] = (ll.logp, ll.stderr, ll.info["per_probe"], ll.x_T, ll.prior_logp, ll.nfe)
    u8 = torch.randint(0, 256, (3, 2), generator=torch.Generator().manual_seed(1))
    grid = pfode.grid(gmm2.denoiser.path, 2)
    bpd = D.bits_per_dim(gmm2.denoiser, u8, batch_size=2, seed=4, dequantization="uniform", grid=grid, dst=1)
    r["bpd"] = None if bpd is None else (bpd.bpd, bpd.bound, bpd.nfe, bpd.t_eval)
    r["gather"] = D.gather(torch.full((rank + 1, 2), float(rank)))
    r["gather_empty"] = D.gather(torch.empty(0, 3))
    return r


def _cli_sample(out):
    return [
        "sample",
        "--n",
        "7",
        "--batch-size",
        "2",
        "--solver",
        "dpm++2m-sde",
        "--nfe",
        "6",
        "--seed",
        "3",
        "--out",
        str(out),
    ]


def _cli_nll(out):
    return [
        "nll",
        "--model",
        "analytic:gmm:3",
        "--n",
        "5",
        "--batch-size",
        "2",
        "--divergence",
        "hutchinson",
        "--probes",
        "2",
        "--solver",
        "rk4",
        "--steps",
        "2",
        "--out",
        str(out),
    ]


def _worker(out: Path):
    """One rank of the torchrun launch: the API, then the commands, inside one gloo process group."""
    with D.process_group("cpu") as ctx:
        res = {"ctx": (ctx.rank, ctx.world_size, ctx.backend), "api": _api(ctx.rank)}
        for name, argv in (("sample", _cli_sample), ("nll", _cli_nll)):
            buf = io.StringIO()
            with redirect_stdout(buf):
                code = main(argv(out / f"{name}.npz"))
            res[name] = (code, buf.getvalue())
        torch.save(res, out / f"rank{ctx.rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--monitor-interval",
        "0.1",
        __file__,
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return out, [torch.load(out / f"rank{k}.pt") for k in (0, 1)]


def _same(a, b, what):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), what
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{what}[{i}]")
    else:
        assert a == b, what


def test_two_ranks_python_api_is_bit_identical_to_one_process(two_ranks):
    _, ranks = two_ranks
    assert [r["ctx"] for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    ref = _api(0)
    for name in ("digits", "one_batch", "ll"):  # every rank gets the whole result (dst=None)
        for k, r in enumerate(ranks):
            _same(r["api"][name], ref[name], f"{name} on rank {k}")
    _same(ranks[0]["api"]["sde"], ref["sde"], "sde")  # dst=0
    assert ranks[1]["api"]["sde"] is None
    _same(ranks[1]["api"]["bpd"], ref["bpd"], "bpd")  # dst=1
    assert ranks[0]["api"]["bpd"] is None
    assert ref["ll"][0].shape == (5,) and ref["ll"][2].shape == (2, 5) and ref["sde"][1].shape[:2] == (7, 5)
    for r in ranks:  # uneven and empty shards
        assert torch.equal(r["api"]["gather"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert r["api"]["gather_empty"].shape == (0, 3)


def test_two_ranks_commands_write_one_output_bit_identical_to_one_process(two_ranks, tmp_path, monkeypatch):
    out, ranks = two_ranks
    monkeypatch.chdir(tmp_path)
    for name, argv in (("sample", _cli_sample), ("nll", _cli_nll)):
        (code0, text0), (code1, text1) = ranks[0][name], ranks[1][name]
        assert code0 == code1 == 0 and text1 == "" and str(out / f"{name}.npz") in text0  # rank 0 writes
        assert main(argv(tmp_path / f"{name}.npz")) == 0
        with np.load(out / f"{name}.npz") as two, np.load(tmp_path / f"{name}.npz") as one:
            assert sorted(two.files) == sorted(one.files)
            for k in one.files:
                assert one[k].dtype == two[k].dtype and np.array_equal(one[k], two[k]), (name, k)
    with np.load(out / "sample.npz") as z:
        assert z["samples"].shape == (7, 1, 8, 8) and np.isfinite(z["samples"]).all()
        assert np.array_equal(z["noise"], D.noise(7, (1, 8, 8), seed=3).numpy())
    assert sorted(p.name for p in out.iterdir()) == ["nll.npz", "rank0.pt", "rank1.pt", "sample.npz"]


if __name__ == "__main__":  # a rank of the torchrun launch in ``two_ranks``
    torch.set_num_threads(1)
    _worker(Path(sys.argv[1]))
