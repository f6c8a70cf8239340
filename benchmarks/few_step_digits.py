"""Few-step students on digits: Frechet distance at 1, 2 and 4 NFE for every few-step objective of pfode.train.

One DSM teacher (cosine path, eps, min-SNR; the recipe of ``train_digits.py``) on half A of sklearn's digits, then,
each with the same budget of training steps on half A:

* consistency distillation (``consistency-distillation``, EDM, teacher Heun),
* consistency training (``consistency-training``, EDM),
* Consistency Flow Matching (``consistency-fm``, Linear path, 2 segments),
* a Consistency Trajectory Model (``ctm``, Linear path, teacher = the DSM teacher), with the students' UNet taking
  the second time (``ctm-unet``, :class:`pfode.nets.ctm.TwoTimeUNet`); ``--ctm-net mlp`` (or ``both``) also trains
  the earlier residual MLP (``ctm-mlp``). Its ends are the teacher's noise levels (``s = sigma / alpha`` from 0.0064
  to 119 on the cosine path; ``--ctm-ends path`` takes the Linear path's own ends instead, up to ``s = 999``, where
  the eps teacher's x0 estimate is far off: FD 2928 / 2875 / 1843 at 1 / 2 / 4 NFE against 3225 / 754 / 110).

FD-digits: the Frechet distance of a small digits classifier's penultimate features (``train_digits.py``) against
half B; "real digits, half A" is the floor. One run; ``--quick`` is a smoke test.

    python benchmarks/few_step_digits.py [--teacher-steps 2500] [--steps 1500] [--ctm-net unet|mlp|both]
        [--only cd ct cfm ctm]
"""

from __future__ import annotations

import argparse
import time

import torch
from train_common import RESULTS, Timer, setup, table, write_json
from train_digits import TRAIN, UNET, fd, features, teacher_trainer, train_classifier

from pfode.data import digits
from pfode.nets import UNet
from pfode.nets.ctm import TwoTimeMLP, TwoTimeUNet
from pfode.paths import get_path
from pfode.train import Trainer
from pfode.train.consistency_fm import ConsistencyFM
from pfode.train.ctm import CTM
from pfode.train.losses import Consistency

