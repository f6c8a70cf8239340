"""Peak memory of gradients through the sampler: direct backprop vs the adjoint methods, 10/50/200 steps.

Each configuration runs in a fresh Python subprocess (CPU, one thread). The subprocess builds the
network and inputs, runs a 2-step warm-up forward/backward on 2 samples (loading kernels and thread
pools without touching the big allocations), reads
``ru_maxrss`` (the process's peak resident memory so far), then runs one forward pass of the sampler
and ``loss.backward()``, and reads ``ru_maxrss`` again: the difference is the peak memory the
configuration added (activations kept for backward, stored states, temporaries). Each configuration
is measured twice: with the default glibc allocator (what a user sees; includes the heap's retained
free space) and with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` fixed at 128 KiB, where freed
blocks go back to the OS and the figure is close to the live tensor memory. The same
subprocess also reports the gradient's relative difference to direct backpropagation (computed in a
separate subprocess and passed back through a file).

Network: an MLP eps-model (``--hidden`` units, 3 hidden layers, float32) on ``d``-dimensional data,
batch ``--batch``; solver ``dpm++2m`` on the VP path; loss ``sum(x^2)``.

* direct: ``loss(pfode.sample(...)).backward()``: every step's graph is kept (memory linear in steps);
* adjoint discrete: :func:`pfode.adjoint.adjoint_sample`, exact gradients, keeps the grid states (no graphs);
* adjoint continuous: AdjointDPM, keeps nothing but the final state (constant memory).

Run: ``python benchmarks/adjoint_memory.py`` (``--quick``: a smaller network). Writes
``benchmarks/results/adjoint_memory.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {src!r})
torch.set_num_threads(1)
import pfode
from pfode import paths as P
from pfode.adjoint import adjoint_sample

cfg = json.loads(sys.argv[1])
d, hidden, batch, steps, mode = cfg["d"], cfg["hidden"], cfg["batch"], cfg["steps"], cfg["mode"]
torch.manual_seed(0)

class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(d + 1, hidden)
        self.hid = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden) for _ in range(3)])
        self.out = torch.nn.Linear(hidden, d)
    def forward(self, x, t):
        h = torch.nn.functional.silu(self.inp(torch.cat([x, t[:, None]], 1)))
        for layer in self.hid:
            h = torch.nn.functional.silu(layer(h))
        return self.out(h)

net = MLP()
path = P.VP()
den = pfode.Denoiser(net, path, prediction="eps")
x_T = torch.randn(batch, d)

def run(n, b=batch):
    grid = pfode.grid(path, n)
    x = x_T[:b].clone().requires_grad_(True)
    net.zero_grad()
    if mode == "direct":
        out = pfode.sample(den, x, grid, "dpm++2m")
    else:
        out = adjoint_sample(den, x, grid, "dpm++2m", method=mode)
    (out ** 2).sum().backward()
    return torch.cat([x.grad.flatten()] + [p.grad.flatten() for p in net.parameters()])

run(2, 2)  # warm-up on 2 samples: loads kernels and thread pools, leaves the big allocations to the run
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
g = run(steps)
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.save(g, cfg["grad_file"])
print(json.dumps({{"peak_delta_mb": (peak - base) / 1024.0, "baseline_mb": base / 1024.0, "seconds": sec}}))
"""


def run_child(cfg: dict, fixed_malloc: bool = False) -> dict:
    code = CHILD.format(src=str(ROOT.parent / "src"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fixed_malloc:  # glibc: large blocks always mmap'ed and returned on free -> RSS ~ live memory
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "results" / "adjoint_memory"))
    args = ap.parse_args()
    import torch

    hidden = 128 if args.quick else args.hidden
    steps_list = [10, 50, 200]
    modes = ["direct", "discrete", "continuous"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in steps_list:
            grads = {}
            for mode in modes:
                gf = os.path.join(tmp, f"{mode}_{steps}.pt")
                cfg = {
                    "d": args.d,
                    "hidden": hidden,
                    "batch": args.batch,
                    "steps": steps,
                    "mode": mode,
                    "grad_file": gf,
                }
                r = run_child(cfg)
                grads[mode] = torch.load(gf)
                r2 = run_child(cfg, fixed_malloc=True)
                rows.append(
                    {"steps": steps, "mode": mode, **r, "peak_delta_mb_fixed_malloc": r2["peak_delta_mb"]}
                )
            for r in rows:
                if r["steps"] == steps:
                    ref = grads["direct"]
                    r["grad_rel_diff_vs_direct"] = float((grads[r["mode"]] - ref).norm() / ref.norm())
    base10 = {r["mode"]: r["peak_delta_mb"] for r in rows if r["steps"] == 10}
    base10f = {r["mode"]: r["peak_delta_mb_fixed_malloc"] for r in rows if r["steps"] == 10}
    print(
        f"MLP eps-model, d={args.d}, hidden={hidden} x3, batch={args.batch}, float32, dpm++2m on VP, "
        "CPU 1 thread"
    )
    print("peak MB: ru_maxrss increase, default glibc malloc; live MB: the same with a fixed mmap threshold")
    print(
        f"{'mode':12s} {'steps':>6s} {'peak MB':>9s} {'x 10-step':>10s} {'live MB':>9s} {'x 10-step':>10s} "
        f"{'sec':>7s} {'grad rel diff':>14s}"
    )
    for r in rows:
        r["ratio_to_10_steps"] = r["peak_delta_mb"] / max(base10[r["mode"]], 1e-9)
        r["ratio_to_10_steps_fixed_malloc"] = r["peak_delta_mb_fixed_malloc"] / max(base10f[r["mode"]], 1e-9)
        print(
            f"{r['mode']:12s} {r['steps']:6d} {r['peak_delta_mb']:9.1f} {r['ratio_to_10_steps']:10.2f} "
            f"{r['peak_delta_mb_fixed_malloc']:9.1f} {r['ratio_to_10_steps_fixed_malloc']:10.2f} "
            f"{r['seconds']:7.2f} {r['grad_rel_diff_vs_direct']:14.2e}"
        )
    state_mb = args.batch * args.d * 4 / 2**20
    print(
        f"(one state of the batch is {state_mb:.3f} MB; the discrete adjoint keeps a state and an x0_hat "
        "per step)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "d": args.d,
        "hidden": hidden,
        "layers": 3,
        "batch": args.batch,
        "dtype": "float32",
        "solver": "dpm++2m",
        "path": "vp",
        "measure": "ru_maxrss delta in a fresh subprocess after a 2-step, 2-sample warm-up",
        "torch": torch.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.6))
        for mode in modes:
            rr = [r for r in rows if r["mode"] == mode]
            ax.plot([r["steps"] for r in rr], [r["peak_delta_mb"] for r in rr], "o-", label=mode)
        ax.set_xlabel("steps")
        ax.set_ylabel("peak memory added (MB)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("gradient through dpm++2m sampling")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not available: no PNG")
    print(f"wrote {out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
