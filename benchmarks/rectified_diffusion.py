"""Rectified Diffusion vs reflow on the Linear path, on the shipped digits model (cosine VP, eps-prediction).

Wang et al. (2024), "Rectified Diffusion: Straightness Is Not Your Need in Rectified Flow": what makes
rectification work is retraining on the teacher's matched (noise, sample) pairs; the path and prediction type
may stay the teacher's own. Here, from one set of teacher pairs (``builtin:digits``, dpm++2m, 10 NFE):

* **Rectified Diffusion**: :class:`pfode.train.distill.RectifiedDiffusion` -- DSM on the teacher's cosine-VP path
  with eps-prediction and min-SNR weighting (the teacher's own objective), ``x_t = alpha x0 + sigma e`` with the
  paired noise, student initialised from the teacher;
* **reflow, Linear path**: 2-rectified flow -- flow matching (velocity) on ``x_t = (1 - t) x0 + t z`` with the
  same pairs, U-shaped times and pseudo-Huber metric (Lee et al., 2024), also initialised from the teacher;
* **+ distillation** (InstaFlow, optional ``--distill``): the Linear reflow student regressed one-step on its own
  pairs with a feature distance (a second digits classifier, seed 1, not the one that scores).

Every student samples with DDIM (first-order; on the Linear path this is Euler in t) on 1, 2 and 4 uniform times;
the teacher is shown with DDIM at the same NFE and with dpm++2m at 10 NFE. Score: Frechet distance in
``benchmarks/train_digits.py``'s feature space ("FD-digits", 64-d penultimate features of a small CNN classifier)
of ~900 samples against the real half B; real half A against half B is the floor (real vs real).

Run: ``.venv/bin/python benchmarks/rectified_diffusion.py`` (about 10 minutes on 2 busy CPU cores; ``--quick`` for a
smoke run; ``--distill`` adds the InstaFlow row). Writes ``benchmarks/results/rectified_diffusion.json`` and
``rectified_diffusion.png``. Controls: ``--rd eps:1e-3 v:1e-3 --no-linear --tag rd_variants`` (the learning rate of
the Linear student, and v-prediction on the teacher's path), ``--rd eps:1e-3:edm --no-linear --tag rd_edm`` (a
weighting that keeps weight on the high-noise end, where 1-NFE sampling starts).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402
from train_digits import fd, features, train_classifier  # noqa: E402

import pfode  # noqa: E402
from pfode.data import digits  # noqa: E402
from pfode.models import build_net, load  # noqa: E402
from pfode.paths import Linear  # noqa: E402
from pfode.solvers import get as get_solver  # noqa: E402
from pfode.train import FlowMatching, Paired, Trainer, generate_reflow_pairs  # noqa: E402
from pfode.train.distill import Distillation, RectifiedDiffusion, ddim_sample, uniform_times  # noqa: E402

NFES = (1, 2, 4)


def student_net(model):
    """A trainable copy of the teacher's network."""
    net = build_net(model.meta["model_config"])
    net.load_state_dict(model.net.state_dict())
    return net


