"""Why the digits DSM teacher's dpm++2m samples get worse from 2 to 4 NFE: FD-digits of the teacher at 2..10 NFE
with the sampler's choices varied one at a time.

The teacher is eps-prediction DSM on the cosine VP path (``few_step_digits.py``'s recipe; by default the shipped
``builtin:digits``, ``--train-steps N`` trains the benchmark's own smaller teacher instead). ``nfe`` counts the
final denoising step, so ``nfe = 2`` is one solver step from ``t_max`` straight to ``t_min`` plus the denoising
step. Variants: the solver (dpm++2m, ddim), the grid spacing (logsnr, karras, uniform in t), the start time
(``t_max``; ``s = sigma / alpha = 80``, EDM's largest noise; ``s = 20``), no final denoising step, and x0 clipping to
the data range (static thresholding). Also printed: the median over samples of ``max |x0_hat|`` at the times a first
network call sees. FD-digits as in ``train_digits.py`` (real-vs-real floor beside it). One run.

    python benchmarks/few_step_digits_teacher.py [--train-steps 2500] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from train_common import RESULTS, Timer, setup, table, write_json
from train_digits import fd, features, teacher_trainer, train_classifier

import pfode
from pfode.data import digits
from pfode.guidance import dynamic_thresholding

NFES = (2, 3, 4, 5, 6, 8, 10)


def _t_of_s(path, s: float) -> float:
    return float(path.t_of_s(torch.tensor(s, dtype=torch.float64)))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train-steps", type=int, default=0, help="train the few_step_digits teacher (0: builtin:digits)")
    args = ap.parse_args(argv)
    setup()
    t0 = time.perf_counter()
    x, y = digits(return_labels=True)
    n = x.shape[0]
    clf, acc = train_classifier(x, y, epochs=5 if args.quick else 40)
    f_all = features(clf, x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    f_ref = f_all[perm[n // 2 :]]
    m = f_ref.shape[0]
    floor = fd(f_all[perm[: n // 2]], f_ref)
    if args.train_steps:
        obj, tr = teacher_trainer(x[perm[: n // 2]], args.train_steps)
        with Timer() as tt:
            tr.fit(save_final=False)
        den, teacher = obj.denoiser(tr.ema), f"few_step_digits teacher, {args.train_steps} steps ({tt.s:.0f} s)"
    else:
        den, teacher = pfode.models.load("builtin:digits").denoiser, "builtin:digits"
    path = den.path
    z = torch.randn(m, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    t_max, s80, s20 = float(path.t_max), _t_of_s(path, 80.0), _t_of_s(path, 20.0)
    clip = dynamic_thresholding(den, 1.0, bound=1.0, max_value=1.0, rescale=False)  # static clipping to [-1, 1]
    variants = {
        "dpm++2m, logsnr (few_step_digits)": dict(solver="dpm++2m"),
        "dpm++2m, logsnr, no denoise step": dict(solver="dpm++2m", denoise=False),
        "dpm++2m, karras": dict(solver="dpm++2m", spacing="karras"),
        "dpm++2m, uniform t": dict(solver="dpm++2m", spacing="uniform"),
        "dpm++2m, logsnr, from s=80": dict(solver="dpm++2m", t_start=s80),
        "dpm++2m, logsnr, from s=20": dict(solver="dpm++2m", t_start=s20),
        "dpm++2m, logsnr, from s=20, x0 clipped": dict(solver="dpm++2m", t_start=s20, den=clip),
        "dpm++2m, logsnr, x0 clipped": dict(solver="dpm++2m", den=clip),
        "ddim, logsnr": dict(solver="ddim"),
        "ddim, logsnr, from s=80": dict(solver="ddim", t_start=s80),
        "ddim, logsnr, from s=20": dict(solver="ddim", t_start=s20),
    }
    nfes = (2, 4, 10) if args.quick else NFES
    rows, grids = [], {}
    for name, opts in variants.items():
        opts = dict(opts)
        d = opts.pop("den", den)
        ts = opts.get("t_start", t_max)
        x_T = float(path.sigma(torch.tensor(ts, dtype=torch.float64))) * z
        row = [name]
        for nfe in nfes:
            if not opts.get("denoise", True) and nfe < 2:
                row.append(float("nan"))
                continue
            first = []

            def cb(info, first=first):
                if not first:
                    first.append(float(info["x0_hat"].abs().max()))

            with torch.no_grad():
                out = pfode.sample(d, x_T, nfe=nfe, callback=cb, return_info=True, **opts)
            row.append(fd(features(clf, out.x), f_ref))
            grids[f"{name}, nfe={nfe}"] = {"times": [float(v) for v in out.times], "first_x0_absmax": first[0]}
        rows.append(row)
        print(name, [f"{v:.1f}" for v in row[1:]], flush=True)
    with torch.no_grad():  # the first network call of every variant starting at t_max: how large is x0_hat there?
        big = {}
        for t in (t_max, s80, 0.98, s20, 0.95, 0.9):
            tt_ = torch.full((m,), t, dtype=torch.float64)
            xt = float(path.alpha(torch.tensor(t))) * x[perm[n // 2 :]] + float(path.sigma(torch.tensor(t))) * z
            x0 = den(xt, tt_)[0]
            big[f"t={t:.4f} (s={float(path.s(torch.tensor(t))):.1f})"] = float(x0.abs().amax((1, 2, 3)).median())
    header = ["sampler (teacher: " + teacher + ")", *[f"NFE {k}" for k in nfes]]
    total = time.perf_counter() - t0
    print(f"classifier accuracy {acc:.3f}; real-vs-real floor {floor:.1f}; total {total:.0f} s")
    print(table(rows, header))
    print("median over samples of max |x0_hat| at the first network call's time:")
    print(table([[k, v] for k, v in big.items()], ["time", "median max|x0_hat|"]))
    stem = "few_step_digits_teacher_quick" if args.quick else "few_step_digits_teacher"
    out = write_json(
        f"{stem}.json",
        {
            "teacher": teacher,
            "floor": floor,
            "classifier_accuracy": acc,
            "rows": [dict(zip(header, r)) for r in rows],
            "x0_absmax": big,
            "grids": grids,
            "seconds": total,
        },
    )
    print(out)
    _plot(rows, nfes, floor, RESULTS / f"{stem}.png", teacher)


def _plot(rows, nfes, floor, png, teacher):
    from pfode.plots import _figure

    fig = _figure(6, 4)
    ax = fig.add_subplot(111)
    for r in rows:
        ax.plot(nfes, r[1:], marker="o", label=r[0])
    ax.axhline(floor, color="grey", ls="--", label="real vs real")
    ax.set_xlabel("NFE (with the final denoising step)")
    ax.set_ylabel("FD-digits")
    ax.set_yscale("log")
    ax.set_title(teacher, fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png)
    print(png)


if __name__ == "__main__":
    main()
