"""Sampling and likelihood over several processes (``torchrun``), bit-identical to one process.

Launch a script (or ``pfode sample`` / ``pfode nll``) with ``torchrun --nproc_per_node N``; each process
(rank) takes a contiguous shard of the samples and the results are gathered in sample order::

    with pfode.distributed.process_group("cuda") as ctx:      # gloo on CPU, nccl on CUDA
        x = pfode.distributed.sample(den, 50_000, (3, 32, 32), seed=0, batch_size=500, device=ctx.device,
                                     nfe=10, dst=0)           # the full [50000, 3, 32, 32] on rank 0
        if ctx.rank == 0:
            save(x)

The commands do the same: ``torchrun --standalone --nproc_per_node 4 -m pfode.cli -- sample --n 50000 --out s.npz``
(the ``--`` keeps torchrun from reading ``--n`` as an abbreviation of its own options); ``pfode nll`` shards
the data set the same way. Rank 0 prints and writes the one output.

Without a process group (a plain ``python`` run, or no torchrun environment) the same calls run everything
in the one process and give the same bits. Three rules make that so:

* **Per-sample randomness.** Sample ``i``'s starting noise is drawn from its own counter-based stream
  (:class:`pfode.sample.PerSampleNoise`) whose key is the ``i``-th draw of a generator seeded with ``seed``:
  it depends on ``seed`` and ``i`` only (not on ``n``, the batch size or the shard). The noise of stochastic
  solvers is keyed the same way from a seed derived from ``seed``.
* **Batches aligned to the global index.** Samples are processed in batches ``[k B, (k + 1) B)`` of the
  global index and a rank owns whole batches (:func:`shard`), so every batch the network sees is the batch a
  single process sees: results do not depend on how BLAS or cuDNN kernels treat different batch sizes.
* **Per-batch generators** where the library draws from a ``torch.Generator`` over a whole batch (Hutchinson
  probes, dequantization noise): batch ``k`` gets :func:`batch_generator` ``(seed, k)``, which is
  ``seed`` itself for the first batch.

Keep the batch size (and the device type and CPU thread count) fixed to reproduce a run; the world size may
change freely. Ranks beyond the number of
batches get empty shards and still take part in every collective call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ._checks import check_int
from .likelihood import BitsPerDimOutput, LikelihoodOutput
from .likelihood import bits_per_dim as _bits_per_dim
from .likelihood import log_likelihood as _log_likelihood
from .predictions import Denoiser
from .sample import PerSampleNoise, SampleOutput, Sampler

__all__ = [
    "Context",
    "process_group",
    "is_distributed",
    "rank",
    "world_size",
    "shard",
    "batches",
    "noise",
    "batch_generator",
    "gather",
    "reduce",
    "sample",
    "log_likelihood",
    "bits_per_dim",
]

#: the environment variables torchrun (and ``torch.distributed.launch``) set for ``init_method="env://"``
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_M64 = (1 << 64) - 1
_SKIP_CHUNK = 1 << 20


# -- process group -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (0 of 1 without a process group).

    Attributes:
        rank, world_size: this process's rank and the number of processes.
        local_rank: the rank on this machine (``LOCAL_RANK``; 0 without torchrun).
        device: the device this rank should compute on (``cuda:LOCAL_RANK`` for a bare ``"cuda"``).
        backend: the process group's backend, or ``None`` without one.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes outputs."""
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def _launched() -> bool:
    return all(k in os.environ for k in ENV_VARS)


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None, *, backend: str | None = None) -> Iterator[Context]:
    """Initialize ``torch.distributed`` from torchrun's environment for the ``with`` block; yield a :class:`Context`.

    Args:
        device: the device to compute on: ``"cpu"``, ``"cuda"`` (becomes ``cuda:LOCAL_RANK`` under torchrun) or
            ``"cuda:K"``; default ``"cuda"`` where CUDA is available, else ``"cpu"``.
        backend: the process group's backend; default ``"nccl"`` for a CUDA device, ``"gloo"`` for the CPU.

    Outside torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` not all set) nothing is
    initialized and the context is rank 0 of 1. A process group that is already initialized is used as it is
    and left open; one this call creates is destroyed when the block ends.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device: {e}") from None
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string such as 'gloo' or 'nccl', got {backend!r}")
    local = int(os.environ.get("LOCAL_RANK", "0")) if (is_distributed() or _launched()) else 0
    if dev.type == "cuda" and dev.index is None and (is_distributed() or _launched()):
        dev = torch.device("cuda", local)
    created = False
    if not is_distributed() and _launched():
        if not dist.is_available():
            raise RuntimeError("torchrun launched this process, but this torch build has no torch.distributed")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"), init_method="env://")
        created = True
    try:
        yield Context(rank(), world_size(), local, dev, dist.get_backend() if is_distributed() else None)
    finally:
        if created and is_distributed():
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    """The device collective calls of the current backend take tensors on."""
    if str(dist.get_backend()).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- shards --------------------------------------------------------------------------------------------
def _rank_world(rank_: int | None, world: int | None) -> tuple[int, int]:
    if (rank_ is None) != (world is None):
        raise ValueError(f"give both rank and world or neither (got rank={rank_!r}, world={world!r})")
    if rank_ is None:
        return rank(), world_size()
    check_int("world", world, 1)
    check_int("rank", rank_, 0)
    if rank_ >= world:
        raise ValueError(f"rank={rank_} must be < world={world}")
    return rank_, world


def shard(n: int, rank: int | None = None, world: int | None = None, *, batch_size: int = 1) -> range:
    """The contiguous range of sample indices ``0..n-1`` that ``rank`` of ``world`` processes owns.

    The ``ceil(n / batch_size)`` batches ``[k batch_size, (k + 1) batch_size)`` are dealt out in order, whole
    batches per rank, the first ``n_batches mod world`` ranks one more than the others (a rank may get none).
    ``rank`` and ``world`` default to the current process group's (0 of 1 without one). The ranges of all
    ranks partition ``range(n)`` in rank order.
    """
    check_int("n", n, 0)
    check_int("batch_size", batch_size, 1)
    r, w = _rank_world(rank, world)
    q, extra = divmod(-(-n // batch_size), w)
    b0 = r * q + min(r, extra)
    b1 = b0 + q + (1 if r < extra else 0)
    return range(min(b0 * batch_size, n), min(b1 * batch_size, n))


def batches(n: int, batch_size: int, rank: int | None = None, world: int | None = None) -> list[tuple[int, range]]:
    """This rank's batches of :func:`shard`: ``(k, range)`` pairs, ``k`` the batch's global number."""
    s = shard(n, rank, world, batch_size=batch_size)
    return [(i // batch_size, range(i, min(i + batch_size, s.stop))) for i in range(s.start, s.stop, batch_size)]


# -- randomness ----------------------------------------------------------------------------------------
def _mix64(x: int) -> int:
    """SplitMix64's finalizer: a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _derive(seed: int, stream: int) -> int:
    return _mix64(_mix64(seed & _M64) ^ (stream & _M64))


