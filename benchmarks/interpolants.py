"""Stochastic interpolants between two distributions: exact and learned fields, ODE and SDE transport (issue 16).

Setup (Albergo, Boffi & Vanden-Eijnden, 2023). Interpolant ``x_t = (1 - t) x_data + t x_src + sqrt(t (1 - t)) z``
(``pfode.interpolants.LinearInterpolant("sqrt")``), independent coupling.

1. Analytic GMM -> GMM in d = 2 (3 data components, 2 source components) and d = 8 (4 and 3), stds 0.3-0.8:
   the exact velocity ``b`` and score ``s`` come from ``pfode.analytic.GMMBridge``. A pair of MLPs (velocity and
   denoiser ``eta_z``, width 128, depth 3) is trained with ``pfode.interpolants.InterpolantObjective(field="both")``.
   Reported: relative L2 error ``|f_learned - f_exact| / |f_exact|`` of ``b`` and of ``s = -eta_z / gamma`` on
   samples of ``x_t`` with ``t ~ U[0.05, 0.95]``; exact W2 (``pfode.metrics.w2_samples``, POT) between
   ``N_EVAL`` transported source samples and ``N_EVAL`` exact data samples, against NFE (2..32) for the ODE
   (euler, heun, rk4) and for the SDE (``eps`` = 0.1, 0.5, 1; additive-noise Heun, ``eps(t) = eps`` where
   ``gamma(t) > 0``), with the exact and the learned fields. ``floor``: W2 between two independent exact sample
   sets of the same size (the value a perfect sampler would show).
2. 2-D toys moons -> checkerboard (``pfode.data.toy2d``; checkerboard is the data, moons the source), velocity
   only, ``gamma = 0`` (linear interpolant) with independent and minibatch-OT couplings; W2 of the transported
   moons against fresh checkerboard samples vs the two-sample floor.

Run: ``python benchmarks/interpolants.py`` (``--quick`` for a smoke run); writes
``benchmarks/results/interpolants.{json,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

from pfode import analytic  # noqa: E402
from pfode import interpolants as I  # noqa: E402
from pfode.data import toy2d  # noqa: E402
from pfode.metrics import w2_samples  # noqa: E402
from pfode.nets import MLP  # noqa: E402

F64 = torch.float64
NFES = (2, 4, 8, 16, 32)
EPSS = (0.1, 0.5, 1.0)
COST = {"euler": 1, "heun": 2, "rk4": 4}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def train(obj, d, iterations, sample_data, width=128, depth=3, batch=256, lr=2e-3, seed=0):
    """Plain Adam with cosine decay on the objective's loss; returns the trained InterpolantModel."""
    torch.manual_seed(seed)
    model = obj.wrap(MLP((d,), width=width, depth=depth, time_scale=1.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr * 0.05)
    g = gen(seed + 1)
    for _ in range(iterations):
        loss, _ = obj.loss(model, obj.prepare(sample_data(batch, g), g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def w2(x, y):
    return w2_samples(x.double(), y.double())


def gmm_case(d, k_data, k_src, iterations, n_eval, seed):
    data = analytic.GaussianMixture.random(d, k_data, std_range=(0.3, 0.8), generator=gen(seed))
    src = analytic.GaussianMixture.random(d, k_src, std_range=(0.3, 0.8), generator=gen(seed + 1))
    interp = I.LinearInterpolant("sqrt")
    br = analytic.GMMBridge(data, src, interp)
    obj = I.InterpolantObjective(interp, field="both", source=lambda n, g: src.sample(n, g).float())
    t0 = time.perf_counter()
    model = train(obj, d, iterations, lambda n, g: data.sample(n, g).float(), seed=seed)
    train_s = time.perf_counter() - t0
    # field errors on samples of x_t
    tt = 0.05 + 0.9 * torch.rand(4000, generator=gen(seed + 2), dtype=F64)
    x_t = br.sample(4000, t=tt, generator=gen(seed + 3))[0]
    with torch.no_grad():
        vb, ve = model.velocity(x_t.float(), tt).double(), br.velocity(x_t, tt)
        sb, se = model.score(x_t.float(), tt).double(), br.score(x_t, tt)
    err_b = float((vb - ve).norm() / ve.norm())
    err_s = float((sb - se).norm() / se.norm())
    x1 = src.sample(n_eval, gen(seed + 4))
    ref = data.sample(n_eval, gen(seed + 5))
    floor = w2(data.sample(n_eval, gen(seed + 6)), ref)
    rows = []
    for field, m in (("exact", br), ("learned", model)):
        xin = x1 if field == "exact" else x1.float()
        for solver in ("euler", "heun", "rk4"):
            for nfe in NFES:
                if nfe % COST[solver]:
                    continue
                out = I.transport(m, xin, nfe=nfe, solver=solver)
                rows.append({"d": d, "field": field, "solver": solver, "eps": 0.0, "nfe": nfe, "w2": w2(out, ref)})
        for eps in EPSS:
            for nfe in NFES:
                out = I.transport(m, xin, nfe=nfe, solver="heun", eps=eps, generator=gen(seed + 7))
                rows.append({"d": d, "field": field, "solver": "heun-sde", "eps": eps, "nfe": nfe, "w2": w2(out, ref)})
    return {
        "d": d,
        "k_data": k_data,
        "k_src": k_src,
        "iterations": iterations,
        "train_s": train_s,
        "rel_err_velocity": err_b,
        "rel_err_score": err_s,
        "floor": floor,
        "rows": rows,
    }


def toy_case(coupling, iterations, n_eval, nfe=16):
    data = toy2d("checkerboard", 40000, seed=0)
    obj = I.InterpolantObjective("linear", field="velocity", coupling=coupling, source="moons")

    def sample_data(n, g):
        return data[torch.randint(0, data.shape[0], (n,), generator=g)]

    t0 = time.perf_counter()
    model = train(obj, 2, iterations, sample_data, seed=3)
    train_s = time.perf_counter() - t0
    x1 = toy2d("moons", n_eval, seed=11)
    ref = toy2d("checkerboard", n_eval, seed=12)
    floor = w2(toy2d("checkerboard", n_eval, seed=13), ref)
    out = {"coupling": coupling, "iterations": iterations, "train_s": train_s, "floor": floor, "w2_source": w2(x1, ref)}
    for solver in ("euler", "heun", "rk4"):
        out[f"w2_{solver}_nfe{nfe}"] = w2(I.transport(model, x1, nfe=nfe, solver=solver), ref)
    out["samples"] = I.transport(model, x1[:1000], nfe=nfe, solver="rk4").tolist()
    return out


def plot(res, fname):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = res["gmm"]
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(5 * (len(cases) + 1), 4))
    for ax, c in zip(axes, cases):
        for field, ls in (("exact", "-"), ("learned", "--")):
            for solver in ("euler", "heun", "rk4"):
                r = [x for x in c["rows"] if x["field"] == field and x["solver"] == solver]
                ax.plot([x["nfe"] for x in r], [x["w2"] for x in r], ls, marker="o", label=f"{field} {solver}")
            for eps in EPSS:
                r = [x for x in c["rows"] if x["field"] == field and x["eps"] == eps]
                ax.plot([x["nfe"] for x in r], [x["w2"] for x in r], ls, marker="x", label=f"{field} sde eps={eps}")
        ax.axhline(c["floor"], color="k", lw=0.8, label="two-sample floor")
        ax.set(
            xscale="log", yscale="log", xlabel="NFE", ylabel="W2 to exact data samples", title=f"GMM->GMM d={c['d']}"
        )
        ax.legend(fontsize=6)
    ax = axes[-1]
    ref = toy2d("checkerboard", 2000, seed=12)
    ax.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgray", label="checkerboard")
    for t, col in zip(res["toys"], ("C0", "C3")):
        s = torch.tensor(t["samples"])
        ax.scatter(s[:, 0], s[:, 1], s=2, c=col, label=f"moons -> ({t['coupling']})")
    ax.set(title="moons -> checkerboard (rk4, 16 NFE)", aspect="equal")
    ax.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(fname, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = ap.parse_args()
    setup(1)
    q = args.quick
    it_gmm, it_toy, n_eval = (100, 100, 300) if q else (600, 800, 1000)
    t0 = time.perf_counter()
    gmm = [gmm_case(2, 3, 2, it_gmm, n_eval, seed=1), gmm_case(8, 4, 3, it_gmm, n_eval, seed=10)]
    toys = [toy_case(c, it_toy, n_eval) for c in ("independent", "minibatch-ot")]
    res = {"gmm": gmm, "toys": toys, "total_s": time.perf_counter() - t0}
    for c in gmm:
        print(
            f"\nGMM -> GMM d={c['d']}: trained {c['iterations']} its in {c['train_s']:.0f}s; relative L2 error "
            f"velocity {c['rel_err_velocity']:.3f}, score {c['rel_err_score']:.3f}; W2 floor {c['floor']:.3f}"
        )
        for field in ("exact", "learned"):
            rows = []
            for key in ("euler", "heun", "rk4", *(f"sde eps={e}" for e in EPSS)):
                if key.startswith("sde"):
                    e = float(key.split("=")[1])
                    r = {x["nfe"]: x["w2"] for x in c["rows"] if x["field"] == field and x["eps"] == e}
                else:
                    r = {x["nfe"]: x["w2"] for x in c["rows"] if x["field"] == field and x["solver"] == key}
                rows.append([f"{field} {key}"] + [r.get(n, "-") for n in NFES])
            print(table(rows, ["W2 vs NFE"] + [str(n) for n in NFES]))
    print("\nmoons -> checkerboard (velocity only, gamma = 0, 16 NFE)")
    keys = ["w2_source", "w2_euler_nfe16", "w2_heun_nfe16", "w2_rk4_nfe16", "floor"]
    print(table([[t["coupling"], t["iterations"]] + [t[k] for k in keys] for t in toys], ["coupling", "its", *keys]))
    print(f"\ntotal {res['total_s']:.0f}s")
    name = "interpolants_quick" if q else "interpolants"
    p = write_json(f"{name}.json", {"results": res})
    plot(res, RESULTS / f"{name}.png")
    print(f"wrote {p} and {p.with_suffix('.png')}")


if __name__ == "__main__":
    main()
