"""i-DODE likelihood training: test-set NLL with and without each technique (issue 17, item 5).

Techniques (``pfode.train.idode``, Zheng et al., ICML 2023): the likelihood weighting (Song et al., 2021) in
the eps parameterization with uniform times ("lik eps, uniform t"), with importance-sampled times ("lik eps, IS";
for eps the proposal is uniform in log-SNR), the velocity parameterization ``v`` with uniform times and with
importance sampling (i-DODE's first-order objective), and the second-order (high-order flow matching)
fine-tuning term (weight 0.1) against a first-order fine-tuning of the same length (the control).

Toy (exact truth). Target: an analytic 2-D Gaussian mixture (8 components on a ring of radius 2, std 0.22) on the
VP path (``t_min = 1e-3``). Each variant trains a residual MLP (width 128, depth 3) from the same seed on fresh
mixture samples (Adam, cosine decay, EMA 0.999). Test set: 1,000 samples of the marginal at ``t_min``. NLL is
``-log p_model / (d ln 2)`` (bits/dim) by ``pfode.likelihood.log_likelihood`` (dopri5, exact divergence, rtol =
atol = 1e-5); the exact value is ``GaussianMixture.log_prob`` at ``t_min``; the gap (model - exact) estimates
``KL(p || p_model) / d`` (its standard error is printed); "paired diff" is the gap minus that of the first
variant on the same test points, with its (much smaller) paired standard error. "loss CV" is the coefficient
of variation of one 512-sample minibatch estimate of the variant's own objective at its trained model (the
variance the importance sampling removes).

Digits. Start: the shipped ``builtin:digits`` (eps-prediction, cosine VP, min-SNR DSM). Each variant fine-tunes
it for a short run (Adam 2e-4, batch 64) on 80% of the digits and is scored on test digits from the other 20%
with ``pfode.likelihood.bits_per_dim`` (truncated-normal dequantization, dopri5 at rtol = atol = 1e-3,
Hutchinson with one Rademacher probe, the same probes for every variant, so differences are paired). The
velocity parameterization fine-tunes the eps network through ``Reparameterized(net, path, "eps", "v")``. Caveat:
the shipped model was trained on all 1,797 digits, so the "test" digits are held out from the fine-tuning only;
"DSM (min-SNR)" fine-tunes with the original objective as the control for the extra training.

Run: ``python benchmarks/idode.py`` (``--quick``: shorter runs, fewer test points). Writes
``benchmarks/results/idode.json`` and ``idode.png``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

from pfode import paths as P  # noqa: E402
from pfode.analytic import GaussianMixture  # noqa: E402
from pfode.likelihood import bits_per_dim, log_likelihood  # noqa: E402
from pfode.nets import build  # noqa: E402
from pfode.predictions import Denoiser  # noqa: E402
from pfode.train.idode import Reparameterized  # noqa: E402
from pfode.train.losses import get_objective  # noqa: E402

LN2 = math.log(2.0)


def ring_gmm() -> GaussianMixture:
    k = 8
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means, torch.full((k,), 0.05))


def train(net, objective, draw, iters: int, lr: float, seed: int, ema_decay: float = 0.999, cosine=True):
    """Adam (+ cosine decay to 5%) and an EMA with warm-up ``min(decay, (1 + i) / (10 + i))``; ``draw(g)`` gives a
    data batch. Returns the EMA network."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = copy.deepcopy(net).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for i in range(iters):
        if cosine:
            for pg in opt.param_groups:
                pg["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / iters)))
        batch = objective.prepare(draw(g), g, i)
        loss, _ = objective.loss(net, batch, step=i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + i) / (10 + i))  # EMA warm-up: short runs are not dominated by the start
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
    return ema


def loss_cv(objective, net, draw, reps: int = 64) -> float:
    g = torch.Generator().manual_seed(123)
    vals = []
    for i in range(reps):
        b = objective.prepare(draw(g), g, i)
        vals.append(float(objective.loss(net, b)[0].detach()))
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.std() / v.mean())