def _check_seed(seed) -> int:
    check_int("seed", seed, 0)
    if seed > _M64:
        raise ValueError(f"seed={seed} must be < 2**64")
    return seed


def batch_generator(seed: int, k: int) -> torch.Generator:
    """A CPU generator for global batch ``k``: seeded with ``seed`` for ``k = 0``, with a hash of ``(seed, k)``
    for later batches, so a batch's draws do not depend on which rank runs it or what ran before."""
    _check_seed(seed)
    check_int("k", k, 0)
    return torch.Generator().manual_seed(seed if k == 0 else _derive(seed, 0x6261746368 + k))


def _keys_from(seed: int, start: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` whose next ``int64`` key draw is the ``start``-th (keys are drawn one
    at a time, in order, as :class:`~pfode.sample.PerSampleNoise` draws them)."""
    g = torch.Generator().manual_seed(seed)
    while start > 0:
        k = min(start, _SKIP_CHUNK)
        torch.randint(0, 2**32, (k,), generator=g, dtype=torch.int64)
        start -= k
    return g


def _as_rows(rows) -> range:
    if isinstance(rows, range):
        if rows.step != 1 or rows.start < 0 or rows.stop < rows.start:
            raise ValueError(f"rows={rows!r} must be a range of step 1 from a non-negative start")
        return rows
    check_int("rows", rows, 0)
    return range(rows)


def noise(
    rows: int | range,
    shape: Sequence[int],
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Standard normal noise ``[len(rows), *shape]``; row ``i`` depends only on ``seed`` and the global index.

    Args:
        rows: the global sample indices (a ``range`` of step 1), or ``n`` for ``range(n)``.
        shape: the shape of one sample.
        seed: the run's seed (``0 <= seed < 2**64``).
        dtype: the result's dtype (computed in float64 for float64, else float32).
        device: where to compute it (default the CPU, whose bits a GPU run started from CPU noise shares).

    Sample ``i`` draws from :class:`~pfode.sample.PerSampleNoise`'s stream keyed by the ``i``-th key of a
    generator seeded with ``seed``, so ``noise(range(a, b), ...)`` equals rows ``a..b-1`` of
    ``noise(n, ...)`` bit for bit, whatever ``n``.
    """
    rows = _as_rows(rows)
    _check_seed(seed)
    shape = _check_shape(shape)
    like = torch.empty((len(rows), *shape), dtype=dtype, device=device)
    if len(rows) == 0 or like[0].numel() == 0:
        return torch.zeros_like(like)
    return PerSampleNoise(like, _keys_from(seed, rows.start))()


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise TypeError(f"shape must be a tuple of non-negative integers (one sample's shape), got {shape!r}")
    return tuple(shape)


# -- collectives ---------------------------------------------------------------------------------------
def _all_objects(obj) -> list:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _first(obj):
    """The first non-``None`` of the ranks' ``obj`` (``obj`` itself without a process group)."""
    if not is_distributed():
        return obj
    return next((o for o in _all_objects(obj) if o is not None), None)


def gather(t: torch.Tensor, dst: int | None = None) -> torch.Tensor | None:
    """The ranks' tensors concatenated along dimension 0 in rank order (shards of any length, empty included).

    Args:
        t: this rank's ``[b, ...]`` shard; every non-empty shard must have the same trailing shape and dtype. A
            rank with nothing to contribute may pass any tensor with zero rows (``torch.empty(0)``).
        dst: ``None``: every rank gets the result; a rank number: only that rank does, the others get ``None``
            (without a process group the one process gets ``t`` whatever ``dst``).
    Returns:
        the concatenated tensor on ``t``'s device (``t`` itself without a process group).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"gather takes a tensor, got {type(t).__name__}")
    if t.dim() == 0:
        raise ValueError("gather concatenates along dimension 0: give a tensor with at least one dimension")
    if dst is not None:
        check_int("dst", dst, 0)
    if not is_distributed():
        return t
    if dst is not None and dst >= world_size():
        raise ValueError(f"dst={dst} must be < the world size {world_size()}")
    metas = _all_objects((tuple(t.shape), str(t.dtype)) if t.shape[0] > 0 else None)
    given = [m for m in metas if m is not None]
    if not given:  # nothing anywhere: this rank's (empty) tensor is the result
        return t if dst is None or rank() == dst else None
    tail, dtype_name = given[0][0][1:], given[0][1]
    bad = [(i, m) for i, m in enumerate(metas) if m is not None and (m[0][1:] != tail or m[1] != dtype_name)]
    if bad:
        raise ValueError(
            "gather needs one trailing shape and dtype on every rank that has rows; ranks 0.. gave "
            f"{[(m[0], m[1]) if m else 'empty' for m in metas]}"
        )
    sizes = [m[0][0] if m is not None else 0 for m in metas]
    dtype = getattr(torch, dtype_name.split(".")[-1])
    dev = _comm_device()
    buf = torch.zeros((max(sizes), *tail), dtype=dtype, device=dev)
    if t.shape[0] > 0:
        buf[: t.shape[0]] = t.detach()
    me = rank()
    if dst is None:
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf)
    else:
        parts = [torch.empty_like(buf) for _ in sizes] if me == dst else None
        dist.gather(buf, parts, dst=dst)
        if me != dst:
            return None
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(t.device)


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def reduce(value: int | float, op: str = "sum") -> int | float:
    """``value`` combined over the ranks (``"sum"``, ``"max"`` or ``"min"``), on every rank."""
    if op not in _OPS:
        raise ValueError(f"op={op!r} must be one of {', '.join(_OPS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"reduce takes an int or a float, got {value!r}")
    if not is_distributed():
        return value
    is_int = isinstance(value, int)
    v = torch.tensor([value], dtype=torch.int64 if is_int else torch.float64, device=_comm_device())
    dist.all_reduce(v, op=getattr(dist.ReduceOp, _OPS[op]))
    return int(v.item()) if is_int else float(v.item())


def _gather_fields(local: dict, dst: int | None) -> dict | None:
    """Gather the ``[b, ...]`` tensors of ``local`` (``None`` values stay ``None``; a rank without batches passes
    ``{}`` and learns the fields from the others)."""
    names = _first(sorted(local) if local else None) or []
    out = {}
    for name in names:
        present = _first(None if name not in local else local[name] is not None)
        if not present:
            out[name] = None
            continue
        out[name] = gather(local[name] if name in local else torch.empty(0), dst)
    return None if dst is not None and is_distributed() and rank() != dst else out


def _cat(parts: list) -> torch.Tensor | None:
    if not parts or parts[0] is None:
        return None
    return torch.cat(parts)


# -- sampling ------------------------------------------------------------------------------------------
def _slice_cond(cond: dict | None, n: int, rows: range) -> dict | None:
    if cond is None:
        return None
    return {
        k: v[rows.start : rows.stop] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v
        for k, v in cond.items()
    }


def sample(
    denoiser: Denoiser,
    n: int,
    shape: Sequence[int],
    grid=None,
    solver=None,
    *,
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    nfe: int | None = None,
    spacing: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    skip=None,
    cond: dict | None = None,
    return_trajectory: bool = False,
    return_info: bool = False,
    dst: int | None = None,
    **options,
):
    """``n`` samples of ``denoiser`` from per-sample seeded noise, sharded over the process group's ranks.

    Args:
        denoiser, grid, solver, nfe, spacing, t_start, t_end, denoise, skip: as in :func:`pfode.sample` (a
            :class:`pfode.Recipe` as ``grid`` fixes the times and the solver).
        n: the number of samples; shape: one sample's shape.
        seed: the run's seed. Sample ``i`` starts from ``sigma(t) * noise(range(i, i + 1), shape, seed)`` at the
            grid's first time ``t`` (the recipe's ``t_start``); a stochastic solver's noise for sample ``i`` is
            keyed from the same index and a seed derived from ``seed``.
        batch_size: samples per network batch; batches are aligned to the global index (see the module docs),
            so keep it fixed to reproduce a run.
        dtype, device: of the samples (the starting noise is drawn on the CPU and moved there).
        cond: network keyword arguments; tensors whose first dimension is ``n`` are per-sample and sliced with
            the batch, everything else is passed whole.
        return_trajectory, return_info: as in :func:`pfode.sample`; ``nfe`` of the result is the most any batch
            spent (the per-batch count for fixed-step solvers), ``info`` is empty.
        dst: ``None``: every rank returns the full result; a rank number: that rank does, the others ``None``.
        options: ``callback`` (called per batch), ``check_finite``, ``gradient``, ``params`` as in
            :func:`pfode.sample`.
    Returns:
        the ``[n, *shape]`` samples in global order, a :class:`pfode.SampleOutput`, or ``None`` off ``dst``.

    Every rank must call it with the same arguments. Without a process group it runs all batches itself.
    """
    check_int("n", n, 1)
    check_int("batch_size", batch_size, 1)
    _check_seed(seed)
    shape = _check_shape(shape)
    if "generator" in options:
        raise TypeError("distributed.sample draws all noise from seed=; it takes no generator")
    sampler = Sampler(
        denoiser, grid, solver, nfe=nfe, spacing=spacing, t_start=t_start, t_end=t_end, denoise=denoise, skip=skip
    )
    t0 = sampler.recipe.t_start if sampler.recipe is not None else float(sampler.grid[0])
    scale = float(denoiser.path.sigma(t0))
    sde_seed = _derive(seed, 0x736465)
    xs, trajs, nfe_max, times = [], [], 0, None
    for _, rows in batches(n, batch_size):
        x_T = (scale * noise(rows, shape, seed, dtype=dtype)).to(device)
        gen = _keys_from(sde_seed, rows.start) if sampler.solver.stochastic else None
        res = sampler(
            x_T,
            return_info=True,
            return_trajectory=return_trajectory,
            generator=gen,
            cond=_slice_cond(cond, n, rows),
            **options,
        )
        xs.append(res.x)
        if return_trajectory:
            trajs.append(torch.stack(res.trajectory, 1))
        nfe_max, times = max(nfe_max, res.nfe), res.times
    local = {"x": torch.cat(xs) if xs else torch.empty((0, *shape), dtype=dtype, device=device)}
    if return_trajectory and trajs:
        local["trajectory"] = torch.cat(trajs)
    elif return_trajectory:
        local["trajectory"] = torch.empty(0, dtype=dtype, device=device)
    got = _gather_fields(local, dst)
    nfe_max = reduce(nfe_max, "max")
    times = _first(times)
    if got is None:
        return None
    if not (return_trajectory or return_info):
        return got["x"]
    traj = list(got["trajectory"].unbind(1)) if return_trajectory else None
    return SampleOutput(got["x"], traj, times, nfe_max, {})


# -- likelihood ----------------------------------------------------------------------------------------
def _check_data(name: str, x) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a [N, ...] tensor of data points, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, ...] with N >= 1, got {tuple(x.shape)}")
    return x.shape[0]


def _batched(fn, x: torch.Tensor, batch_size: int, seed: int, dst: int | None, options: dict):
    """Run ``fn(xb, generator=...)`` on this rank's aligned batches; gather per-sample fields, sum ``nfe``."""
    check_int("batch_size", batch_size, 1)
    _check_seed(seed)
    if "generator" in options:
        raise TypeError("draws come from seed= (one generator per batch, batch_generator(seed, k)); no generator")
    n = x.shape[0]
    parts: dict[str, list] = {}
    nfe, extra = 0, None
    for k, rows in batches(n, batch_size):
        fields, used, extra = fn(x[rows.start : rows.stop], batch_generator(seed, k), options)
        nfe += used
        for name, v in fields.items():
            parts.setdefault(name, []).append(v)
    got = _gather_fields({name: _cat(v) for name, v in parts.items()}, dst)
    nfe = reduce(nfe, "sum")
    extra = _first(extra)
    return got, nfe, extra


def log_likelihood(
    denoiser: Denoiser, x: torch.Tensor, *, batch_size: int = 64, seed: int = 0, dst: int | None = None, **options
) -> LikelihoodOutput | None:
    """:func:`pfode.log_likelihood` of the data ``x`` ``[N, ...]`` in aligned batches, sharded over the ranks.

    Every rank passes the whole ``x`` and takes its batches; batch ``k`` draws its Hutchinson probes from
    :func:`batch_generator` ``(seed, k)``. ``options`` are :func:`pfode.log_likelihood`'s (``solver``, ``grid``,
    ``divergence``, ``probes``, ...). Returns a :class:`pfode.LikelihoodOutput` with every per-sample field in
    global order, ``nfe`` summed over all batches and ``info`` holding ``per_probe`` ``[K, N]`` (Hutchinson)
    only; ``None`` on ranks other than ``dst`` when ``dst`` is given.
    """
    _check_data("x", x)

    def fn(xb, gen, opts):
        o = _log_likelihood(denoiser, xb, generator=gen, **opts)
        per_probe = o.info.get("per_probe")
        fields = {"logp": o.logp, "stderr": o.stderr, "x_T": o.x_T, "prior_logp": o.prior_logp}
        fields["per_probe"] = None if per_probe is None else per_probe.transpose(0, 1)  # [B, K] to gather
        return fields, o.nfe, None

    got, nfe, _ = _batched(fn, x, batch_size, seed, dst, options)
    if got is None:
        return None
    info = {} if got.get("per_probe") is None else {"per_probe": got["per_probe"].transpose(0, 1)}
    return LikelihoodOutput(got["logp"], got.get("stderr"), nfe, got["x_T"], got["prior_logp"], info)


def bits_per_dim(
    denoiser: Denoiser,
    x_uint8: torch.Tensor,
    *,
    batch_size: int = 64,
    seed: int = 0,
    dst: int | None = None,
    **options,
) -> BitsPerDimOutput | None:
    """:func:`pfode.bits_per_dim` of 8-bit data ``[N, ...]`` in aligned batches, sharded over the ranks.

    Batch ``k`` draws its dequantization noise and probes from :func:`batch_generator` ``(seed, k)``; ``options``
    are :func:`pfode.bits_per_dim`'s. Returns a :class:`pfode.BitsPerDimOutput` in global order with ``nfe``
    summed over all batches (``None`` on ranks other than ``dst`` when ``dst`` is given).
    """
    _check_data("x_uint8", x_uint8)

    def fn(xb, gen, opts):
        o = _bits_per_dim(denoiser, xb, generator=gen, **opts)
        return {"bpd": o.bpd, "bound": o.bound, "stderr": o.stderr}, o.nfe, o.t_eval

    got, nfe, t_eval = _batched(fn, x_uint8, batch_size, seed, dst, options)
    if got is None:
        return None
    return BitsPerDimOutput(got["bpd"], got["bound"], got["stderr"], nfe, t_eval)
