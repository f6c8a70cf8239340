"""The ``pfode`` command line: sample, tune, train, reflow, nll, invert, bench, info (one module per command).

``pfode COMMAND --help`` describes each command. ``pfode --version`` and ``pfode --help`` import no torch
(a command's options are added when it is chosen, and ``import pfode`` is lazy). Long jobs report their
progress and the time left on stderr (:mod:`pfode.cli.progress`); ``--quiet`` silences it.

Models are given as ``--model``:

* ``builtin:digits`` (the default) or ``builtin:moons`` -- small models shipped inside the package;
* ``analytic:gmm[:DIM[:K]]`` -- an exact Gaussian mixture (default 2-D, 8 components) on ``--path``;
* a model or checkpoint path: ``NAME.json`` / ``NAME.safetensors`` pairs as ``pfode train --export`` writes
  them, a run folder or its ``checkpoints/`` folder (safetensors and JSON only; nothing is unpickled).

Words mean one thing in every command: ``--nfe`` network evaluations, ``--steps`` grid intervals,
``--iterations`` optimizer steps of training.

Exit status: 0 on success, 2 for a wrong command line (unknown option or solver, an out-of-range value),
1 for any other error (missing or malformed files, invalid configurations, an output that exists without
``--force``), 130 when interrupted. Errors are one line ``pfode: error: ...`` on stderr; ``--verbose``
adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import bench, edit, info, invert, nll, reflow, sample, train, tune
from .common import PROG, CLIError, Parser, UsageError, common_options, describe, one_line

__all__ = ["main", "build_parser", "CLIError", "UsageError"]

COMMANDS = (sample, tune, train, reflow, nll, invert, edit, bench, info)


class _Commands(argparse._SubParsersAction):
    """Sub-commands whose options are added only when the command is chosen (or at once with ``fill``), so that
    ``pfode --version`` and ``pfode --help`` import neither torch nor the commands' dependencies."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict = {}

    def fill(self, name: str | None = None):
        for n in [name] if name is not None else list(self.pending):
            cmd = self.pending.pop(n, None)
            if cmd is not None:
                cmd.add_arguments(self._name_parser_map[n])

    def __call__(self, parser, namespace, values, option_string=None):
        self.fill(values[0] if values else None)
        super().__call__(parser, namespace, values, option_string)


def build_parser(lazy: bool = False) -> Parser:
    """The ``pfode`` parser; ``lazy``: a command's own options are added when it is parsed (see :class:`_Commands`)."""
    from .. import __version__

    ap = Parser(
        prog=PROG,
        description="The probability-flow ODE of diffusion and flow-matching models: sample, train, evaluate.",
        epilog="Exit status: 0 success, 2 wrong command line, 1 other errors. 'pfode COMMAND --help' for details.",
    )
    ap.add_argument("--version", action="version", version=f"pfode {__version__}")
    common_options(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, action=_Commands)
    for cmd in COMMANDS:
        name = cmd.__name__.rsplit(".", 1)[1]
        p = sub.add_parser(name, help=cmd.HELP, description=cmd.HELP)
        common_options(p, suppress=True)
        p.set_defaults(func=cmd.run)
        sub.pending[name] = cmd
    if not lazy:
        sub.fill()
    return ap


def main(argv=None) -> int:
    """Entry point of the ``pfode`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    try:
        parser = build_parser(lazy=True)
        args = parser.parse_args(argv)
        verbose = args.verbose
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        threads = args.threads or (None if args.command in ("train", "reflow", "info") else 1)
        if threads is not None:  # (info computes nothing: it reports torch's own default, from a cache when it can)
            import torch

            torch.set_num_threads(threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (pfode info | head): stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit-time flush quiet
        except OSError:
            pass
        return 141
    except CLIError as e:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)
        return e.code
    except Exception as e:  # noqa: BLE001 - every error becomes one line
        msg, expected = describe(e)
        if verbose:
            traceback.print_exc()
        hint = "" if expected or verbose else " (run with --verbose for the traceback)"
        print(f"{PROG}: error: {one_line(msg)}{hint}", file=sys.stderr)
        return 1
