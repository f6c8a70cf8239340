"""``python -m pfode.train.reflow``: make reflow pairs from a trained teacher checkpoint.

.. code-block:: console

    python -m pfode.train.reflow --teacher runs/moons_rf/checkpoints --out runs/moons_pairs \\
        --n 40000 --batch-size 5000 --solver euler-t --nfe 100

``--solver euler-t`` is Euler in path time on a uniform grid from ``t_hi`` to ``t_lo`` (the rectified-flow
convention, on paths that reach zero noise); any other name is a :mod:`pfode.solvers` solver spending
``--nfe`` evaluations on the teacher's default grid. Interrupted runs resume when started again with the
same arguments. Train the student with ``data: {name: reflow-pairs, path: <out>}`` and
``objective: {coupling: reflow, ...}`` (see ``configs/moons_reflow.yaml``).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pfode.train.reflow", description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher checkpoint (folder, .json or .safetensors)")
    ap.add_argument("--out", required=True, help="pair store folder")
    ap.add_argument("--n", type=int, required=True, help="number of pairs")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--solver", default="euler-t")
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--which", default="ema", choices=("ema", "model"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from ..solvers import get
    from .config import _teacher
    from .couplings import generate_reflow_pairs

    teacher = _teacher({"checkpoint": args.teacher, "which": args.which})
    shape = getattr(teacher.net, "data_shape", None)
    if shape is None:
        raise SystemExit("the teacher network does not state its data_shape")
    kw = dict(batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    if args.solver == "euler-t":
        p = teacher.path
        if not (p.reaches_zero and math.isfinite(p.t_hi)):
            raise SystemExit(
                f"--solver euler-t needs a path that reaches zero noise on a finite range, not {p!r}"
            )
        grid = torch.linspace(p.t_hi, p.t_lo, args.nfe + 1, dtype=torch.float64)
        store = generate_reflow_pairs(
            teacher, args.n, args.out, shape, grid=grid, solver=get("euler", variable="t"), **kw
        )
    else:
        store = generate_reflow_pairs(
            teacher, args.n, args.out, shape, nfe=args.nfe, solver=args.solver, **kw
        )
    print(f"{len(store)} pairs in {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
