"""Inpainting and 4x super-resolution of sklearn digits with the shipped digits model, every pfode.inverse method.

Problems (noise-free measurements of ``--n`` digits drawn with a fixed seed):

* inpainting: a fixed random mask keeping 50% of the 64 pixels;
* 4x super-resolution: 4x4 average pooling, 8x8 -> 2x2 (very ill-posed: 4 numbers per digit).

Per method (every registered :mod:`pfode.inverse` method) and NFE: the PSNR of the restorations to the clean digits
(values clamped to ``[-1, 1]``, peak-to-peak 2), the Frechet distance of the restorations to the clean digits in the
feature space of ``benchmarks/train_digits.py`` (the 64-d penultimate layer of a small CNN classifier; FD-digits),
the measurement residual and the wall time. Rows for the measurement itself (the masked image with zeros / the
nearest-neighbour upsampling) and for real digits (another ``--n`` real digits: the FD floor at this sample size)
frame the numbers. Method settings: ``ensemble`` with 4 particles per digit (4x the NFE per digit, counted in
``nfe_per_digit``); ``obc`` searches 4 candidate boundary conditions on 8 model-drawn references, a one-off cost
reported as ``search_nfe`` and not in the per-digit NFE.

Caveat: the shipped model was trained on all 1,797 digits, so no digit is truly held out; the FD reference and the
test digits are disjoint random subsets. With ``--n`` around 64 the FD of 64-d features is dominated by its
finite-sample bias: compare rows with each other and with the real-digits row, not with published FIDs.

Run: ``.venv/bin/python benchmarks/inverse_digits.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/inverse_digits.json`` and ``inverse_digits.png`` (``inverse_digits_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402
from train_digits import fd, features, train_classifier  # noqa: E402

from pfode import inverse  # noqa: E402
from pfode.data import digits  # noqa: E402
from pfode.models import load  # noqa: E402

OPTIONS = {
    "ensemble": {"particles": 4},
    "obc": {"candidates": 4, "n_reference": 8},
    "pigdm": {"weighting": "snr"},  # "bayes" diverges on this network (its Jacobian at high noise)
}


def psnr(x, ref) -> float:
    mse = ((x.clamp(-1, 1) - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-12))).mean())


def shown(op, y, shape):
    """The measurement at full resolution (zeros where unobserved, nearest-neighbour upsampling)."""
    if isinstance(op, inverse.Downsample):
        f = op.factor
        lo = y.reshape(y.shape[0], shape[0], shape[1] // f, shape[2] // f)
        return lo.repeat_interleave(f, -2).repeat_interleave(f, -1)
    return op.adjoint(y)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="digits per problem (default 64, quick 8)")
    ap.add_argument("--nfe", default=None, help="comma-separated NFE values (default 10,25; quick 4)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    args = ap.parse_args(argv)
    setup()
    n = args.n or (8 if args.quick else 64)
    nfes = [int(v) for v in (args.nfe or ("4" if args.quick else "10,25")).split(",")]
    methods = args.methods.split(",") if args.methods else inverse.available()
    x_all, labels = digits(return_labels=True)
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))
    test, ref, real = x_all[perm[:n]], x_all[perm[n : 2 * n]], x_all[perm[2 * n : 3 * n]]
    with Timer() as tc:
        clf, acc = train_classifier(x_all, labels, epochs=5 if args.quick else 25)
    f_ref = features(clf, ref)
    print(f"classifier: test accuracy {acc:.3f} ({tc.s:.0f} s); {n} test digits, FD reference {n} other digits")
    model = load("builtin:digits")
    den, shape = model.denoiser, tuple(model.data_shape)
    problems = {
        "inpaint 50%": inverse.Inpaint.random(shape, 0.5, generator=torch.Generator().manual_seed(1)),
        "superres 4x": inverse.Downsample(shape, 4),
    }
    rows, records = [], []
    floor = fd(features(clf, real), f_ref)
    for name, op in problems.items():
        y = op(test)
        meas = shown(op, y, shape)
        rows.append([name, "real digits (floor)", "-", "-", float("nan"), floor, 0.0, 0.0])
        rows.append([name, "measurement", "-", "-", psnr(meas, test), fd(features(clf, meas), f_ref), 0.0, 0.0])
        for method in methods:
            for nfe in nfes:
                opts = OPTIONS.get(method, {})
                try:
                    with Timer() as tm:
                        out = inverse.solve(
                            den, y, op, method, nfe=nfe, generator=torch.Generator().manual_seed(2), **opts
                        )
                except Exception as e:  # noqa: BLE001 - a method that fails is reported, not fatal
                    print(f"{name} {method} nfe={nfe}: failed: {type(e).__name__}: {e}")
                    records.append({"problem": name, "method": method, "nfe": nfe, "error": str(e)})
                    continue
                xr = out.x.float()
                ok = bool(torch.isfinite(xr).all())
                p = psnr(xr, test) if ok else float("nan")
                d = fd(features(clf, xr.nan_to_num()), f_ref) if ok else float("nan")
                resid = float(((op(xr.clamp(-1, 1)) - y) ** 2).mean().sqrt()) if ok else float("nan")
                rec = {
                    "problem": name,
                    "method": method,
                    "nfe": nfe,
                    "nfe_per_digit": out.nfe,
                    "grad_evals": out.grad_evals,
                    "psnr": p,
                    "fd": d,
                    "residual": resid,
                    "seconds": tm.s,
                    "search_nfe": out.info.get("search_nfe"),
                }
                records.append(rec)
                rows.append([name, method, nfe, out.nfe, p, d, resid, tm.s])
                print(
                    f"{name:12s} {method:9s} nfe={nfe:3d} ({out.nfe} per digit): PSNR {p:6.2f} dB, FD {d:8.3f}, "
                    f"residual {resid:.3f}, {tm.s:.1f} s",
                    flush=True,
                )
    header = ["problem", "method", "NFE", "NFE/digit", "PSNR dB", "FD-digits", "residual", "seconds"]
    print()
    print(table(rows, header))
    payload = {
        "benchmark": "inverse_digits",
        "n": n,
        "nfes": nfes,
        "classifier_accuracy": acc,
        "fd_floor": floor,
        "options": OPTIONS,
        "rows": records,
        "quick": args.quick,
    }
    stem = "inverse_digits_quick" if args.quick else "inverse_digits"
    path = write_json(f"{stem}.json", payload)
    print(f"\nJSON -> {path}")
    plot(records, problems, RESULTS / f"{stem}.png")


def plot(records, problems, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(problems), figsize=(6.5 * len(problems), 3.6))
    for j, name in enumerate(problems):
        for k, key in enumerate(("psnr", "fd")):
            ax = axes[2 * j + k]
            for method in sorted({r["method"] for r in records if "psnr" in r}):
                pts = [
                    (r["nfe"], r[key])
                    for r in records
                    if r.get("method") == method and r["problem"] == name and key in r
                ]
                if pts:
                    ax.plot(*zip(*pts), "o-", label=method)
            ax.set_xlabel("NFE")
            ax.set_ylabel("PSNR (dB)" if key == "psnr" else "FD-digits")
            ax.set_title(name)
            if key == "fd":
                ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"PNG  -> {out}")


if __name__ == "__main__":
    main()
