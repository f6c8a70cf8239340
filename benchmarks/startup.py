"""Start-up cost of the ``pfode`` command: CPU time (user + system) of commands that do almost nothing.

Each command runs ``--runs`` times as a child process; its CPU time is the change of
``resource.getrusage(RUSAGE_CHILDREN)`` (user + system) around it, and the median is reported with the
wall time. Two baselines put the numbers in context: the bare interpreter (``python -c pass``) and
``python -c "import torch"`` -- what any command that touches a tensor pays first.

Commands: ``pfode --version``, ``pfode --help`` (neither imports torch), ``pfode info`` (its report lists solvers
and paths: computed once with torch, then read from a cache keyed by the installed pfode, torch and machine; the
"no cache" row times the first run) and ``python -c "import pfode"`` (lazy: imports nothing heavy until used).

Run: ``python benchmarks/startup.py [--runs 7]``; writes ``benchmarks/results/startup.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.5  # seconds of CPU: the goal for --version, --help and info (issue 14, section 4.4)


def pfode_command() -> list[str]:
    """The installed ``pfode`` script next to this interpreter, else ``python -m pfode.cli``."""
    script = Path(sys.executable).parent / "pfode"
    if script.exists():
        return [str(script)]
    found = shutil.which("pfode")
    return [found] if found else [sys.executable, "-m", "pfode.cli"]


def cases() -> dict[str, list[str]]:
    pf, py = pfode_command(), sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "python -c 'import pfode'": [py, "-c", "import pfode"],
        "pfode --version": [*pf, "--version"],
        "pfode --help": [*pf, "--help"],
        "pfode info": [*pf, "info"],
        "pfode info (no cache)": [*pf, "info"],
    }


def env_for(name: str, env: dict) -> dict:
    """``pfode info`` caches its report: the "no cache" row runs each time with an empty cache folder."""
    import tempfile

    return {**env, "PFODE_CACHE_DIR": tempfile.mkdtemp()} if name.endswith("(no cache)") else env


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def plot(path: Path, rows: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["command"] for r in rows][::-1]
    cpu = [r["cpu_s"] for r in rows][::-1]
    wall = [r["wall_s"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    y = range(len(names))
    ax.barh([v + 0.2 for v in y], cpu, height=0.4, label="CPU (user + sys)", color="tab:blue")
    ax.barh([v - 0.2 for v in y], wall, height=0.4, label="wall", color="tab:gray", alpha=0.6)
    ax.axvline(TARGET, color="tab:red", ls="--", lw=1, label=f"target {TARGET:g} s CPU")
    ax.set_yticks(list(y), names)
    ax.set_xlabel("seconds (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per command (median reported; default 7)")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json", help="JSON output (PNG beside it)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PFODE_CACHE_DIR": tempfile.mkdtemp()}
    todo = cases()
    for name, cmd in todo.items():  # warm the file cache (and pfode info's report cache) once, untimed
        measure(cmd, env_for(name, env))
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in todo}
    for _ in range(args.runs):  # interleaved, so that a busy moment touches every command alike
        for name, cmd in todo.items():
            samples[name].append(measure(cmd, env_for(name, env)))
    rows = []
    for name, got in samples.items():
        cpu = [c for c, _ in got]
        rows.append(
            {
                "command": name,
                "cpu_s": statistics.median(cpu),
                "cpu_min_s": min(cpu),
                "wall_s": statistics.median(w for _, w in got),
                "runs": len(got),
            }
        )
    print(f"{'command':<28}{'CPU median':>12}{'CPU min':>10}{'wall median':>13}")
    for r in rows:
        print(f"{r['command']:<28}{r['cpu_s']:>11.3f}s{r['cpu_min_s']:>9.3f}s{r['wall_s']:>12.3f}s")
    payload = {
        "what": "CPU time (user + sys, resource.getrusage of the child) and wall time, median of runs",
        "target_cpu_s": TARGET,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    plot(png, rows, f"pfode start-up, median of {args.runs} runs, {os.cpu_count()} CPUs, Python {payload['python']}")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
