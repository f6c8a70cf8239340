"""Progress of long commands on stderr, with the time left: a small, dependency-free helper.

On a terminal a one-line bar is redrawn in place (at most 5 times a second). Elsewhere -- a log file, a pipe,
a test capturing stderr -- a plain line is written at most every ``PFODE_PROGRESS_EVERY`` seconds (default 30;
jobs that end sooner write nothing). ``--quiet`` writes nothing. Only rank 0 of a ``torchrun`` job reports.

:class:`SampleProgress` and :class:`NetProgress` turn what the library reports -- :func:`pfode.sample`'s
per-step callback, or the network's calls -- into the fraction of the work done.
"""

from __future__ import annotations

import math
import os
import sys
import time

ENV_EVERY = "PFODE_PROGRESS_EVERY"
TTY_EVERY = 0.2


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _log_every() -> float:
    text = os.environ.get(ENV_EVERY, "")
    try:
        v = float(text)
    except ValueError:
        return 30.0
    return v if v >= 0 and math.isfinite(v) else 30.0


class Progress:
    """``done`` out of ``total`` units of work (``total=None``: unknown; counts and elapsed time only).

    ``update(k)`` adds ``k`` units, ``set(done)`` sets them; ``due()`` tells whether a line would be written now,
    so that a caller can skip computing an expensive ``done``. The time left is ``elapsed * (total - done) /
    done``: units should cost about the same (weight runs by their network evaluations, say). Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "", *, quiet: bool = False,
                 stream=None, every: float | None = None, clock=time.monotonic):  # fmt: skip
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = (TTY_EVERY if self.tty else _log_every()) if every is None else every
        self.quiet = quiet or _rank() != 0
        self.done = 0.0
        self.start = clock()
        self.last = self.start if not self.tty else -math.inf  # logs: the first line after `every` seconds
        self.width = 0
        self.shown = False
        self.closed = False

    def due(self) -> bool:
        return not self.quiet and not self.closed and self.clock() - self.last >= self.every

    def update(self, k: float = 1):
        self.set(self.done + k)

    def set(self, done: float):
        self.done = done
        if self.due():
            self._draw(self.clock())

    def line(self, now: float | None = None, final: bool = False) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        unit = f" {self.unit}" if self.unit else ""
        if final:
            what = f" {_count(self.done)}{unit}" if self.unit or self.total is None else ""
            return f"{self.desc}:{what} done in {duration(elapsed)}"
        if self.total is None:
            rate = f", {self.done / elapsed:.3g}{unit}/s" if elapsed > 0 and self.done else ""
            return f"{self.desc}: {_count(self.done)}{unit}{rate}, {duration(elapsed)} elapsed"
        frac = min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        left = elapsed * (1 - frac) / frac if frac > 0 else math.inf
        what = f" ({_count(self.done)}/{_count(self.total)}{unit})" if self.unit else ""
        if self.tty:
            bar = "#" * int(20 * frac)
            return f"{self.desc} {100 * frac:3.0f}% |{bar:<20}|{what} {duration(elapsed)}<{duration(left)} left"
        return f"{self.desc}: {100 * frac:.0f}%{what}, {duration(elapsed)} elapsed, about {duration(left)} left"

    def _draw(self, now: float, final: bool = False):
        text = self.line(now, final)
        try:
            if self.tty:
                pad = " " * max(0, self.width - len(text))
                self.stream.write("\r" + text + pad + ("\n" if final else ""))
                self.width = len(text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr went away: progress is a nicety
            self.quiet = True
        self.last, self.shown = now, True

    def close(self):
        """Finish: on a terminal the bar's last state stays; in a log, a last line if any was written."""
        if self.closed:
            return
        if not self.quiet and self.shown:
            self._draw(self.clock(), final=True)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:  # an error or an interrupt: end the bar's line so the error message starts on its own
            if self.tty and self.shown and not self.quiet:
                try:
                    self.stream.write("\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
            self.closed = True
        return False


def _count(v: float) -> str:
    """Whole units done (a batch 70% through is not done yet)."""
    return str(int(math.floor(v + 1e-9)))


def _rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise), without importing torch."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class SampleProgress:
    """A :func:`pfode.sample` callback advancing ``progress`` over ``batches`` calls of a prepared sampler.

    ``progress.total`` is ``batches * steps`` for a fixed-step sampler of ``steps`` steps (one callback each);
    for an adaptive solver (``steps=None``) it is ``batches`` and each batch advances with the fraction of the
    log-SNR span (``lam_start`` to ``lam_end``) its slowest sample has covered. A new batch is recognised by its
    callback index starting again.
    """

    def __init__(self, progress: Progress, steps: int | None, lam_start: float = 0.0, lam_end: float = 1.0,
                 path=None):  # fmt: skip
        self.p, self.steps = progress, steps
        self.lam0, self.lam1, self.path = lam_start, lam_end, path
        self.batch, self.prev_i = 0, -1

    def __call__(self, info: dict):
        i = int(info["i"])
        if i <= self.prev_i:
            self.batch += 1
        self.prev_i = i
        if self.steps is not None:
            self.p.set(self.batch * self.steps + min(i + 1, self.steps))
        elif self.p.due():  # reading the per-sample times synchronises a GPU: only when a line is due
            self.p.set(self.batch + self.fraction(info["t"]))

    def fraction(self, t) -> float:
        lam = self.path.lam(t)
        lam = float(lam.min()) if hasattr(lam, "min") else float(lam)
        span = self.lam1 - self.lam0
        if not math.isfinite(lam):
            return 1.0
        return min(max((lam - self.lam0) / span, 0.0), 1.0) if span else 1.0