def toy(quick: bool) -> dict:
    gm, path = ring_gmm(), P.VP()
    iters, ft = (600, 200) if quick else (3000, 1000)
    bs, n_test = 512, (300 if quick else 1000)

    def draw(g):
        return gm.sample(bs, g).float()

    gt = torch.Generator().manual_seed(7)
    t_min = path.t_min
    x_test = path.alpha(t_min) * gm.sample(n_test, gt) + path.sigma(t_min) * torch.randn(
        n_test, 2, generator=gt, dtype=torch.float64
    )
    exact = gm.log_prob(x_test, t_min, path)
    nll_exact = float(-exact.mean() / (2 * LN2))
    variants = [
        ("DSM eps (L_simple)", dict(name="dsm", path=path, prediction="eps"), "eps"),
        ("lik eps, uniform t", dict(name="idode", path=path, prediction="eps", time_sampling="uniform-t"), "eps"),
        ("lik eps, IS", dict(name="idode", path=path, prediction="eps", time_sampling="importance"), "eps"),
        ("lik v, uniform t", dict(name="idode", path=path, prediction="v", time_sampling="uniform-t"), "v"),
        ("lik v, IS (i-DODE)", dict(name="idode", path=path, prediction="v", time_sampling="importance"), "v"),
    ]
    rows, out, nets, gaps = [], [], {}, {}

    def evaluate(label, ema, pred, objective, secs):
        den = Denoiser(ema, path, pred)
        with Timer() as te:
            o = log_likelihood(den, x_test.float(), divergence="exact", rtol=1e-5, atol=1e-5)
        nll = -o.logp / (2 * LN2)
        gap = nll + exact / (2 * LN2)
        ref = gaps.setdefault("first", gap)  # paired with the first variant (same test points)
        diff = gap - ref
        cv = loss_cv(objective, ema, draw) if objective.name == "idode" else float("nan")
        r = {
            "variant": label,
            "nll_bpd": float(nll.mean()),
            "gap_bpd": float(gap.mean()),
            "gap_sem": float(gap.std() / math.sqrt(n_test)),
            "diff_vs_first": float(diff.mean()),
            "diff_sem": float(diff.std() / math.sqrt(n_test)),
            "loss_cv": cv,
            "train_s": secs,
            "eval_s": te.s,
            "nfe": o.nfe,
        }
        out.append(r)
        rows.append(
            [label, r["nll_bpd"], nll_exact, r["gap_bpd"], r["gap_sem"], r["diff_vs_first"], r["diff_sem"], cv, secs]
        )
        print(f"  {label}: NLL {r['nll_bpd']:.4f} bits/dim, gap {r['gap_bpd']:.4f} +- {r['gap_sem']:.4f}", flush=True)

    for label, spec, pred in variants:
        spec = dict(spec)
        obj = get_objective(spec.pop("name"), **spec)
        torch.manual_seed(0)
        net = build("mlp", data_shape=[2], width=128, depth=3, time_dim=64)
        with Timer() as tt:
            ema = train(net, obj, draw, iters, 2e-3, seed=1)
        nets[label] = (net, ema)
        evaluate(label, ema, pred, obj, tt.s)
    # fine-tuning from the i-DODE first-order model: second order vs first order (control)
    base_net, base_ema = nets["lik v, IS (i-DODE)"]
    for label, so in (("+ FT first order (control)", 0.0), ("+ FT second order 0.1", 0.1)):
        obj = get_objective("idode", path=path, prediction="v", time_sampling="importance", second_order=so)
        net = copy.deepcopy(base_ema).requires_grad_(True)
        with Timer() as tt:
            ema = train(net, obj, draw, ft, 5e-4, seed=2, ema_decay=0.99, cosine=False)
        evaluate(label, ema, "v", obj, tt.s)
    header = ["variant", "NLL bits/dim", "exact", "gap", "gap s.e.", "paired diff", "diff s.e.", "loss CV", "train s"]
    print(table(rows, header))
    return {"nll_exact_bpd": nll_exact, "iterations": iters, "finetune_iterations": ft, "rows": out}


