"""Digits 8x8: a DSM teacher sampled with dpm++2m at 10 NFE, and a consistency-distilled student at 1-2 NFE,
scored with a Frechet distance in the feature space of a small digits classifier.

The metric ("FD-digits"): a small CNN classifier is trained on 80% of scikit-learn's digits (the other 20%
gives its test accuracy); its 64-d penultimate activations are the features. For two image sets the
distance is ``|mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))`` between the Gaussians fitted to their
features -- the FID formula (Heusel et al., 2017) with this classifier in place of Inception, i.e. the
squared W2 distance between the fitted Gaussians (``pfode.metrics.w2_gaussian ** 2``). It is an honest
analogue, not comparable to published FIDs: the features are 64-d, the classifier is ours, and with
1,797 real images the estimate has a visible finite-sample bias -- hence the rows for real-vs-real
(two disjoint halves) and for a noise baseline.

The real digits are split into two random halves A and B (898 / 899 images). The generative models train on
half A only; half B is held out as the reference. Every set -- real half A (the floor: what an ideal
generator, or one that memorised its training set, scores at this sample size), Gaussian noise images, and
each model's samples -- has about 900 images and is compared with half B, so all rows share one sample size
and one bias. The classifier that defines the features trains on its own 80% split of all digits.

Run: ``.venv/bin/python benchmarks/train_digits.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/train_digits.json`` and ``train_digits.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

from pfode import metrics  # noqa: E402
from pfode.data import digits  # noqa: E402
from pfode.nets import UNet  # noqa: E402
from pfode.plots import image_grid  # noqa: E402
from pfode.train import Consistency, DenoisingScoreMatching, Trainer  # noqa: E402


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))


#: the digits recipe the digits benchmarks share: the UNet and the trainer settings
UNET = dict(base=16, mults=(1, 2), blocks=1, time_dim=64)
TRAIN = dict(batch_size=128, lr=2e-3, warmup_steps=100, lr_schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0,
             ema_decay=0.998, quiet=True, log_every=0)


def teacher_trainer(train_x, steps: int):
    """``(objective, Trainer)`` of the DSM teacher (cosine path, eps, min-SNR weighting with gamma 5) for ``steps``
    iterations on ``train_x``, seeded; call ``.fit(save_final=False)`` on the trainer."""
    torch.manual_seed(0)
    obj = DenoisingScoreMatching("cosine", "eps", weighting="min-snr", gamma=5.0)
    return obj, Trainer(UNet((1, 8, 8), **UNET), obj, train_x, {**TRAIN, "iterations": steps})


def train_classifier(x, y, epochs=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_tr = int(0.8 * x.shape[0])
    tr, te = perm[:n_tr], perm[n_tr:]
    torch.manual_seed(seed)
    clf = Classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(epochs):
        p = tr[torch.randperm(n_tr, generator=g)]
        for i in range(0, n_tr, 64):
            b = p[i : i + 64]
            loss = nn.functional.cross_entropy(clf(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = float((clf(x[te]).argmax(1) == y[te]).float().mean())
    return clf, acc


def features(clf, x):
    with torch.no_grad():
        return clf.body(x.clamp(-1, 1).float()).double()


def fd(fa, fb) -> float:
    ma, mb = fa.mean(0), fb.mean(0)
    return metrics.w2_gaussian(ma, torch.cov(fa.T), mb, torch.cov(fb.T)) ** 2


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--teacher-steps", type=int, default=2500)
    ap.add_argument("--cd-steps", type=int, default=1500)
    args = ap.parse_args(argv)
    setup()
    t_start = time.perf_counter()
    steps_t, steps_c = (60, 40) if args.quick else (args.teacher_steps, args.cd_steps)
    x, y = digits(return_labels=True)
    n = x.shape[0]
    with Timer() as tc:
        clf, acc = train_classifier(x, y, epochs=5 if args.quick else 40)
    f_all = features(clf, x)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    f_ref = f_all[perm[n // 2 :]]  # half B: the reference of every row
    m = f_ref.shape[0]
    rows = [["real digits, half A (floor)", "-", fd(f_all[perm[: n // 2]], f_ref)]]
    noise = (x.mean() + x.std() * torch.randn((m, 1, 8, 8), generator=g)).clamp(-1, 1)
    rows.append(["Gaussian noise images", "-", fd(features(clf, noise), f_ref)])

    train_x = x[perm[: n // 2]]  # half A
    teacher_obj, teacher = teacher_trainer(train_x, steps_t)
    with Timer() as tt:
        teacher.fit(save_final=False)
    z = torch.randn(m, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    samples = {}
    with torch.no_grad():
        for nfe in (10, 20, 2):
            s = teacher_obj.sample(teacher.ema, z, nfe=nfe, solver="dpm++2m")
            samples[f"teacher dpm++2m {nfe} NFE"] = s
            rows.append(["DSM teacher, dpm++2m", nfe, fd(features(clf, s), f_ref)])

    tden = teacher_obj.denoiser(teacher.ema)
    cd = Consistency(
        "edm",
        mode="distillation",
        teacher=tden,
        teacher_solver="heun",
        steps=18,
        sigma_data=0.5,
        metric="pseudo-huber",
    )
    torch.manual_seed(1)
    student_net = UNet((1, 8, 8), **UNET, log_time=True, time_scale=250.0)
    student = Trainer(student_net, cd, train_x, {**TRAIN, "iterations": steps_c, "lr": 1e-3, "ema_decay": 0.998})
    with Timer() as ts:
        student.fit(save_final=False)
    cons = {}
    with torch.no_grad():
        for nfe, s_mid, label in (
            (1, None, "1 NFE"),
            (2, None, "2 NFE (s_mid Karras 2.52)"),
            (2, [1.0], "2 NFE (s_mid 1.0)"),
            (2, [0.5], "2 NFE (s_mid 0.5)"),
        ):
            s = cd.sample(student.ema, z, nfe=nfe, s_mid=s_mid, generator=torch.Generator().manual_seed(11))
            samples[f"consistency {label}"] = s
            v = fd(features(clf, s), f_ref)
            cons[label] = v
            rows.append(["consistency distillation", label, v])
    print(
        f"classifier test accuracy {acc:.3f} ({tc.s:.0f}s); teacher {steps_t} steps {tt.s:.0f}s; "
        f"CD {steps_c} steps {ts.s:.0f}s"
    )
    print(table(rows, ["model", "NFE", "FD-digits"]))

    from pfode.plots import _figure

    keys = [
        "teacher dpm++2m 10 NFE",
        "teacher dpm++2m 2 NFE",
        "consistency 1 NFE",
        "consistency 2 NFE (s_mid Karras 2.52)",
    ]
    fig = _figure(4 * (len(keys) + 1), 4.4)
    panels = [("real digits", x[:64])] + [(k, samples[k][:64]) for k in keys]
    for j, (k, imgs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        ax.imshow(image_grid(imgs)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(k, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    png = RESULTS / "train_digits.png"
    fig.savefig(png)
    p = write_json(
        "train_digits.json",
        {
            "metric": "Frechet distance of 64-d penultimate features of a small CNN digits classifier",
            "classifier_test_accuracy": acc,
            "n_per_set": m,
            "reference": "random half B of the 1,797 real digits (held out; the models train on half A)",
            "teacher": {
                "objective": teacher_obj.spec(),
                "net": teacher.model.config(),
                "steps": steps_t,
                "train_s": tt.s,
            },
            "student": {
                "objective": cd.spec(),
                "net": student.model.net.config(),
                "steps": steps_c,
                "train_s": ts.s,
            },
            "rows": [{"model": r[0], "nfe": r[1], "fd": r[2]} for r in rows],
            "plot": png.name,
            "total_s": time.perf_counter() - t_start,
        },
    )
    print(f"wrote {p} (total {time.perf_counter() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
