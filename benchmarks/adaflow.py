"""AdaFlow (Hu et al., NeurIPS 2024): the number of steps follows the conditional variance of the velocity.

Part (a), exact variance on analytic 2-D targets (Linear path, float64, 256 noises ``x_1 ~ N(0, I)`` from
``t = 1`` to ``t = 0``, exact denoiser, :func:`pfode.solvers.exact_velocity_variance`):

* ``point``: a Gaussian with std 0.005 (unimodal, near-deterministic: the flow is straight);
* ``gaussian``: a Gaussian with stds (0.3, 0.1) (unimodal, but the flow bends as the scale changes);
* ``gmm``: 4 components at the corners of a square (side 3), std 0.1 (multimodal).

For each ``eta``: AdaFlow's mean / max NFE and error, and fixed-step Euler (uniform in ``t``) with
``ceil(mean NFE)`` steps. Error: mean per-sample L2 distance to a reference solution from the same noise
(Richardson extrapolation of Euler with 2000 and 4000 steps; its own accuracy is printed).

Part (b), a trained policy-like conditional toy: condition ``c`` in {0, 1, 2, 3}; the 2-D "action" is unimodal
(std 0.02) for ``c`` = 0, 2 and bimodal (two modes, std 0.05) for ``c`` = 1, 3. A conditional MLP velocity is
trained with :class:`pfode.train.FlowMatching` (the condition bound per batch), then a variance MLP with
:class:`pfode.train.variance.VarianceMatching` / :func:`fit_variance`. Per condition: AdaFlow's mean NFE, its
error to a 1000-step Euler solution of the same trained velocity (solver error), fixed-step Euler at the overall
mean NFE, the distance to the nearest true mode (sample quality) and the fitted vs exact variance at ``t = 1``.

Run: ``.venv/bin/python benchmarks/adaflow.py`` (about 1-2 minutes on a loaded 2-core machine); writes
``benchmarks/results/adaflow.{json,png}``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode.analytic import Gaussian, GaussianMixture  # noqa: E402
from pfode.paths import Linear  # noqa: E402
from pfode.plots import _figure, save_figure  # noqa: E402
from pfode.solvers import AdaFlow, exact_velocity_variance  # noqa: E402
from pfode.train import FlowMatching  # noqa: E402
from pfode.train.variance import VarianceMatching, fit_variance  # noqa: E402

PATH = Linear()
ETAS = (0.5, 0.2, 0.1, 0.05)
N = 256


def _euler(den, x, steps, cond=None):
    """Fixed-step Euler in t, uniform from 1 to 0 (AdaFlow with an infinite variance and ``steps`` steps)."""
    y, _ = AdaFlow(lambda x, t, **c: torch.full((x.shape[0],), 1e30), eta=1.0, max_steps=steps).solve(
        den, x, 1.0, 0.0, cond
    )
    return y


def _mode_dist(z, modes):
    """Mean distance of the samples ``z`` to their nearest true mode."""
    return float(torch.cdist(z, modes).min(1).values.mean())


def _err(a, b):
    return float((a - b).reshape(a.shape[0], -1).norm(dim=1).mean())


# --- (a) analytic -------------------------------------------------------------------------------------------
def analytic():
    corners = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])
    targets = {
        "point": Gaussian(torch.tensor([0.5, -0.5]), 0.005**2 * torch.eye(2)),
        "gaussian": Gaussian(torch.tensor([0.5, -0.5]), torch.diag(torch.tensor([0.3**2, 0.1**2]))),
        "gmm": GaussianMixture(torch.full((4,), 0.25), corners, torch.full((4,), 0.1**2)),
    }
    x = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows, refs = [], {}
    for name, target in targets.items():
        den = target.denoiser(PATH)
        e2, e4 = _euler(den, x, 2000), _euler(den, x, 4000)
        ref = 2 * e4 - e2
        refs[name] = _err(e4, ref)
        var_fn = exact_velocity_variance(target, PATH)
        for eta in ETAS:
            y, info = AdaFlow(var_fn, eta=eta, max_steps=100).solve(den, x, 1.0, 0.0)
            n_eu = math.ceil(info["mean_nfe"])
            rows.append(
                {
                    "target": name,
                    "eta": eta,
                    "mean_nfe": info["mean_nfe"],
                    "max_nfe": int(info["steps"].max()),
                    "err_adaflow": _err(y, ref),
                    "euler_steps": n_eu,
                    "err_euler": _err(_euler(den, x, n_eu), ref),
                }
            )
    return rows, refs


# --- (b) trained conditional toy ----------------------------------------------------------------------------
MODES = {0: [[1.0, 0.0]], 1: [[0.0, 1.0], [0.0, -1.0]], 2: [[-1.0, -1.0]], 3: [[1.0, 1.0], [-1.0, 1.0]]}
STDS = {0: 0.02, 1: 0.05, 2: 0.02, 3: 0.05}


def _law(c: int) -> GaussianMixture:
    m = torch.tensor(MODES[c])
    return GaussianMixture(torch.full((len(m),), 1.0 / len(m)), m, torch.full((len(m),), STDS[c] ** 2))


class CondMLP(nn.Module):
    """``(x [B, 2], t [B], c [B]) -> [B, out]``: x, a Fourier embedding of t and a one-hot of c."""

    def __init__(self, out: int, n_cond: int = 4, width: int = 128):
        super().__init__()
        self.n_cond = n_cond
        self.register_buffer("freq", torch.arange(1, 9, dtype=torch.float32) * math.pi)
        self.f = nn.Sequential(
            nn.Linear(2 + 16 + n_cond, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out),
        )

    def forward(self, x, t, c):
        te = t.float()[:, None] * self.freq
        h = torch.cat([x.float(), te.sin(), te.cos(), nn.functional.one_hot(c.long(), self.n_cond).float()], 1)
        return self.f(h)


def trained(seconds_budget: float = 60.0):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    n_data = 8000
    c_all = torch.randint(0, 4, (n_data,), generator=g)
    x0 = torch.empty(n_data, 2)
    for c in range(4):
        idx = (c_all == c).nonzero().squeeze(1)
        x0[idx] = _law(c).sample(len(idx), generator=g).float()

    # velocity: pfode's FlowMatching objective, the condition bound to the network for each batch
    fm = FlowMatching()
    vnet = CondMLP(2)
    opt = torch.optim.Adam(vnet.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    v_steps = 0
    for step in range(3000):
        idx = torch.randint(0, n_data, (256,), generator=g)
        prep = fm.prepare(x0[idx], g, step)
        c = c_all[idx]
        loss, _ = fm.loss(lambda x, t, c=c: vnet(x, t, c), prep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        v_steps += 1
        if time.perf_counter() - t0 > 0.6 * seconds_budget:
            break
    fm_loss = float(loss.detach())
    vnet.eval()
    den = pfode.Denoiser(vnet, PATH, "velocity")

    # variance: the AdaFlow variance-estimation loss with the velocity held fixed
    vm = VarianceMatching(den)
    snet = CondMLP(1)
    hist = fit_variance(vm, snet, x0, {"c": c_all}, steps=800, batch_size=256, lr=2e-3, generator=g)
    var_fn = vm.variance_fn(lambda x, t, c: snet(x, t, c)[:, 0])

    n_per = 128
    conds = torch.arange(4).repeat_interleave(n_per)
    x1 = torch.randn(len(conds), 2, generator=torch.Generator().manual_seed(2))
    cond = {"c": conds}
    with torch.no_grad():
        ref = _euler(den, x1, 1000, cond)
        out = {}
        for eta in (0.3, 0.1):
            y, info = AdaFlow(var_fn, eta=eta, max_steps=50).solve(den, x1, 1.0, 0.0, cond)
            # no variance head: the variance read off the velocity model's Jacobian (Tweedie), from t_max < 1
            y_tw, info_tw = AdaFlow(None, eta=eta, max_steps=50).solve(den, x1, PATH.t_max, 0.0, cond)
            n_eu = math.ceil(info["mean_nfe"])
            y_eu = _euler(den, x1, n_eu, cond)
            per = []
            for c in range(4):
                m = conds == c
                modes = torch.tensor(MODES[c])
                xv = torch.zeros(1, 2)
                fitted = float(var_fn(xv, torch.ones(1, dtype=torch.float64), c=torch.tensor([c]))[0])
                exact = float(exact_velocity_variance(_law(c), PATH)(xv.double(), 1.0)[0])
                per.append(
                    {
                        "c": c,
                        "modes": len(MODES[c]),
                        "mean_nfe": float(info["steps"][m].double().mean()),
                        "err_adaflow": _err(y[m], ref[m]),
                        "mean_nfe_tweedie": float(info_tw["steps"][m].double().mean()),
                        "err_tweedie": _err(y_tw[m], ref[m]),
                        "err_euler": _err(y_eu[m], ref[m]),
                        "mode_dist_adaflow": _mode_dist(y[m], modes),
                        "mode_dist_euler": _mode_dist(y_eu[m], modes),
                        "var_fitted_t1": fitted,
                        "var_exact_t1": exact,
                    }
                )
            out[str(eta)] = {"mean_nfe": info["mean_nfe"], "euler_steps": n_eu, "per_condition": per,
                             "samples": y.tolist()}
    settings = {"velocity_steps": v_steps, "flow_matching_final_loss": fm_loss, "variance_steps": len(hist),
                "variance_loss_first_last": [sum(hist[:50]) / 50, sum(hist[-50:]) / 50], "n_per_condition": n_per}
    return out, settings, conds


def plot(rows, toy, conds, path):
    fig = _figure(15, 4.5)
    ax = fig.add_subplot(1, 3, 1)
    for i, name in enumerate(("point", "gaussian", "gmm")):
        r = [q for q in rows if q["target"] == name]
        col = f"C{i}"
        ax.loglog([q["mean_nfe"] for q in r], [max(q["err_adaflow"], 1e-12) for q in r], "o-", color=col,
                  label=f"{name} AdaFlow")
        ax.loglog([q["euler_steps"] for q in r], [max(q["err_euler"], 1e-12) for q in r], "x--", color=col,
                  label=f"{name} Euler")
    ax.set_xlabel("mean NFE")
    ax.set_ylabel("mean L2 error to reference")
    ax.set_title("(a) exact variance")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 2)
    for k, eta in enumerate(toy):
        per = toy[eta]["per_condition"]
        ax.bar([p["c"] + 0.4 * k - 0.2 for p in per], [p["mean_nfe"] for p in per], width=0.4, label=f"eta={eta}")
    ax.set_xticks(range(4), [f"c={c}\n{len(MODES[c])} mode(s)" for c in range(4)])
    ax.set_ylabel("mean NFE")
    ax.set_title("(b) trained toy: NFE per condition")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    eta = list(toy)[-1]
    s = torch.tensor(toy[eta]["samples"])
    for c in range(4):
        m = conds == c
        ax.scatter(s[m, 0], s[m, 1], s=4, label=f"c={c}")
    ax.set_title(f"(b) AdaFlow samples, eta={eta}")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    setup(1)
    t0 = time.perf_counter()
    rows, refs = analytic()
    header = ["target", "eta", "mean NFE", "max NFE", "err AdaFlow", "Euler steps", "err Euler"]
    print("(a) exact variance, Linear path, t = 1 -> 0; reference accuracy:",
          ", ".join(f"{k} {v:.1e}" for k, v in refs.items()))
    print(table([[r["target"], r["eta"], r["mean_nfe"], r["max_nfe"], r["err_adaflow"], r["euler_steps"],
                  r["err_euler"]] for r in rows], header))
    toy, settings, conds = trained()
    print(f"\n(b) trained conditional toy ({settings})")
    header = ["eta", "c", "modes", "mean NFE", "err AdaFlow", "err Euler@mean", "mode dist Ada", "mode dist Euler",
              "var fit t=1", "var exact t=1", "NFE Tweedie", "err Tweedie"]
    out_rows = []
    for eta, res in toy.items():
        for p in res["per_condition"]:
            out_rows.append([eta, p["c"], p["modes"], p["mean_nfe"], p["err_adaflow"], p["err_euler"],
                             p["mode_dist_adaflow"], p["mode_dist_euler"], p["var_fitted_t1"], p["var_exact_t1"],
                             p["mean_nfe_tweedie"], p["err_tweedie"]])
        print(f"eta={eta}: overall mean NFE {res['mean_nfe']:.3g}, Euler with {res['euler_steps']} steps")
    print(table(out_rows, header))
    seconds = time.perf_counter() - t0
    print(f"\n{seconds:.0f} s")
    payload = {
        "settings": {"path": "linear", "n_samples_analytic": N, "etas": list(ETAS), "reference_accuracy": refs,
                     "trained": settings},
        "analytic": rows,
        "trained": {eta: {k: v for k, v in r.items() if k != "samples"} for eta, r in toy.items()},
        "seconds": seconds,
    }
    print(write_json("adaflow.json", payload))
    plot(rows, toy, conds, RESULTS / "adaflow.png")
    print(RESULTS / "adaflow.png")


if __name__ == "__main__":
    main()
