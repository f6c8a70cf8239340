"""``pfode nll``: log-likelihood (nats, bits per dimension) of data under a model's PF-ODE."""

from __future__ import annotations

import math
import time

from .common import (
    CLIError,
    UsageError,
    check_output,
    data_options,
    load_data,
    model_options,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_model,
    save_npz,
    say,
)
from .progress import NetProgress, Progress

HELP = "log-likelihood (nats, bits per dimension) of data under a model's PF-ODE"
FIXED = ("euler", "heun", "midpoint", "rk4")


def add_arguments(p):
    model_options(p)
    data_options(p, 64)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--solver", default="dopri5", help="dopri5 (adaptive) or euler/heun/midpoint/rk4 with --steps")
    p.add_argument("--steps", type=positive_int, default=None, help="grid intervals of a fixed-step solver")
    p.add_argument("--rtol", type=positive_float, default=1e-5)
    p.add_argument("--atol", type=positive_float, default=1e-5)
    p.add_argument(
        "--divergence",
        choices=("auto", "exact", "hutchinson"),
        default="auto",
        help="exact (one backward pass per dimension) or hutchinson; auto: exact up to 16 dimensions",
    )
    p.add_argument("--probes", type=positive_int, default=4, help="Hutchinson probes (default 4)")
    p.add_argument("--bpd", action="store_true", help="8-bit data: dequantized bits/dim bound (bits_per_dim)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=None, help="per-sample log-likelihoods as .npz (a missing folder is created)")
    p.add_argument("--force", action="store_true")


def run(args) -> int:
    from .. import distributed

    with distributed.process_group("cpu"):  # under torchrun: gloo, each rank takes whole batches; else nothing
        return _run(args)


def _run(args) -> int:
    import torch

    import pfode

    from .. import distributed

    solver = args.solver
    if solver not in ("dopri5", *FIXED):
        raise UsageError(f"--solver {solver}: nll integrates with dopri5 (adaptive) or {', '.join(FIXED)}")
    if solver != "dopri5" and args.steps is None:
        raise UsageError(f"--solver {solver} needs --steps N (grid intervals)")
    m = resolve_model(args.model, args.path, dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    x, label = load_data(m, args)
    out = check_output(args.out, args.force, (".npz",)) if args.out else None
    d = int(math.prod(m.data_shape))
    divergence = args.divergence if args.divergence != "auto" else ("exact" if d <= 16 else "hutchinson")
    opts = dict(divergence=divergence, probes=args.probes)
    if solver == "dopri5":
        opts.update(solver="dopri5", rtol=args.rtol, atol=args.atol)
    else:
        opts.update(solver=solver, grid=pfode.grid(m.denoiser.path, args.steps))
    n_batches = len(distributed.batches(x.shape[0], args.batch_size))  # this rank's
    bar = Progress("nll", n_batches, "batches" if n_batches > 1 else "", quiet=args.quiet)
    tick = _net_progress(m, bar)
    t0 = time.perf_counter()
    # batch k draws probes (and dequantization noise) from its own generator, seeded with seed + 7 for the first
    # batch; under torchrun each rank takes whole batches and rank 0 gathers the values in data order
    kw = dict(batch_size=args.batch_size, seed=args.seed + 7, dst=0, **opts)
    try:
        with bar:
            if args.bpd:
                o = distributed.bits_per_dim(m.denoiser, _to_uint8(x), dtype=m.dtype, **kw)
            else:
                o = distributed.log_likelihood(m.denoiser, x, **kw)
    finally:
        if tick is not None:
            tick.detach()
    dt = time.perf_counter() - t0
    if o is None:  # another rank than 0: rank 0 reports and writes
        return 0
    lp, nfe = (o.bound if args.bpd else o.logp).double().cpu(), o.nfe
    mean = float(lp.mean())
    se = float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan")
    how = solver + (f" (rtol {args.rtol:g}, atol {args.atol:g})" if solver == "dopri5" else f" ({args.steps} steps)")
    div = divergence if divergence == "exact" else f"hutchinson ({args.probes} probes)"
    say(f"model {m.name}; data: {label} (d = {d}); {how}, {div} divergence")
    bits = d * math.log(2)
    if args.bpd:
        say(
            f"bits/dim (8-bit data, truncated-normal dequantization, an upper bound): {-mean / bits:.4f} "
            f"(standard error {se / bits:.2g} over {len(lp)} samples); NFE {nfe}, {dt:.1f} s"
        )
    else:
        say(
            f"log-likelihood: {mean:.4f} nats per sample (standard error {se:.2g} over {len(lp)} samples; "
            f"{mean / d:.4f} nats/dim, {-mean / bits:.4f} bits/dim, continuous); NFE {nfe}, {dt:.1f} s"
        )
    if m.target is not None and not args.bpd:
        exact = m.target.log_prob(x.to(torch.float64), m.denoiser.path.t_min, m.denoiser.path).cpu()
        say(
            f"exact log p(t_min) of the analytic target: {float(exact.mean()):.4f} "
            f"(mean |difference| {float((exact - lp).abs().mean()):.2e})"
        )
    if out is not None:
        save_npz(out, {"logp": lp, "x": x})
        say(f"per-sample values -> {out}")
    return 0


def _net_progress(m, bar):
    """Progress inside the likelihood solves, read from the network's calls (a forward hook; ``None`` for
    analytic targets, whose batches are quick)."""
    net = getattr(m.denoiser, "net", None)
    if bar.quiet or not hasattr(net, "register_forward_hook"):
        return None
    path, den = m.denoiser.path, m.denoiser
    lo, hi = (float(den.net_time(t)) for t in (path.t_min, path.t_max))  # the solve runs from data to noise
    return NetProgress(bar, lo, hi, log=den.time_input == "sigma").attach(net)


def _to_uint8(x):
    """Model values in [-1, 1] -> integers 0..255 (values already in 0..255 pass through)."""
    import torch

    q = x.round() if float(x.max()) > 1.5 else ((x.double() + 1.0) * 127.5).round()
    if float(q.min()) < 0 or float(q.max()) > 255:
        raise CLIError("--bpd needs data in [-1, 1] (pfode's image scale) or integers in 0..255")
    return q.to(torch.int64)
