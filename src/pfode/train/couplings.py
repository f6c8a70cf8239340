"""Couplings between data and noise: which ``eps`` each ``x0`` of a batch is paired with.

* :class:`Independent` -- ``eps ~ N(0, I)`` independent of ``x0``;
* :class:`MinibatchOT` -- exact optimal transport within the batch (Tong et al., 2024, OT-CFM; Pooladian
  et al., 2023): draw ``eps``, then permute it to minimise ``sum_i |x0_i - eps_pi(i)|^2`` (for equal,
  uniformly weighted batches an optimal plan is a permutation, found by
  ``scipy.optimize.linear_sum_assignment`` or POT's ``emd``);
* :class:`Paired` / reflow -- fixed ``(sample, noise)`` pairs, e.g. from a teacher's PF-ODE
  (Liu et al., 2023). :func:`generate_reflow_pairs` makes them with any pfode solver, in batches, and
  stores them as safetensors shards plus a JSON index so an interrupted generation resumes;
  :class:`PairStore` reads them back.

A coupling is called as ``coupling(x0, eps_or_None, generator) -> (x0, eps)`` on the *global* batch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path as FsPath

import torch

from .._checks import check_choice, check_int
from ..io import atomic_save_tensors, atomic_write_json, sha256_file
from ..predictions import check_denoiser

__all__ = [
    "COUPLINGS",
    "Coupling",
    "Independent",
    "MinibatchOT",
    "Paired",
    "PairStore",
    "generate_reflow_pairs",
    "ot_permutation",
    "get_coupling",
]

COUPLINGS = ("independent", "minibatch-ot", "paired", "reflow")


class Coupling:
    name = "coupling"
    paired = False

    def __call__(self, x0: torch.Tensor, eps: torch.Tensor | None, generator: torch.Generator | None):
        raise NotImplementedError

    def spec(self) -> dict:
        return {"name": self.name}


def _noise_like(x0: torch.Tensor, generator) -> torch.Tensor:
    dt = x0.dtype if x0.dtype == torch.float64 else torch.float32
    return torch.randn(x0.shape, generator=generator, dtype=dt).to(device=x0.device, dtype=x0.dtype)


class Independent(Coupling):
    """``eps ~ N(0, I)`` drawn from ``generator`` (on the CPU, then moved: the same on every device)."""

    name = "independent"

    def __call__(self, x0, eps, generator):
        if eps is not None:
            raise ValueError("the independent coupling draws its own noise; paired data needs coupling='paired'")
        return x0, _noise_like(x0, generator)


def ot_permutation(x: torch.Tensor, y: torch.Tensor, method: str = "scipy") -> torch.Tensor:
    """The permutation ``p`` minimising ``sum_i |x_i - y_p[i]|^2`` (exact; ``[N]`` int64).

    ``method="scipy"``: Hungarian algorithm (``linear_sum_assignment``); ``"pot"``: POT's network simplex
    ``ot.emd`` (its plan is a permutation matrix for equal uniform weights).
    """
    check_choice("method", method, ("scipy", "pot"))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"OT coupling needs batches of equal size, got {x.shape[0]} and {y.shape[0]}")
    xf = x.detach().reshape(x.shape[0], -1).double().cpu()
    yf = y.detach().reshape(y.shape[0], -1).double().cpu()
    cost = torch.cdist(xf, yf).pow(2).numpy()
    if method == "scipy":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        perm = torch.empty(x.shape[0], dtype=torch.int64)
        perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
        return perm
    try:
        import ot
    except ImportError as e:  # pragma: no cover - optional
        raise ImportError("method='pot' needs POT: pip install POT") from e
    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    plan = ot.emd(w, w, cost, numItermax=10_000_000)
    return torch.as_tensor(plan.argmax(1), dtype=torch.int64)


class MinibatchOT(Coupling):
    """Exact minibatch OT coupling (squared Euclidean cost) between the data batch and fresh noise.

    ``block`` (optional) solves the assignment within consecutive blocks of that many samples instead of
    the whole batch: OT minibatches smaller than the optimiser's batch, at ``O(B block^2)`` cost.
    """

    name = "minibatch-ot"

    def __init__(self, method: str = "scipy", block: int | None = None):
        self.method = check_choice("method", method, ("scipy", "pot"))
        self.block = None if block is None else check_int("block", block, 2)

    def __call__(self, x0, eps, generator):
        if eps is None:
            eps = _noise_like(x0, generator)
        n = x0.shape[0]
        size = n if self.block is None else self.block
        perm = torch.empty(n, dtype=torch.int64)
        for i in range(0, n, size):
            j = min(n, i + size)
            perm[i:j] = i + ot_permutation(x0[i:j], eps[i:j], self.method)
        return x0, eps[perm.to(eps.device)]

    def spec(self):
        return {"name": self.name, "method": self.method, "block": self.block}


class Paired(Coupling):
    """Fixed pairs: the data set is ``(sample, noise)`` and batches pass through unchanged (reflow)."""

    name = "paired"
    paired = True

    def __init__(self, store: PairStore | str | os.PathLike | None = None):
        self.store = None if store is None else (store if isinstance(store, PairStore) else PairStore(store))

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sample, noise)`` from the store."""
        if self.store is None:
            raise ValueError("this paired coupling has no pair store; give the (x0, eps) tensors as the data")
        return self.store.load()

    def __call__(self, x0, eps, generator):
        if eps is None:
            raise ValueError(
                "a paired (reflow) coupling needs data given as (sample, noise) pairs, e.g. PairStore(dir).load()"
            )
        if eps.shape != x0.shape:
            raise ValueError(f"paired noise shape {tuple(eps.shape)} differs from the sample shape {tuple(x0.shape)}")
        return x0, eps

    def spec(self):
        return {"name": self.name, "store": None if self.store is None else str(self.store.root)}