def fit(obj, net, data, steps, lr, batch, seed):
    cfg = dict(
        iterations=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=min(50, steps // 5),
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        grad_clip=1.0,
        ema_decay=0.99,
        seed=seed,
        quiet=True,
        log_every=0,
        device="cpu",
    )
    tr = Trainer(net, obj, data, cfg)
    with Timer() as t:
        tr.fit(save_final=False)
    return tr, t.s


def pairs_from(den, n, seed, **solve):
    tmp = Path(tempfile.mkdtemp(prefix="rd-pairs-"))
    with Timer() as t:
        store = generate_reflow_pairs(den, n, tmp, (1, 8, 8), batch_size=500, seed=seed, progress=False, **solve)
        pairs = store.load()
    shutil.rmtree(tmp, ignore_errors=True)
    return pairs, t.s


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per student")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--distill", action="store_true", help="also distill the Linear reflow student (InstaFlow)")
    ap.add_argument(
        "--rd", nargs="+", default=["eps:2e-4"], metavar="PRED:LR[:WEIGHTING]",
        help="Rectified Diffusion students: prediction type on the teacher's path, learning rate, weighting (min-snr)",
    )  # fmt: skip
    ap.add_argument("--no-linear", action="store_true", help="skip the Linear-path reflow (and --distill)")
    ap.add_argument("--tag", default="", help="suffix of the JSON/PNG names")
    args = ap.parse_args(argv)
    setup()
    t_start = time.perf_counter()
    n_pairs, steps = (128, 6) if args.quick else (args.pairs, args.steps)
    x, y = digits(return_labels=True)
    n = x.shape[0]
    with Timer() as tc:
        clf, acc = train_classifier(x, y, epochs=5 if args.quick else 40)
    f_all = features(clf, x)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    f_ref = f_all[perm[n // 2 :]]
    m = f_ref.shape[0]
    rows = [["real digits, half A (real vs real)", "-", fd(f_all[perm[: n // 2]], f_ref)]]
    z = torch.randn(m, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    samples = {}

    def score(label, nfe, s):
        samples[f"{label}, {nfe} NFE"] = s
        v = fd(features(clf, s), f_ref)
        rows.append([label, nfe, v])
        return v

    teacher = load("builtin:digits")
    tden = teacher.denoiser
    cosine = tden.path
    with torch.no_grad():
        score(
            "teacher, dpm++2m", 10, pfode.sample(tden, float(cosine.sigma(cosine.t_max)) * z, solver="dpm++2m", nfe=10)
        )
        for k in NFES:
            score("teacher, DDIM", k, ddim_sample(tden, z, uniform_times(cosine, k)))

    pairs, t_pairs = pairs_from(tden, n_pairs, 3, solver="dpm++2m", nfe=10)
    print(f"{n_pairs} teacher pairs in {t_pairs:.0f}s; classifier accuracy {acc:.3f} ({tc.s:.0f}s)", flush=True)

    students, timings, objectives = [], {"pairs_s": t_pairs}, {}
    for spec in args.rd:
        pred, lr, weighting = (spec.split(":") + ["min-snr"])[:3]
        rd = RectifiedDiffusion(cosine, pred, weighting=weighting, gamma=5.0, coupling=Paired())
        rd_tr, t_rd = fit(rd, student_net(teacher), pairs, steps, float(lr), args.batch, 1)
        label = f"Rectified Diffusion (cosine, {pred}, lr {lr}, {weighting})"
        students.append((label, rd, rd_tr, None))
        timings[label] = t_rd
        objectives[label] = rd.spec()
    if not args.no_linear:
        lin = FlowMatching(Linear(), coupling=Paired(), time_sampler="u-shaped", metric="pseudo-huber")
        lin_tr, t_lin = fit(lin, student_net(teacher), pairs, steps, 1e-3, args.batch, 2)  # a new output type
        students.append(("reflow, Linear path (velocity, lr 1e-3)", lin, lin_tr, 1.0))
        timings["reflow_linear_s"] = t_lin
        objectives["reflow_linear"] = lin.spec()
    fds = {}
    with torch.no_grad():
        for label, obj, tr, t0 in students:
            den = obj.denoiser(tr.ema)
            fds[label] = {k: score(label, k, ddim_sample(den, z, uniform_times(den.path, k, t0))) for k in NFES}
    if args.distill and not args.no_linear:
        lin_den = lin.denoiser(lin_tr.ema)
        pairs2, t_p2 = pairs_from(
            lin_den, n_pairs, 4, grid=torch.linspace(1.0, 0.0, 9, dtype=torch.float64),
            solver=get_solver("euler", variable="t"),
        )  # fmt: skip
        clf2, _ = train_classifier(x, y, epochs=5 if args.quick else 40, seed=1)
        for p in clf2.parameters():
            p.requires_grad_(False)
        phi = torch.nn.Sequential(clf2.body)
        dist = Distillation(Linear(), "velocity", distance="features", times=[1.0], features=phi)
        net = build_net(teacher.meta["model_config"])
        net.load_state_dict(lin_tr.ema.state_dict())
        d_tr, t_d = fit(dist, net, pairs2, steps, 1e-4, args.batch, 3)
        timings.update(student_pairs_s=t_p2, distill_s=t_d)
        with torch.no_grad():
            s1 = dist.sample(d_tr.ema, z)
        fds["reflow, Linear + distillation (features)"] = {1: score("reflow, Linear + distillation (features)", 1, s1)}
    print(table(rows, ["model", "NFE", "FD-digits"]))
    print("train times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))

    from pfode.plots import _figure, image_grid

    keys = ["teacher, dpm++2m, 10 NFE", "teacher, DDIM, 1 NFE"] + [f"{k}, {j} NFE" for k in fds for j in (1, 4)
                                                                      if f"{k}, {j} NFE" in samples]  # fmt: skip
    fig = _figure(3.2 * (len(keys) + 1), 3.8)
    panels = [("real digits", x[:64])] + [(k, samples[k][:64]) for k in keys]
    for j, (k, imgs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        ax.imshow(image_grid(imgs)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(k, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    stem = "rectified_diffusion" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    png = RESULTS / f"{stem}.png"
    fig.savefig(png)
    p = write_json(
        f"{stem}.json",
        {
            "metric": "Frechet distance of 64-d penultimate features of train_digits.py's CNN classifier",
            "classifier_test_accuracy": acc,
            "n_per_set": m,
            "teacher": "builtin:digits (cosine VP, eps, UNet base 24), pairs with dpm++2m at 10 NFE",
            "settings": {
                "pairs": n_pairs,
                "steps": steps,
                "batch": args.batch,
                "rd": args.rd,
                "lr_linear": 1e-3,
                "lr_distill": 1e-4,
                "sampler": "DDIM",
            },
            "objectives": objectives,
            "rows": [{"model": r[0], "nfe": r[1], "fd": r[2]} for r in rows],
            "timings": timings,
            "plot": png.name,
            "total_s": time.perf_counter() - t_start,
        },
    )
    print(f"wrote {p} (total {time.perf_counter() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
