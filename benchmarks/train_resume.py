"""Kill a training run with SIGKILL mid-way, resume it, and compare with an uninterrupted run.

Both runs are ``python -m pfode.train`` processes on the same configuration (2-D moons, flow matching with
the minibatch-OT coupling and logit-normal times, checkpoints every 100 steps). The interrupted run is
killed with SIGKILL once its latest checkpoint passes 40% of the steps, then restarted with ``--resume``.
Reported: the step it was killed at, the checkpoint it resumed from, whether the final checkpoints are
byte-identical (SHA-256 of the safetensors file) and tensor-identical, and whether the loss curves in
``metrics.csv`` agree row by row.

Run: ``.venv/bin/python benchmarks/train_resume.py`` (about a minute). Writes
``benchmarks/results/train_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import setup, table, write_json  # noqa: E402

from pfode.train import read_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def config(steps):
    return {
        "data": {"name": "toy2d", "kind": "moons", "n": 20000, "seed": 0},
        "model": {"name": "mlp", "width": 128, "depth": 3, "time_dim": 32},
        "objective": {"name": "flow-matching", "coupling": "minibatch-ot", "time_sampler": "logit-normal"},
        "train": {
            "iterations": steps,
            "batch_size": 256,
            "lr": 2e-3,
            "warmup_steps": 50,
            "lr_schedule": "cosine",
            "ema_decay": 0.99,
            "seed": 3,
            "log_every": 10,
            "ckpt_every": 100,
            "keep_checkpoints": 3,
            "quiet": True,
        },
    }


def cmd(cfg_path, out, resume=False):
    c = [sys.executable, "-m", "pfode.train", str(cfg_path), "--out", str(out)]
    return c + (["--resume", str(out)] if resume else [])


def losses(out):
    rows = (Path(out) / "metrics.csv").read_text().splitlines()[1:]
    return [tuple(r.split(",")[:4]) for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args(argv)
    setup()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    work = Path(tempfile.mkdtemp(prefix="pfode-resume-"))
    cfg_path = work / "cfg.json"
    cfg_path.write_text(json.dumps(config(args.steps)))

    t0 = time.time()
    subprocess.run(cmd(cfg_path, work / "full"), env=env, check=True, capture_output=True)
    t_full = time.time() - t0

    proc = subprocess.Popen(
        cmd(cfg_path, work / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ptr = work / "killed" / "checkpoints" / "latest.json"
    target = int(0.4 * args.steps)
    while proc.poll() is None:
        if ptr.exists():
            step = int(json.loads(ptr.read_text())["latest"][5:13])
            if step >= target:
                break
        time.sleep(0.02)
    time.sleep(0.5)  # land between checkpoints, mid-way through later steps
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_rows = len(losses(work / "killed"))
    resumed_from = read_checkpoint(work / "killed" / "checkpoints").step
    leftovers = [p.name for p in (work / "killed" / "checkpoints").iterdir() if p.name.startswith(".")]

    subprocess.run(cmd(cfg_path, work / "killed", resume=True), env=env, check=True, capture_output=True)
    a = read_checkpoint(work / "full" / "checkpoints")
    b = read_checkpoint(work / "killed" / "checkpoints")
    same_bytes = a.meta["sha256"] == b.meta["sha256"]
    same_tensors = set(a.tensors) == set(b.tensors) and all(
        torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors
    )
    la, lb = losses(work / "full"), losses(work / "killed")
    res = {
        "steps": args.steps,
        "killed_by": "SIGKILL",
        "killed_return_code": proc.returncode,
        "metrics_rows_when_killed": killed_rows,
        "step_when_killed_at_least": killed_rows * 10,
        "resumed_from_checkpoint_step": resumed_from,
        "temporary_files_left_by_the_kill": leftovers,
        "final_step": [a.step, b.step],
        "final_safetensors_sha256_equal": same_bytes,
        "final_tensors_equal": same_tensors,
        "n_tensors": len(a.tensors),
        "loss_rows_equal": la == lb,
        "loss_rows": len(la),
        "final_loss": [a.meta["loss"], b.meta["loss"]],
        "uninterrupted_run_s": t_full,
    }
    print(table([[k, str(v)] for k, v in res.items()], ["quantity", "value"]))
    p = write_json("train_resume.json", res)
    print(f"wrote {p}")
    if not (same_bytes and same_tensors and la == lb):
        sys.exit(1)


if __name__ == "__main__":
    main()
