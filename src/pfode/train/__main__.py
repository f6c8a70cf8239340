"""``python -m pfode.train --config run.yaml --out runs/x [--resume]`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pfode.train", description="Train a pfode model from a config file"
    )
    ap.add_argument(
        "--config", required=True, help="YAML or JSON configuration (sections data, model, objective, train)"
    )
    ap.add_argument("--out", required=True, help="output folder (checkpoints/, metrics.csv, samples/)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--batch-size", type=int, default=None, help="override train.batch_size (global)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    from .config import load_config, make_trainer

    cfg = load_config(args.config)
    over = {}
    if args.steps is not None:
        over["steps"] = args.steps
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    if args.quiet:
        over["quiet"] = True
    trainer = make_trainer(cfg, args.out, resume=args.resume, **over)
    try:
        trainer.fit()
        if trainer.rank == 0:
            print(json.dumps({**trainer.summary(), "checkpoint": trainer.last_checkpoint}))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
