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


def run(args) -> int:
    import torch

    from .. import __version__, models, paths, solvers
    from ..grids import SPACINGS
    from ..predictions import PREDICTIONS, TIME_INPUTS

    cuda = "available" if torch.cuda.is_available() else "not available"
    say(f"pfode {__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads, cuda {cuda})")
    say("\npaths: " + ", ".join(paths.available()))
    say("prediction types: " + ", ".join(PREDICTIONS))
    say("time inputs: " + ", ".join(TIME_INPUTS))
    say("grid spacings: " + ", ".join(SPACINGS))
    say(f"\n{'solver':<16}{'order':>6}{'evals/step':>12}  kind")
    for d in solvers.describe():
        kind = "stochastic" if d["stochastic"] else ("adaptive" if d["adaptive"] else "ODE")
        say(f"{d['name']:<16}{d['order']:>6}{d['evals_per_step']:>12}  {kind}")
    say("\nbuiltin models:")
    for name in models.BUILTIN:
        try:
            p = models.builtin_file(name)
            meta = json.loads(p.read_text())
            size = p.stat().st_size + (p.parent / meta["tensor_file"]).stat().st_size
            obj = (meta.get("spec") or {}).get("objective", {})
            say(
                f"  builtin:{name:<8} {meta.get('data', {}).get('shape')} {obj.get('name')} on "
                f"{obj.get('path')}, step {meta.get('step')}, {size / 1e6:.2f} MB"
            )
        except (OSError, ValueError, KeyError) as e:
            say(f"  builtin:{name:<8} unavailable ({one_line(str(e))})")
    say("\nextras:")
    for dist, what in EXTRAS:
        say(f"  {dist:<12} {_version(dist) or 'not installed':<16} {what}")
    return 0
