"""PFGM++ robustness / rigidity trade-off over the augmented dimension D on 2-D toys (issue 16, item 5).

Paper: Xu et al., "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models" (ICML 2023). It reports
that smaller D is more *robust* (sample quality degrades less under estimation error of the denoiser and under
large steps) but *harder to train* (heavier-tailed kernel: wider inputs, noisier targets), D = 128..2048 being the
sweet spot, and D -> inf recovering EDM. ``pfode.pfgmpp.PFGMPP(D, 0.002, 80)`` with ``r = sigma sqrt(D)``.

Robustness (exact, no training): targets = 256 points of ``toy2d("moons")`` / ``toy2d("checkerboard")``; the model
is the exact finite-point PFGM++ denoiser (``PointSetDenoiser``, closed form), whose ODE maps the prior onto the
points. 1000 starts from ``path.prior``; error = exact W2 (POT) between the samples and the same starts pushed by
Heun at NFE 161 with the exact denoiser (so the multinomial mass-split floor of W2 to the points drops out; that
W2 is stored as ``ref_w2_to_points``).

* ``steps``: Heun at NFE 5, 9, 13, 21, 41;
* ``noisy``: Heun NFE 21 with a perturbed denoiser ``x0_hat + eta min(sigma, 1) xi``, ``xi ~ N(0, I)`` fresh per call,
  ``eta`` in {0.3, 1.0} (a stand-in for the estimation error of a network).

Rigidity: (a) the irreducible x0-loss of the exact denoiser under the training distribution
(``sigma`` EDM log-normal, ``x ~ p_r(.|y)``): mean and std of ``|D*(x, sigma) - y|^2`` weighted by EDM's
``1/sigma^2 + 1/0.5^2``, and the 99th percentile of ``|x - y| / (sigma sqrt(N))`` (kernel tail);
(b) a fixed small budget: an EDM-preconditioned MLP (width 128, depth 3) trained with
``pfode.train.DenoisingScoreMatching(path, "x0", "edm", "edm-lognormal", time_input="sigma")`` for
``--steps`` (default 400) Adam steps on 4096 moons points, then sampled (Heun NFE 21 and 9) from ``path.prior``;
error = W2 to 2000 fresh moons points (floor: W2 between two fresh draws).

Run: ``python benchmarks/pfgmpp_sweep.py [--quick] [--steps N]``; writes ``benchmarks/results/pfgmpp_sweep.{json,png}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.metrics import w2_samples  # noqa: E402
from pfode.nets import MLP  # noqa: E402
from pfode.pfgmpp import PFGMPP, PointSetDenoiser  # noqa: E402
from pfode.train import DenoisingScoreMatching  # noqa: E402

DS = (1.0, 4.0, 16.0, 128.0, math.inf)
STEP_NFES = (5, 9, 13, 21, 41)
REF_NFE = 161
ETAS = (0.3, 1.0)
SIGMA_DATA = 0.5


def label(D):
    return "inf (EDM)" if math.isinf(D) else f"{D:g}"


class Noisy:
    """The exact denoiser plus ``eta min(sigma, 1) xi`` with fresh ``xi ~ N(0, I)`` per call."""

    def __init__(self, exact: PointSetDenoiser, eta: float, seed: int):
        self.exact, self.eta, self.gen = exact, eta, torch.Generator().manual_seed(seed)

    def __call__(self, x, t):
        out = self.exact(x, t)
        s = torch.as_tensor(t, dtype=torch.float64)
        s = s.reshape(-1, *([1] * (x.dim() - 1))) if s.dim() else s
        xi = torch.randn(x.shape, generator=self.gen, dtype=torch.float64)
        return (out.to(torch.float64) + self.eta * torch.clamp(s, max=1.0) * xi).to(x.dtype)


def robustness(n_pts: int, n: int) -> dict:
    res = {}
    for toy in ("moons", "checkerboard"):
        pts = toy2d(toy, n_pts, seed=1).to(torch.float64)
        res[toy] = {}
        for D in DS:
            path = PFGMPP(D=D, sigma_min=0.002, sigma_max=80.0)
            exact = PointSetDenoiser(pts, path)
            x_T = path.prior((n, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
            ref = pfode.sample(exact.denoiser(), x_T, nfe=REF_NFE, solver="heun")
            row = {"steps": {}, "noisy": {}, "ref_w2_to_points": w2_samples(ref, pts)}
            for nfe in STEP_NFES:
                x = pfode.sample(exact.denoiser(), x_T, nfe=nfe, solver="heun")
                row["steps"][nfe] = w2_samples(x, ref)
            for eta in ETAS:
                den = pfode.Denoiser(Noisy(exact, eta, 4), path, prediction="x0", time_input="t")
                x = pfode.sample(den, x_T, nfe=21, solver="heun")
                row["noisy"][eta] = w2_samples(x, ref)
            res[toy][label(D)] = row
    return res


def loss_stats(n: int) -> dict:
    pts = toy2d("moons", 256, seed=1).to(torch.float64)
    g = torch.Generator().manual_seed(5)
    out = {}
    for D in DS:
        path = PFGMPP(D=D)
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g, dtype=torch.float64))
        y = pts[torch.randint(0, pts.shape[0], (n,), generator=g)]
        x = path.perturb(y, sigma, g)
        d_star = PointSetDenoiser(pts, path)(x, sigma)
        w = 1.0 / sigma**2 + 1.0 / SIGMA_DATA**2
        loss = w * (d_star - y).pow(2).sum(1)
        tail = ((x - y).norm(dim=1) / (sigma * math.sqrt(2))).quantile(0.99)
        out[label(D)] = {"loss_mean": float(loss.mean()), "loss_std": float(loss.std()), "tail_p99": float(tail)}
    return out


class Precond(nn.Module):
    """EDM preconditioning (Karras et al., 2022) around an MLP: ``D = c_skip x + c_out F(c_in x, log(sigma)/4)``."""

    def __init__(self):
        super().__init__()
        self.f = MLP((2,), width=128, depth=3, time_scale=1.0)

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1).to(x.dtype)
        sd2 = SIGMA_DATA**2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * SIGMA_DATA / torch.sqrt(s * s + sd2)
        c_in = 1.0 / torch.sqrt(s * s + sd2)
        return c_skip * x + c_out * self.f(c_in * x, torch.log(sigma) / 4)


def trained(steps: int) -> dict:
    data = toy2d("moons", 4096, seed=7)
    fresh = toy2d("moons", 2000, seed=8).to(torch.float64)
    floor = w2_samples(toy2d("moons", 2000, seed=9), fresh)
    out = {"floor": floor}
    for D in DS:
        torch.manual_seed(0)
        path = PFGMPP(D=D, sigma_min=0.002, sigma_max=80.0)
        obj = DenoisingScoreMatching(path, "x0", "edm", "edm-lognormal", time_input="sigma", sigma_data=SIGMA_DATA)
        net = Precond()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(1)
        losses = []
        t0 = time.perf_counter()
        for step in range(steps):
            idx = torch.randint(0, data.shape[0], (256,), generator=g)
            batch = obj.prepare(data[idx], g, step)
            loss, _ = obj.loss(net, batch)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        secs = time.perf_counter() - t0
        den = obj.denoiser(net)
        x_T = path.prior((2000, 2), torch.Generator().manual_seed(2))
        row = {"train_seconds": secs, "final_loss": sum(losses[-100:]) / len(losses[-100:])}
        with torch.no_grad():
            for nfe in (9, 21):
                x = pfode.sample(den, x_T, nfe=nfe, solver="heun")
                ok = torch.isfinite(x).all(1)
                row[f"w2_nfe{nfe}"] = w2_samples(x[ok].double(), fresh) if bool(ok.any()) else float("nan")
        out[label(D)] = row
        print(f"  trained D={label(D)}: {row}", flush=True)
    return out


def plot(rob: dict, tr: dict, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for toy, ls in (("moons", "-"), ("checkerboard", "--")):
        for lab, row in rob[toy].items():
            ks = sorted(row["steps"])
            axes[0].semilogy(ks, [row["steps"][k] for k in ks], "o" + ls, label=f"{toy} D={lab}")
        labs = list(rob[toy])
        for eta in ETAS:
            axes[1].semilogy(
                range(len(labs)), [rob[toy][lab]["noisy"][eta] for lab in labs], "o" + ls, label=f"{toy} eta={eta}"
            )
        axes[1].set_xticks(range(len(labs)), labs)
    axes[0].set_xlabel("NFE (Heun)")
    axes[0].set_ylabel(f"W2 to the NFE-{REF_NFE} samples")
    axes[0].set_title("exact denoiser, few steps")
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("D")
    axes[1].set_title("noisy denoiser, NFE 21")
    axes[1].legend(fontsize=7)
    if tr:
        labs = [k for k in tr if k != "floor"]
        for nfe in (9, 21):
            axes[2].semilogy(range(len(labs)), [tr[k][f"w2_nfe{nfe}"] for k in labs], "o-", label=f"NFE {nfe}")
        axes[2].axhline(tr["floor"], color="gray", ls=":", label="floor")
        axes[2].set_xticks(range(len(labs)), labs)
        axes[2].set_title("trained MLP (fixed budget), moons")
        axes[2].set_xlabel("D")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="training steps per D (default 400; quick 100)")
    args = ap.parse_args()
    setup(1)
    steps = args.steps or (100 if args.quick else 400)
    t0 = time.perf_counter()
    rob = robustness(256, 500 if args.quick else 1000)
    rows = []
    for toy in rob:
        for lab, row in rob[toy].items():
            rows.append([toy, lab] + [row["steps"][k] for k in STEP_NFES] + [row["noisy"][e] for e in ETAS])
    print(f"Robustness: W2(samples, same starts at NFE {REF_NFE}), exact finite-point denoiser, Heun")
    print(table(rows, ["toy", "D"] + [f"NFE {k}" for k in STEP_NFES] + [f"noisy eta={e}" for e in ETAS]))
    ls = loss_stats(4000 if args.quick else 20000)
    print("\nRigidity (a): EDM-weighted irreducible x0-loss of the exact denoiser, moons 256 points")
    print(
        table(
            [[k, v["loss_mean"], v["loss_std"], v["tail_p99"]] for k, v in ls.items()],
            ["D", "loss mean", "loss std", "p99 |x-y|/(sigma sqrt N)"],
        )
    )
    print(f"\nRigidity (b): MLP trained {steps} steps per D on moons")
    tr = trained(steps)
    print(
        table(
            [
                [k, v["final_loss"], v["w2_nfe9"], v["w2_nfe21"], v["train_seconds"]]
                for k, v in tr.items()
                if k != "floor"
            ],
            ["D", "final loss", "W2 NFE 9", "W2 NFE 21", "train s"],
        )
    )
    print(f"floor W2(two fresh moons draws) = {tr['floor']:.4g}")
    tag = "_quick" if args.quick else ""
    payload = {
        "setup": {
            "paper": "Xu et al., PFGM++ (ICML 2023)",
            "path": "PFGMPP(D, sigma_min=0.002, sigma_max=80), r = sigma sqrt(D)",
            "Ds": [label(D) for D in DS],
            "train_steps": steps,
        },
        "robustness": rob,
        "loss_stats": ls,
        "trained": tr,
        "seconds": time.perf_counter() - t0,
    }
    out = write_json(f"pfgmpp_sweep{tag}.json", payload)
    plot(rob, tr, RESULTS / f"pfgmpp_sweep{tag}.png")
    print(f"\nwrote {out} and .png ({payload['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
