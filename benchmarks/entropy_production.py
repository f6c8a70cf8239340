"""Entropy production rate and probability current of a driven Ornstein-Uhlenbeck process from a learned score
(issue 16, item 6; Boffi & Vanden-Eijnden, "Deep learning probability flows and entropy production rates in active
matter", PNAS 2024, arXiv:2309.12991).

Setup. ``dx = -A x dt + sqrt(2) B dW`` with ``A = (D + Q) S^{-1}`` (``pfode.physics.OrnsteinUhlenbeck.driven``):
stationary law ``N(0, S)``, circulation ``Q`` antisymmetric, so the stationary current ``j = v p`` with
``v = -A x - D grad log p = -Q S^{-1} x`` is non-zero and the entropy production rate has the closed form
``Pi = tr(A^T D^{-1} A S) - tr(A)``. Systems: 2-D (anisotropic ``S`` and ``D``, ``Q = J``) and 4-D (random, from
``OrnsteinUhlenbeck.random``).

Learning. Denoising score matching with ``pfode.train.Trainer`` on 50k exact stationary samples: EDM path
(``alpha = 1``, ``sigma = t``), eps-prediction, network time input ``sigma`` (log-embedded), training noise levels
``sigma`` log-normal around 0.15 clipped to [0.02, 3]; a small ``pfode.nets.MLP`` (width 64, depth 3), AdamW, cosine
learning rate, EMA 0.999. The data score is read with ``pfode.physics.score_from_denoiser(den, t)`` at several
noise levels ``s = sigma``: it targets the score of ``p * N(0, s^2 I)``, whose bias is ``O(s^2)`` in the score and
``O(s^4)`` in ``Pi`` (a gradient error ``d`` biases ``Pi`` by exactly ``E[d^T D d]``; column ``pi_bias_exact_s`` is
that bias for a perfect network at ``s``), while the network's eps error is amplified ``1/s`` -- the table shows the
trade-off.

Reported per read-out level (on 20k fresh stationary samples): ``pi_hat`` and its relative error against the closed
form; relative L2(p) error of the current, ``|v_hat - v|_{L2(p)} / |v|_{L2(p)}`` (= the error of ``j`` in
``L2(1/p)``); relative L2(p) error of the score against the exact score and against the smoothed score (the
network's own error). The PNG shows the exact and learned stationary current ``j = v p`` in 2-D (streamlines over
``|j|``; the learned one as ``v_hat p`` with the exact ``p``, since a score gives ``v`` but not ``p``), and the
errors against ``s``.

Run: ``python benchmarks/entropy_production.py [--iterations N]``; writes
``benchmarks/results/entropy_production.{json,png}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

from pfode import paths  # noqa: E402
from pfode.nets import MLP  # noqa: E402
from pfode.physics import (  # noqa: E402
    OrnsteinUhlenbeck,
    current_velocity,
    entropy_production_rate,
    score_from_denoiser,
)
from pfode.train import DenoisingScoreMatching, TimeSampler, TrainConfig, Trainer  # noqa: E402

READ_S = [0.03, 0.05, 0.1, 0.15, 0.2, 0.3]
T_RANGE = (0.02, 3.0)


def systems() -> dict[str, OrnsteinUhlenbeck]:
    f64 = torch.float64
    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=f64)
    D = torch.tensor([[1.0, 0.2], [0.2, 0.6]], dtype=f64)
    J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=f64)
    return {
        "ou2d": OrnsteinUhlenbeck.driven(S, D, J),
        "ou4d": OrnsteinUhlenbeck.random(4, drive=2.0, cond=4.0, generator=torch.Generator().manual_seed(1)),
    }


def train(ou: OrnsteinUhlenbeck, iterations: int, seed: int = 0):
    data = ou.sample(50_000, torch.Generator().manual_seed(seed)).float()
    path = paths.EDM()
    ts = TimeSampler("edm-lognormal", path, T_RANGE, p_mean=math.log(0.15), p_std=1.0)
    obj = DenoisingScoreMatching(path, prediction="eps", time_sampler=ts, time_input="sigma")
    torch.manual_seed(seed)
    net = MLP((ou.d,), width=64, depth=3, time_dim=32, log_time=True, time_scale=1.0)
    cfg = TrainConfig(
        iterations=iterations,
        batch_size=512,
        lr=2e-3,
        lr_schedule="cosine",
        ema_decay=0.999,
        seed=seed,
        quiet=True,
        tensorboard=False,
        log_every=0,
    )
    tr = Trainer(net, obj, data, cfg)
    t0 = time.perf_counter()
    tr.fit(save_final=False)
    return obj.denoiser(tr.ema), time.perf_counter() - t0, float(tr.history[-1]["loss"]) if tr.history else None


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def evaluate(ou: OrnsteinUhlenbeck, den, x: torch.Tensor) -> list[dict]:
    pi = ou.entropy_production_rate()
    v, s_true = ou.velocity(x), ou.score(x)
    eye = torch.eye(ou.d, dtype=torch.float64)
    rows = []
    for s in READ_S:
        score = score_from_denoiser(den, s, dtype=torch.float32)  # EDM: t = sigma = s
        with torch.no_grad():
            sh = score(x)
            pi_hat = float(entropy_production_rate(score, ou.drift, ou.D, x))
            vh = current_velocity(score, ou.drift, ou.D, x)
        pi_s = ou.entropy_production_rate(torch.linalg.inv(ou.cov + s * s * eye))
        rows.append(
            {
                "s": s,
                "pi": pi,
                "pi_hat": pi_hat,
                "pi_rel_err": pi_hat / pi - 1.0,
                "pi_bias_exact_s": pi_s / pi - 1.0,
                "current_rel_l2": rel(vh, v),
                "score_rel_l2": rel(sh, s_true),
                "score_rel_l2_vs_smoothed": rel(sh, ou.smoothed_score(x, s)),
            }
        )
    return rows


def plot(fname, ou2, den2, best_s, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lim = 2.6 * float(ou2.cov.diag().sqrt().max())
    g = torch.linspace(-lim, lim, 60, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    p = torch.exp(ou2.log_prob(pts))[:, None]
    with torch.no_grad():
        vh = current_velocity(score_from_denoiser(den2, best_s, dtype=torch.float32), ou2.drift, ou2.D, pts)
    fields = {"exact current j = v p": ou2.velocity(pts) * p, f"learned v_hat p (s = {best_s:g})": vh * p}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    vmax = max(float(f.norm(dim=1).max()) for f in fields.values())
    for ax, (title, j) in zip(axes[:2], fields.items()):
        u, w = (j[:, k].reshape(X.shape).numpy() for k in range(2))
        mag = np.hypot(u, w)
        im = ax.pcolormesh(X.numpy(), Y.numpy(), mag, shading="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.streamplot(X.numpy(), Y.numpy(), u, w, color="w", density=1.1, linewidth=0.7, arrowsize=0.8)
        ax.set_title(title)
        ax.set_aspect("equal")
        fig.colorbar(im, ax=ax, fraction=0.046, label="|j|")
    ax = axes[2]
    for name, res in results.items():
        ss = [r["s"] for r in res["rows"]]
        (line,) = ax.loglog(ss, [abs(r["pi_rel_err"]) for r in res["rows"]], "-o", ms=3, label=f"{name}: |Pi err|")
        c = line.get_color()
        ax.loglog(ss, [r["current_rel_l2"] for r in res["rows"]], "--s", ms=3, color=c, label=f"{name}: current err")
        ax.loglog(ss, [r["pi_bias_exact_s"] for r in res["rows"]], ":", color=c, label=f"{name}: Pi bias, exact net")
    ax.set_xticks(READ_S)
    ax.set_xticks([], minor=True)
    ax.set_xticklabels([f"{s:g}" for s in READ_S])
    ax.set_xlabel("read-out noise level s")
    ax.set_ylabel("relative error")
    ax.set_title("learned score: errors vs read-out level")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(fname, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--systems", default="ou2d,ou4d")
    args = ap.parse_args()
    setup(1)
    results, dens = {}, {}
    for name in args.systems.split(","):
        ou = systems()[name]
        den, secs, loss = train(ou, args.iterations)
        x = ou.sample(20_000, torch.Generator().manual_seed(123))
        rows = evaluate(ou, den, x)
        dens[name] = den
        results[name] = {
            "d": ou.d,
            "pi": ou.entropy_production_rate(),
            "tr_A": float(torch.trace(ou.A)),
            "train_seconds": secs,
            "final_loss": loss,
            "rows": rows,
        }
        print(
            f"\n{name}: d={ou.d}, Pi = {results[name]['pi']:.5g} (tr A = {results[name]['tr_A']:.4g}), "
            f"{args.iterations} iterations in {secs:.0f} s"
        )
        print(
            table(
                [
                    [
                        r["s"],
                        r["pi_hat"],
                        f"{100 * r['pi_rel_err']:+.2f}%",
                        f"{100 * r['pi_bias_exact_s']:+.3f}%",
                        f"{100 * r['current_rel_l2']:.2f}%",
                        f"{100 * r['score_rel_l2']:.2f}%",
                        f"{100 * r['score_rel_l2_vs_smoothed']:.2f}%",
                    ]
                    for r in rows
                ],
                ["s", "Pi_hat", "Pi rel err", "Pi bias exact net", "current rel L2", "score rel L2", "vs smoothed"],
            )
        )
    payload = {
        "paper": "Boffi & Vanden-Eijnden, Deep learning probability flows and entropy production rates in active "
        "matter, arXiv:2309.12991",
        "iterations": args.iterations,
        "read_s": READ_S,
        "train_t_range": list(T_RANGE),
        "results": results,
    }
    out = write_json("entropy_production.json", payload)
    if "ou2d" in results:
        rows = results["ou2d"]["rows"]
        best = min(rows, key=lambda r: r["current_rel_l2"])["s"]
        plot(RESULTS / "entropy_production.png", systems()["ou2d"], dens["ou2d"], best, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