NFES = (1, 2, 4)
ONLY = {"cd": "consistency distillation", "ct": "consistency training", "cfm": "Consistency-FM", "ctm": "CTM"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--teacher-steps", type=int, default=2500)
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every student")
    ap.add_argument("--ctm-net", choices=("unet", "mlp", "both"), default="unet", help="the CTM student's network")
    ap.add_argument("--ctm-ends", choices=("teacher", "path"), default="teacher", help="the CTM student's t_range")
    ap.add_argument("--only", nargs="+", choices=tuple(ONLY), help="train these students only (own JSON file)")
    args = ap.parse_args(argv)
    setup()
    t0 = time.perf_counter()
    steps_t, steps_s = (60, 20) if args.quick else (args.teacher_steps, args.steps)
    x, y = digits(return_labels=True)
    n = x.shape[0]
    clf, acc = train_classifier(x, y, epochs=5 if args.quick else 40)
    f_all = features(clf, x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    f_ref = f_all[perm[n // 2 :]]
    m = f_ref.shape[0]
    rows = [["real digits, half A (floor)", "-", "-", fd(f_all[perm[: n // 2]], f_ref), "-"]]
    train_x = x[perm[: n // 2]]
    teacher_obj, teacher = teacher_trainer(train_x, steps_t)
    with Timer() as tt:
        teacher.fit(save_final=False)
    z = torch.randn(m, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for nfe in (2, 4, 10):  # (one evaluation is the final denoising step alone: the mean image)
            s = teacher_obj.sample(teacher.ema, z, nfe=nfe, solver="dpm++2m")
            rows.append(["DSM teacher, dpm++2m", nfe, steps_t, fd(features(clf, s), f_ref), tt.s])
    print(
        f"DSM teacher: {steps_t} steps in {tt.s:.0f} s; FD at 2 / 4 / 10 NFE",
        *[f"{r[3]:.1f}" for r in rows[1:]],
        flush=True,
    )
    tden = teacher_obj.denoiser(teacher.ema)

    students = {
        "consistency distillation": (
            lambda: Consistency(
                "edm",
                mode="distillation",
                teacher=tden,
                teacher_solver="heun",
                steps=18,
                sigma_data=0.5,
                metric="pseudo-huber",
            ),
            lambda: UNet((1, 8, 8), **UNET, log_time=True, time_scale=250.0),
        ),
        "consistency training": (
            lambda: Consistency("edm", mode="training", sigma_data=0.5, metric="pseudo-huber"),
            lambda: UNet((1, 8, 8), **UNET, log_time=True, time_scale=250.0),
        ),
        "Consistency-FM (2 segments)": (
            lambda: ConsistencyFM("linear", segments=2),
            lambda: UNet((1, 8, 8), **UNET),
        ),
    }

    # the CTM student's ends: the teacher's noise levels s = sigma / alpha (cosine: 0.0064 .. 119; the Linear path's
    # own ends reach s = 999, where the eps teacher is queried outside its range); --ctm-ends path restores those
    lin, tp = get_path("linear"), tden.path
    ends = [float(lin.t_of_s(tp.s(torch.tensor(v, dtype=torch.float64)))) for v in (tp.t_min, tp.t_max)]
    ctm_range = tuple(ends) if args.ctm_ends == "teacher" else None

    def make_ctm():
        return CTM("linear", teacher=tden, steps=18, heun_steps=2, spacing="uniform", sigma_data=0.5, t_range=ctm_range)

    if args.ctm_net in ("unet", "both"):
        students["CTM (ctm-unet)"] = (make_ctm, lambda: TwoTimeUNet((1, 8, 8), **UNET))
    if args.ctm_net in ("mlp", "both"):
        students["CTM (ctm-mlp)"] = (make_ctm, lambda: TwoTimeMLP((1, 8, 8), width=256, depth=3, time_dim=64))
    seconds = {}
    for k, (name, (make_obj, make_net)) in enumerate(students.items()):
        if args.only and not any(name.startswith(ONLY[o]) for o in args.only):
            continue
        torch.manual_seed(1 + k)
        obj = make_obj()
        tr = Trainer(make_net(), obj, train_x, {**TRAIN, "iterations": steps_s, "lr": 1e-3})
        with Timer() as ts:
            tr.fit(save_final=False)
        seconds[name] = ts.s
        with torch.no_grad():
            for nfe in NFES:
                s = obj.sample(tr.ema, z, nfe=nfe, generator=torch.Generator().manual_seed(11))
                ok = bool(torch.isfinite(s).all())
                rows.append([name, nfe, steps_s, fd(features(clf, s), f_ref) if ok else float("nan"), ts.s])
        print(
            f"{name}: {steps_s} steps in {ts.s:.0f} s; FD at",
            NFES,
            "NFE:",
            *[f"{r[3]:.1f}" for r in rows[-3:]],
            flush=True,
        )
    header = ["model", "NFE", "train steps", "FD-digits", "train s"]
    total = time.perf_counter() - t0
    print(f"classifier accuracy {acc:.3f}; teacher {steps_t} steps {tt.s:.0f} s; total {total:.0f} s")
    print(table(rows, header))
    stem = "few_step_digits_quick" if args.quick else "few_step_digits"
    if args.only:
        stem += "_" + "_".join(args.only)
    path = write_json(
        f"{stem}.json",
        {
            "rows": [dict(zip(header, r)) for r in rows],
            "classifier_accuracy": acc,
            "teacher_seconds": tt.s,
            "student_seconds": seconds,
            "quick": args.quick,
        },
    )
    print(path)
    _plot(rows, RESULTS / f"{stem}.png")


def _plot(rows, png):
    from pfode.plots import _figure

    fig = _figure(6, 4)
    ax = fig.add_subplot(111)
    for name in dict.fromkeys(r[0] for r in rows if r[1] != "-"):
        pts = [(r[1], r[3]) for r in rows if r[0] == name and r[1] in (*NFES, 10)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    floor = rows[0][3]
    ax.axhline(floor, color="grey", ls="--", label="real vs real")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FD-digits")
    ax.set_yscale("log")
    ax.set_xticks(NFES)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    print(png)


if __name__ == "__main__":
    main()
