"""Shared helpers of the training benchmarks (``benchmarks/train_*.py``).

Torch runs single-threaded here: on a small shared CPU, OpenMP threads of concurrent processes
oversubscribe the cores and one thread is many times faster than two for these small networks.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def setup(threads: int = 1):
    torch.set_num_threads(threads)
    RESULTS.mkdir(parents=True, exist_ok=True)


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def write_json(name: str, payload: dict) -> Path:
    p = RESULTS / name
    p.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    return p


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [
        [f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
