"""``pfode info``: paths, prediction types, solvers (order, evaluations per step), models, installed extras."""

from __future__ import annotations

import json

from .common import one_line, say

HELP = "paths, prediction types, solvers (order, evaluations per step), models, installed extras"
EXTRAS = (
    ("diffusers", "pfode.integrations.diffusers"),
    ("k-diffusion", "pfode.integrations.k_diffusion"),
    ("POT", "minibatch OT coupling (method='pot')"),
    ("torchdiffeq", "benchmarks"),
    ("torchsde", "benchmarks"),
    ("pillow", "image-folder datasets"),
    ("tensorboard", "training logs"),
)


def add_arguments(p):
    pass


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cache_file():
    """Where the report is cached: ``$PFODE_CACHE_DIR``, else ``$XDG_CACHE_HOME/pfode``, else ``~/.cache/pfode``."""
    import os
    from pathlib import Path

    root = os.environ.get("PFODE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pfode"
    )
    return Path(root) / "info.json"


def _fingerprint() -> str:
    """What the report depends on, without importing torch: every file of the installed pfode (name, size,
    modification time), the versions of pfode, torch and the extras, the interpreter, the machine's CPU count and
    the device variables that decide what torch sees."""
    import hashlib
    import os
    import sys
    from pathlib import Path

    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted(pkg.rglob("*")):
        if f.suffix in (".py", ".json", ".safetensors") and "__pycache__" not in f.parts:
            st = f.stat()
            h.update(f"{f.relative_to(pkg)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    env = [os.environ.get(k, "") for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    vers = [_version(d) or "" for d in ("torch", *(dist for dist, _ in EXTRAS))]
    h.update(repr((sys.version, sys.executable, os.cpu_count(), env, vers)).encode())
    return h.hexdigest()


def report() -> list[str]:
    """The lines ``pfode info`` prints (imports torch and every solver)."""
    import torch

    from .. import __version__, models, paths, solvers
    from ..grids import SPACINGS
    from ..predictions import PREDICTIONS, TIME_INPUTS

    cuda = "available" if torch.cuda.is_available() else "not available"
    out = [f"pfode {__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads, cuda {cuda})"]
    out.append("\npaths: " + ", ".join(paths.available()))
    out.append("prediction types: " + ", ".join(PREDICTIONS))
    out.append("time inputs: " + ", ".join(TIME_INPUTS))
    out.append("grid spacings: " + ", ".join(SPACINGS))
    out.append(f"\n{'solver':<18}{'order':>6}{'evals/step':>12}  kind")
    for d in solvers.describe():
        kind = "stochastic" if d["stochastic"] else ("adaptive" if d["adaptive"] else "ODE")
        out.append(f"{d['name']:<18}{d['order']:>6}{d['evals_per_step']:>12}  {kind}")
    out.append("\nbuiltin models:")
    for name in models.BUILTIN:
        try:
            p = models.builtin_file(name)
            meta = json.loads(p.read_text())
            size = p.stat().st_size + (p.parent / meta["tensor_file"]).stat().st_size
            obj = (meta.get("spec") or {}).get("objective", {})
            out.append(
                f"  builtin:{name:<8} {meta.get('data', {}).get('shape')} {obj.get('name')} on "
                f"{obj.get('path')}, step {meta.get('step')}, {size / 1e6:.2f} MB"
            )
        except (OSError, ValueError, KeyError) as e:
            out.append(f"  builtin:{name:<8} unavailable ({one_line(str(e))})")
    out.append("\nextras:")
    for dist, what in EXTRAS:
        out.append(f"  {dist:<12} {_version(dist) or 'not installed':<16} {what}")
    return out


def run(args) -> int:
    """Print the report; it is cached (keyed by :func:`_fingerprint`) so that a repeated call imports no torch."""
    cache, key, lines = _cache_file(), _fingerprint(), None
    try:
        stored = json.loads(cache.read_text())
        if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("lines"), list):
            lines = [str(x) for x in stored["lines"]]
    except (OSError, ValueError):
        pass
    if lines is None:
        lines = report()
        try:  # atomically (pfode.io would import torch): a temporary file beside it, then a rename
            import os
            import tempfile

            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".info-")
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "lines": lines}, f)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: print without caching
    for line in lines:
        say(line)
    return 0