class NetProgress:
    """Progress from the network's calls (a forward hook), for library loops without a callback
    (:func:`pfode.log_likelihood` through :func:`pfode.distributed.log_likelihood`).

    Each call passes the network time ``t_net``; ``lo`` and ``hi`` are the network times at the start and the end
    of one batch's integration. The batch's fraction is how far its slowest sample has come from ``lo`` to ``hi``
    (``log`` measures it in log network time, for networks that see ``sigma``); a fraction that falls back by more
    than half starts the next batch. ``progress.total`` is the number of batches.
    """

    def __init__(self, progress: Progress, lo: float, hi: float, log: bool = False):
        self.p = progress
        self.log = log
        self.lo, self.hi = (math.log(lo), math.log(hi)) if log else (lo, hi)
        self.batch, self.prev, self.calls = 0, 0.0, 0
        self.handle = None

    def attach(self, module):
        """Register on ``module`` (a ``torch.nn.Module``); :meth:`detach` removes the hook."""
        self.handle = module.register_forward_hook(self._hook)
        return self

    def detach(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _hook(self, module, args, output):
        self.calls += 1
        if len(args) < 2 or self.p.quiet:
            return
        try:  # at every call, not to miss a batch that starts and ends between two lines
            f = self.fraction(args[1])
        except Exception:  # noqa: BLE001 - an unusual network time (a transform's wrapper): no progress, no error
            return
        if f < self.prev - 0.5:
            self.batch += 1
        self.prev = f
        self.p.set(min(self.batch + f, self.p.total or math.inf))

    def fraction(self, t_net) -> float:
        t = float(t_net.min() if self.hi >= self.lo else t_net.max()) if hasattr(t_net, "min") else float(t_net)
        if self.log:
            t = math.log(t) if t > 0 else -math.inf
        span = self.hi - self.lo
        return min(max((t - self.lo) / span, 0.0), 1.0) if span and math.isfinite(t) else 0.0


class NetCalls:
    """Advance ``progress`` by one at every call of the network (a forward hook): progress in evaluations, for
    library calls that report nothing while they run (:func:`pfode.round_trip`)."""

    def __init__(self, progress: Progress):
        self.p, self.handle = progress, None

    def attach(self, module):
        self.handle = module.register_forward_hook(lambda *_: self.p.update(1))
        return self

    def detach(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