def get_coupling(name, **options) -> Coupling:
    """A coupling by name: ``"independent"``, ``"minibatch-ot"``, ``"paired"``/``"reflow"``."""
    if isinstance(name, Coupling):
        return name
    if isinstance(name, dict):
        opts = dict(name)
        return get_coupling(opts.pop("name"), **opts)
    check_choice("coupling", name, COUPLINGS)
    if name == "independent":
        return Independent(**options)
    if name == "minibatch-ot":
        return MinibatchOT(**options)
    return Paired(**options)


# --- reflow pairs on disk -----------------------------------------------------------------------
INDEX = "index.json"
FORMAT = "pfode-reflow-pairs"


class PairStore:
    """A folder of ``(noise, sample)`` pairs: ``shard-NNNNNN.safetensors`` files and ``index.json``.

    Each shard holds tensors ``"noise"`` (the standard normal draw ``z``) and ``"sample"`` (the teacher's
    PF-ODE solution from ``x_T = sigma(T) z``), ``[count, *data_shape]``. The index records the settings,
    each shard's count and SHA-256, and whether generation finished.
    """

    def __init__(self, root, verify: bool = True):
        self.root = FsPath(root)
        self.verify = bool(verify)
        idx = self.root / INDEX
        if not idx.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a reflow pair store (no {INDEX}); make one with pfode.train.generate_reflow_pairs"
            )
        self.index = json.loads(idx.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{idx}: format {self.index.get('format')!r} is not {FORMAT!r}")

    def __len__(self) -> int:
        return sum(s["count"] for s in self.index["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs as ``(sample, noise)`` tensors (the order a trainer expects: data first)."""
        from safetensors.torch import load_file

        if not self.complete:
            raise ValueError(
                f"{self.root}: pair generation did not finish ({len(self)} of {self.index['n']}); "
                "run generate_reflow_pairs again to resume it"
            )
        samples, noises = [], []
        for s in self.index["shards"]:
            f = self.root / s["file"]
            if self.verify and sha256_file(f) != s["sha256"]:
                raise ValueError(f"{f}: contents do not match the SHA-256 in {INDEX} (corrupted or replaced)")
            t = load_file(str(f))
            if set(t) != {"noise", "sample"}:
                raise ValueError(f"{f}: expected tensors 'noise' and 'sample', found {sorted(t)}")
            samples.append(t["sample"])
            noises.append(t["noise"])
        return torch.cat(samples), torch.cat(noises)


def _teacher_desc(teacher) -> dict:
    return {
        "path": repr(teacher.path),
        "prediction": teacher.prediction,
        "time_input": teacher.time_input if isinstance(teacher.time_input, str) else "callable",
    }


def generate_reflow_pairs(
    teacher,
    n: int,
    root,
    data_shape,
    *,
    batch_size: int = 1000,
    solver="dpm++2m",
    nfe: int | None = None,
    grid=None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **sample_options,
) -> PairStore:
    """Solve ``teacher``'s PF-ODE from ``n`` noise draws and store the ``(noise, sample)`` pairs in ``root``.

    Batch ``b`` draws ``z ~ N(0, I)`` from a generator seeded with ``(seed, b)``, starts at
    ``x_T = sigma(T) z`` (``T`` the grid's first time, default ``teacher.path.t_max``) and integrates with
    :func:`pfode.sample` (``solver`` with ``nfe`` or an explicit ``grid``; any path and prediction type).
    Each finished batch becomes one shard written atomically, then the index is rewritten atomically;
    calling again with the same settings skips finished shards (and refuses different settings).

    Returns the :class:`PairStore`.
    """
    from tqdm.auto import tqdm

    from ..sample import sample as pf_sample
    from ..solvers import get as get_solver

    check_denoiser(teacher, "teacher")
    check_int("n", n, 1)
    check_int("batch_size", batch_size, 1)
    if (nfe is None) == (grid is None):
        raise ValueError("give exactly one of nfe= (with solver) or grid=")
    shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(d) for d in data_shape)
    solver_obj = get_solver(solver)
    root = FsPath(root)
    root.mkdir(parents=True, exist_ok=True)
    g_list = None if grid is None else [float(v) for v in torch.as_tensor(grid, dtype=torch.float64).tolist()]
    t_start = g_list[0] if g_list else float(sample_options.get("t_start") or teacher.path.t_max)
    settings = {
        "n": n,
        "batch_size": batch_size,
        "data_shape": list(shape),
        "seed": int(seed),
        "solver": solver_obj.name,
        "nfe": nfe,
        "grid": g_list,
        "t_start": t_start,
        "dtype": str(dtype).replace("torch.", ""),
        "teacher": _teacher_desc(teacher),
        "sample_options": {k: v for k, v in sample_options.items() if isinstance(v, (int, float, str, bool))},
    }
    idx_path = root / INDEX
    if idx_path.is_file():
        index = json.loads(idx_path.read_text())
        old = {k: index.get(k) for k in settings}
        if old != settings:
            diff = [k for k in settings if old[k] != settings[k]]
            raise ValueError(
                f"{root} holds pairs generated with other settings ({', '.join(diff)} differ); "
                "use another folder or the same settings to resume"
            )
    else:
        index = {"format": FORMAT, "version": 1, **settings, "shards": [], "complete": False}
    n_batches = math.ceil(n / batch_size)
    done = {s["batch"] for s in index["shards"]}
    sigma_T = float(teacher.path.sigma(t_start))
    bar = tqdm(total=n_batches, initial=len(done), disable=not progress, desc="reflow pairs", unit="batch")
    try:
        for b in range(n_batches):
            if b in done:
                continue
            count = min(batch_size, n - b * batch_size)
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + b) % (2**63 - 1))
            z = torch.randn((count, *shape), generator=gen, dtype=torch.float32).to(dtype)
            x_T = (sigma_T * z).to(device)
            with torch.no_grad():
                if g_list is not None:
                    x0 = pf_sample(
                        teacher, x_T, torch.tensor(g_list, dtype=torch.float64), solver_obj, **sample_options
                    )
                else:
                    x0 = pf_sample(teacher, x_T, solver=solver_obj, nfe=nfe, **sample_options)
            name = f"shard-{b:06d}.safetensors"
            shard = {"noise": z.contiguous().cpu(), "sample": x0.detach().to(dtype).contiguous().cpu()}
            atomic_save_tensors(root / name, shard)
            index["shards"].append({"batch": b, "file": name, "count": count, "sha256": sha256_file(root / name)})
            index["shards"].sort(key=lambda s: s["batch"])
            index["complete"] = len(index["shards"]) == n_batches
            atomic_write_json(idx_path, index)
            bar.update(1)
    finally:
        bar.close()
    if not index["complete"]:  # every batch was already there but the flag was not set
        index["complete"] = len(index["shards"]) == n_batches
        atomic_write_json(idx_path, index)
    return PairStore(root)