def digits_part(quick: bool) -> dict:
    from pfode.data import digits
    from pfode.models import load

    m = load("builtin:digits")
    path = m.denoiser.path
    x = digits()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * x.shape[0])
    x_tr, x_te = x[perm[:n_train]], x[perm[n_train:]]
    n_test, steps = (24, 60) if quick else (64, 300)
    q = torch.round((x_te[:n_test] + 1) * 127.5).clamp(0, 255).to(torch.uint8)

    def draw(g):
        return x_tr[torch.randint(0, n_train, (64,), generator=g)]

    def score(den):
        with Timer() as te:
            o = bits_per_dim(
                den, q, divergence="hutchinson", generator=torch.Generator().manual_seed(5), rtol=1e-3, atol=1e-3
            )
        return o.bpd.double(), o.nfe, te.s

    variants = [
        ("shipped (no fine-tuning)", None, None),
        ("DSM (min-SNR), control", dict(name="dsm", path=path, prediction="eps", weighting="min-snr"), "eps"),
        ("lik eps, uniform t", dict(name="idode", path=path, prediction="eps", time_sampling="uniform-t"), "eps"),
        ("lik eps, IS", dict(name="idode", path=path, prediction="eps", time_sampling="importance"), "eps"),
        ("lik v, IS (i-DODE)", dict(name="idode", path=path, prediction="v", time_sampling="importance"), "v"),
        (
            "lik v, IS + second order 0.1",
            dict(name="idode", path=path, prediction="v", time_sampling="importance", second_order=0.1),
            "v",
        ),
    ]
    rows, out, base = [], [], None
    for label, spec, pred in variants:
        net = copy.deepcopy(m.net).float().requires_grad_(True)
        secs = 0.0
        if spec is None:
            den = m.denoiser
        else:
            spec = dict(spec)
            obj = get_objective(spec.pop("name"), **spec)
            model = net if pred == "eps" else Reparameterized(net, path, "eps", pred)
            with Timer() as tt:
                ema = train(model, obj, draw, steps, 2e-4, seed=3, ema_decay=0.99, cosine=False)
            secs = tt.s
            den = Denoiser(ema, path, pred)
        bpd, nfe, es = score(den)
        base = bpd if base is None else base
        diff = bpd - base
        r = {
            "variant": label,
            "bpd": float(bpd.mean()),
            "bpd_sem": float(bpd.std() / math.sqrt(n_test)),
            "diff_vs_shipped": float(diff.mean()),
            "diff_sem": float(diff.std() / math.sqrt(n_test)),
            "train_s": secs,
            "eval_s": es,
            "nfe": nfe,
        }
        out.append(r)
        rows.append([label, r["bpd"], r["bpd_sem"], r["diff_vs_shipped"], r["diff_sem"], secs, es])
        print(f"  {label}: {r['bpd']:.4f} bits/dim ({r['diff_vs_shipped']:+.4f} vs shipped)", flush=True)
    print(table(rows, ["variant", "bits/dim", "s.e.", "diff vs shipped", "diff s.e.", "train s", "eval s"]))
    return {"finetune_steps": steps, "test_digits": n_test, "rows": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--name", default=None, help="results file stem (default idode or idode_quick)")
    args = ap.parse_args()
    setup(1)
    print("== toy: 2-D Gaussian mixture (exact likelihood), VP path ==", flush=True)
    res = {"toy": toy(args.quick)}
    if not args.skip_digits:
        print("== digits: fine-tuning builtin:digits ==", flush=True)
        res["digits"] = digits_part(args.quick)
    name = args.name or ("idode_quick" if args.quick else "idode")
    p = write_json(f"{name}.json", {"quick": args.quick, **res})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("toy", "gap_bpd", "gap_sem", "NLL gap to exact (bits/dim)")]
        if "digits" in res:
            panels.append(("digits", "bpd", "bpd_sem", "test bits/dim"))
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
        axes = [axes] if len(panels) == 1 else axes
        for ax, (key, col, err, title) in zip(axes, panels):
            rs = res[key]["rows"]
            ax.barh([r["variant"] for r in rs], [r[col] for r in rs], xerr=[r[err] for r in rs])
            ax.set_title(title)
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
