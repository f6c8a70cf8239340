"""A plain PyTorch training loop with exact resume and data-parallel training.

One step: take the next global batch (a per-epoch permutation fixed by the seed), let the objective draw
its noise, times and coupling for the *whole global batch* from the trainer's generator (identical on
every process), give each process its contiguous slice, backpropagate (DDP averages the gradients, so
``P`` processes with local batch ``B / P`` match one process with batch ``B``), clip, step AdamW, update
the EMA weights.

Everything the future depends on -- model, EMA, optimizer state, the step (which fixes the data order),
the trainer's generator and torch's global RNG -- goes into each checkpoint, so ``resume`` continues the
exact loss curve of an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path as FsPath

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import (
    CheckpointError,
    check_tensors,
    flatten_optimizer,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from .losses import Objective

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``step`` and the last good ``checkpoint`` are attributes."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainConfig:
    """Training hyper-parameters (all JSON-serialisable).

    ``batch_size`` is the global batch (split evenly over processes). ``precision``: ``"auto"`` (bf16
    autocast on CUDA devices that support it, float32 otherwise), ``"fp32"`` or ``"bf16"``. ``ckpt_every``
    / ``sample_every`` / ``log_every`` of 0 disable the periodic action (a final checkpoint is always
    written). ``ema_decay = 0`` makes the EMA a copy of the weights. ``iterations`` is the number of optimizer
    steps (it was called ``steps`` before: a configuration using that name is refused with a message, a
    checkpoint written with it still resumes).
    """

    iterations: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    log_every: int = 50
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    sample_every: int = 0
    sample_n: int = 512
    sample_nfe: int = 20
    quiet: bool = False
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    # fields that may change between a run and its resumption without breaking exactness of the past
    RESUMABLE_CHANGES = frozenset(
        {
            "iterations",
            "log_every",
            "ckpt_every",
            "keep_checkpoints",
            "sample_every",
            "sample_n",
            "sample_nfe",
            "quiet",
            "tensorboard",
            "device",
            "extra",
        }
    )

    def __post_init__(self):
        from .._checks import check_choice, check_int

        for name in ("iterations", "warmup_steps", "seed", "log_every", "ckpt_every", "sample_every"):
            check_int(name, getattr(self, name), 0)
        check_int("keep_checkpoints", self.keep_checkpoints, 0)
        for name in ("batch_size", "sample_n", "sample_nfe"):
            check_int(name, getattr(self, name), 1)
        check_choice("optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        check_choice("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r} must be in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be > 0 or None")
        self.betas = tuple(float(b) for b in self.betas)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The configuration of the ``train`` section ``d`` (``ValueError`` naming an unknown option)."""
        if "steps" in d:
            raise ValueError(
                "train.steps was renamed to train.iterations (the number of optimizer steps; pfode keeps "
                "'steps' for the intervals of a time grid)"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; valid options: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


class Trainer:
    """Train ``model`` with ``objective`` on ``data``.

    Args:
        model: an ``nn.Module`` ``(x, t) -> output`` (the objective may wrap it, e.g. consistency models).
        objective: a :class:`pfode.train.losses.Objective`.
        data: a tensor ``[N, *shape]`` or, for paired couplings (reflow), a pair ``(sample, noise)``; left
            out for a paired coupling with a store.
        config: a :class:`TrainConfig` or a dict of its fields.
        out_dir: folder for ``checkpoints/``, ``metrics.csv``, ``samples/`` (rank 0 writes).
        spec: extra JSON-serialisable description stored in every checkpoint (e.g. the model config).
        resume: continue from the latest checkpoint in ``out_dir`` when there is one.
        reference: data to draw in sample plots (2-D), optional.

    Run with ``torchrun --nproc_per_node P`` for data-parallel training (gloo on CPU, NCCL on CUDA).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        data=None,
        config: TrainConfig | dict | None = None,
        out_dir=None,
        *,
        spec: dict | None = None,
        resume: bool = False,
        reference: torch.Tensor | None = None,
    ):
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a pfode.train Objective, got {type(objective).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
        self.objective = objective
        self.spec = spec or {}
        self._setup_dist()
        self.device = self._pick_device()
        self.amp = self.cfg.precision == "bf16" or (
            self.cfg.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.model = objective.wrap(model).to(self.device)
        self.data = self._check_data(data)
        self.n = self.data[0].shape[0]
        if self.cfg.batch_size % self.world:
            raise ValueError(
                f"batch_size={self.cfg.batch_size} cannot be split evenly across {self.world} processes; "
                f"use a multiple of {self.world}"
            )
        self.local_batch = self.cfg.batch_size // self.world
        if self.n < self.cfg.batch_size:
            raise ValueError(f"the dataset has {self.n} samples, fewer than batch_size={self.cfg.batch_size}")
        self._probe()
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self.generator = torch.Generator().manual_seed(self.cfg.seed * 2 + 1)
        self.step = 0
        self.history: list[dict] = []
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self.out_dir = FsPath(out_dir) if out_dir is not None else None
        self.last_checkpoint: str | None = None
        self._tb = None
        self.reference = reference
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.net = self.model
        if self.out_dir is not None and self.rank == 0:
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._descriptions = self._describe()
        if resume:
            self.resume()

    # -- set-up ------------------------------------------------------------------------------
    def _setup_dist(self):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and not dist.is_initialized() and world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def _pick_device(self) -> torch.device:
        d = self.cfg.device
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d)
        return torch.device(f"cuda:{self.local_rank}") if dev.type == "cuda" and dev.index is None else dev

    def _check_data(self, data):
        coupling = self.objective.coupling
        if data is None and not coupling.paired:
            raise ValueError("no data given (a tensor [N, *shape], or (sample, noise) pairs for reflow)")
        data = coupling.data() if data is None else data
        data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
        if not 1 <= len(data) <= 2 or not all(isinstance(d, torch.Tensor) for d in data):
            raise TypeError("data must be a tensor [N, *shape] or a pair of tensors (sample, noise)")
        if coupling.paired and len(data) != 2:
            raise ValueError(f"coupling {coupling.name!r} needs (sample, noise) pairs, got a single tensor")
        if len(data) == 2 and not coupling.paired:
            raise ValueError(f"paired data (sample, noise) needs coupling='paired' or 'reflow', not {coupling.name!r}")
        x = data[0]
        if not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"data must be a floating-point tensor [N, *shape], got {x.dtype} {tuple(x.shape)}")
        if len(data) == 2 and data[1].shape != x.shape:
            raise ValueError(f"noise {tuple(data[1].shape)} and samples {tuple(x.shape)} differ in shape")
        want = getattr(self.model, "data_shape", None)
        if want is not None and tuple(x.shape[1:]) != tuple(want):
            raise ValueError(
                f"dataset samples have shape {tuple(x.shape[1:])} but the network expects {tuple(want)}; "
                f"build the network with data_shape={tuple(x.shape[1:])} or reshape the data"
            )
        for d in data:
            if not bool(torch.isfinite(d).all()):
                raise ValueError("data has non-finite values (NaN or inf)")
        return tuple(d.to(torch.float32) if d.dtype != torch.float64 else d for d in data)

    def _probe(self):
        """Run the objective on two samples to turn shape errors into a clear message up front."""
        g = torch.Generator().manual_seed(0)
        batch = tuple(d[:2].to(self.device) for d in self.data)
        try:
            prep = self.objective.prepare(batch[0] if len(batch) == 1 else batch, g, 0)
            with torch.no_grad():
                self.objective.loss(self.model, prep, step=0, target_model=self.model)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"the network cannot be trained on dataset samples of shape {tuple(self.data[0].shape[1:])} "
                f"with {self.objective.name}: {e}"
            ) from e

    def _describe(self) -> dict:
        """``model_config`` and ``denoiser`` for every checkpoint, so :func:`pfode.models.load` can rebuild the
        model; what cannot be described as JSON is left out, with a warning (the run still resumes)."""
        out = {"model_config": None}
        describers = (("model_config", getattr(self.model, "config", None)), ("denoiser", self.objective.denoiser_spec))
        for key, describe in describers:
            try:
                out[key] = describe() if describe is not None else None
            except ValueError as e:
                if self.rank == 0:
                    warnings.warn(f"checkpoints of this run cannot be loaded by pfode.models.load: {e}", stacklevel=3)
        return out

    def _make_optimizer(self):
        c = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.betas[0], weight_decay=c.weight_decay)

    # -- schedule and data order -------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine decay."""
        c = self.cfg
        f = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        if c.lr_schedule == "cosine" and c.iterations > c.warmup_steps:
            u = min(1.0, max(0.0, (step - c.warmup_steps) / (c.iterations - c.warmup_steps)))
            f *= c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * u))
        return c.lr * f

    def batch_indices(self, step: int) -> torch.Tensor:
        """Global batch of step ``step``: a slice of the permutation of epoch ``step // (N // B)``."""
        per_epoch = self.n // self.cfg.batch_size
        epoch, k = divmod(step, per_epoch)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1))
            self._perm_cache = (epoch, torch.randperm(self.n, generator=g))
        b = self.cfg.batch_size
        return self._perm_cache[1][k * b : (k + 1) * b]

    # -- one step ----------------------------------------------------------------------------
    def _local(self, prep: dict) -> dict:
        b, r, lb = self.cfg.batch_size, self.rank, self.local_batch
        out = {}
        for k, v in prep.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == b:
                v = v[r * lb : (r + 1) * lb]
            out[k] = v.to(self.device) if isinstance(v, torch.Tensor) else v
        return out

    def train_step(self) -> dict:
        """One optimisation step; returns ``{"step", "loss", "lr", "grad_norm"}`` (step after it)."""
        idx = self.batch_indices(self.step)
        batch = tuple(d[idx].to(self.device) for d in self.data)
        prep = self.objective.prepare(batch[0] if len(batch) == 1 else batch, self.generator, self.step)
        local = self._local(prep)
        lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.net.train()
        target = self.ema if self.objective.target_kind == "ema" else self.model
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, _ = self.objective.loss(self.net, local, step=self.step, target_model=target)
        value = loss.detach().float().clone()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        value = float(value)
        if not math.isfinite(value):
            self._non_finite(f"loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = math.inf if self.cfg.grad_clip is None else self.cfg.grad_clip  # inf: the norm, no clipping
        gn = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(gn):  # every process sees the same reduced gradients
            self.optimizer.zero_grad(set_to_none=True)
            self._non_finite(f"gradient norm is {gn}")
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        rec = {"step": self.step, "loss": value, "lr": lr, "grad_norm": gn}
        self.history.append(rec)
        return rec

    def _non_finite(self, what: str):
        last = self.last_checkpoint
        where = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"
        raise NonFiniteLossError(
            f"{what} at step {self.step} (0-based; the update was not applied){where}. "
            "Lower lr, enable grad_clip, or check the data and the weighting",
            self.step,
            self.last_checkpoint,
        )

    @torch.no_grad()
    def _update_ema(self):
        d = self.cfg.ema_decay
        for pe, p in zip(self.ema.parameters(), self.model.parameters()):
            if d == 0.0:
                pe.copy_(p.detach())
            else:
                pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(b)

    # -- loop --------------------------------------------------------------------------------
    def fit(self, iterations: int | None = None, save_final: bool = True) -> list[dict]:
        """Train until ``iterations`` (default ``config.iterations``) optimizer steps are done; then write a
        checkpoint (unless ``save_final=False``)."""
        from tqdm.auto import tqdm

        c = self.cfg
        total = c.iterations if iterations is None else int(iterations)
        bar = tqdm(total=total, initial=self.step, disable=c.quiet or self.rank != 0, desc="train", unit="step")
        t0 = time.time()
        try:
            while self.step < total:
                rec = self.train_step()
                bar.update(1)
                if c.log_every and self.step % c.log_every == 0:
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.2g}")
                    self._log(rec, time.time() - t0)
                if c.ckpt_every and self.step % c.ckpt_every == 0:
                    self.save()
                if c.sample_every and self.step % c.sample_every == 0:
                    self.sample_plot()
        finally:
            bar.close()
        last = self.last_checkpoint
        done = last is not None and last.endswith(f"step-{self.step:08d}.json")
        if save_final and not done:
            self.save()
        return self.history

    # -- metrics and plots -------------------------------------------------------------------
    def _log(self, rec: dict, elapsed: float):
        if self.rank != 0 or self.out_dir is None:
            return
        path = self.out_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "loss", "lr", "grad_norm", "elapsed_s"])
            w.writerow([rec["step"], repr(rec["loss"]), repr(rec["lr"]), repr(rec["grad_norm"]), f"{elapsed:.3f}"])
        if self.cfg.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
                except ImportError:
                    self._tb = False
            if self._tb:
                for k in ("loss", "lr", "grad_norm"):
                    self._tb.add_scalar(k, rec[k], rec["step"])

    def _truncate_metrics(self, step: int):
        path = None if self.out_dir is None else self.out_dir / "metrics.csv"
        if self.rank != 0 or path is None or not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    @torch.no_grad()
    def sample_plot(self, path=None):
        """Draw ``sample_n`` samples from the EMA model and save a PNG (rank 0)."""
        if self.rank != 0 or (self.out_dir is None and path is None):
            return None
        from ..plots import save_samples

        g = torch.Generator().manual_seed(self.cfg.seed + 12345)
        z = torch.randn((self.cfg.sample_n, *self.data[0].shape[1:]), generator=g).to(self.device)
        self.ema.eval()
        x = self.objective.sample(self.ema, z, nfe=self.cfg.sample_nfe, generator=g)
        path = path or self.out_dir / "samples" / f"step-{self.step:08d}.png"
        ref = self.reference if self.reference is not None else self.data[0][:2000]
        save_samples(x, path, f"{self.objective.name}, step {self.step}, {self.cfg.sample_nfe} NFE", reference=ref)
        return path

    # -- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict, dict]:
        """Every tensor to store and the optimizer's JSON structure."""
        t = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        t.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        ot, ometa = flatten_optimizer(self.optimizer.state_dict())
        t.update(ot)
        t["rng/trainer"] = self.generator.get_state()
        t["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            t["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        return t, ometa

    def save(self) -> str | None:
        """Write a checkpoint of the current step (rank 0); returns its JSON path."""
        if self.out_dir is None:
            return None
        folder = self.out_dir / "checkpoints"
        if self.rank == 0:
            tensors, ometa = self.state_tensors()
            meta = {
                "config": self.cfg.to_dict(),
                "spec": self.spec,
                "objective": self.objective.spec(),
                **self._descriptions,
                "optimizer": ometa,
                "data": {
                    "n": self.n,
                    "shape": list(self.data[0].shape[1:]),
                    "epoch": self.step // max(1, self.n // self.cfg.batch_size),
                },
                "world_size": self.world,
                "loss": self.history[-1]["loss"] if self.history else None,
            }
            save_checkpoint(folder, self.step, tensors, meta, self.cfg.keep_checkpoints)
        if self.world > 1:
            dist.barrier()
        self.last_checkpoint = str(folder / f"step-{self.step:08d}.json")
        return self.last_checkpoint if self.rank == 0 else None

    def load(self, path, strict_config: bool = True):
        """Restore everything from a checkpoint (JSON, tensor file or folder) -- strictly checked."""
        ck = read_checkpoint(path)
        check_tensors(self.model.state_dict(), ck.section("model"), "the model weights", str(ck.json_path))
        check_tensors(self.ema.state_dict(), ck.section("ema"), "the EMA weights", str(ck.json_path))
        if strict_config:
            old = dict(ck.meta.get("config", {}))
            if "steps" in old and "iterations" not in old:  # written before the rename
                old["iterations"] = old.pop("steps")
            new = self.cfg.to_dict()
            diff = sorted(
                k for k in set(old) | set(new) if k not in TrainConfig.RESUMABLE_CHANGES and old.get(k) != new.get(k)
            )
            if diff:
                lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                raise CheckpointError(
                    f"{ck.json_path}: resuming with other training settings would not continue the same run "
                    f"({lines}); pass strict_config=False to resume anyway"
                )
        osd = unflatten_optimizer(ck.tensors, ck.meta["optimizer"])
        cur = self.optimizer.state_dict()
        if len(osd["param_groups"]) != len(cur["param_groups"]) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(osd["param_groups"], cur["param_groups"])
        ):
            raise CheckpointError(f"{ck.json_path}: optimizer parameter groups do not match the model")
        plist = [p for p in self.model.parameters() if p.requires_grad]
        problems = []
        for pid, st in osd["state"].items():
            if pid >= len(plist):
                problems.append(f"optim/{pid}: no such parameter (the model has {len(plist)})")
                continue
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(plist[pid].shape):
                    problems.append(f"optim/{pid}/{k}: shape {tuple(v.shape)}, parameter has {tuple(plist[pid].shape)}")
        if problems:
            raise CheckpointError(
                f"{ck.json_path}: optimizer state does not match the model:\n  " + "\n  ".join(problems)
            )
        self.model.load_state_dict(ck.section("model"), strict=True)
        self.ema.load_state_dict(ck.section("ema"), strict=True)
        self.optimizer.load_state_dict(osd)
        self.generator.set_state(ck.tensors["rng/trainer"])
        torch.set_rng_state(ck.tensors["rng/torch"])
        if "rng/cuda" in ck.tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck.tensors["rng/cuda"], self.device)
        self.step = ck.step
        self.last_checkpoint = str(ck.json_path)
        self._truncate_metrics(self.step)
        return ck

    def resume(self, path=None, strict_config: bool = True) -> bool:
        """Load the latest checkpoint of ``out_dir`` (or ``path``); ``False`` when there is none."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("resume needs out_dir or a checkpoint path")
            path = self.out_dir / "checkpoints"
            if latest_checkpoint(path) is None:
                return False  # (the folder, not its latest file: a damaged latest falls back to an intact one)
        self.load(path, strict_config)
        return True
