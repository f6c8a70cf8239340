"""Tuned few-step samplers (``pfode.tune``) vs the best untuned pfode solver on the shipped digits model.

Model: ``builtin:digits`` (8x8 digits, small UNet, eps-prediction on the cosine VP path), float32, noise
``x_T = sigma(t_max) * randn`` as the command line draws it. For each NFE (default 4, 6, 8, 10; the final
denoising evaluation included, as ``recipe.nfe`` counts it):

* ``tuned``: ``pfode.tune(den, nfe, shape=(1, 8, 8), family="usf", teacher="dopri5", teacher_tol=1e-5)``
  (times + per-step rules + analytic Gaussian skip, skip moments from the model's own samples) with a
  REDUCED search -- ``n=64, held_out=32, budget=200, rounds=1`` instead of tune's defaults (128 / 64 / 1000 / 2)
  -- so that one call takes a few minutes on one CPU thread (``--n/--held-out/--budget/--rounds`` change it);
* ``untuned best``: the best of dpm++2m, unipc, deis and ipndm over the spacings logsnr, karras, uniform and
  quadratic at that NFE, chosen by metric 1 ON THE EVALUATION SET ITSELF (an oracle choice that favours the
  baseline); tune's own ``untuned_best`` (chosen on its tuning set, dpm++3m included) is reported as well.

Metric 1 ("distance"): mean over 256 evaluation noises (generator seed 12345; tune draws with seed 0) of the
per-sample RMSE to a 200-NFE reference (unipc, logsnr spacing); the reference is checked against dopri5
(rtol = atol = 1e-5) on the first ``n + held_out`` evaluation noises, whose run also times tune's teacher.

Metric 2 ("FD-digits", as ``train_digits.py``): Frechet distance, in the 64-d penultimate features of a small
CNN digits classifier, between 899 samples (noise seed 54321) and the real half B of the digits; rows for the
200-NFE reference and for the real half A (the floor at this sample size) are included.

Run: ``.venv/bin/python benchmarks/tuned_digits.py [--quick] [--nfes 4,6,8,10] [--n 64] [--held-out 32]
[--budget 200] [--rounds 1]``; about 30-40 minutes on one shared core. ``--quick`` (NFE 4 only, n=16,
held_out=8, budget=30, 64 evaluation and 200 FD samples, 5 classifier epochs) is a smoke test. Writes
``benchmarks/results/tuned_digits[_quick].{json,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402
from train_digits import fd, features, train_classifier  # noqa: E402

import pfode  # noqa: E402
from pfode.cli.common import resolve_model  # noqa: E402
from pfode.data import digits  # noqa: E402
from pfode.plots import _figure, image_grid, save_figure  # noqa: E402
from pfode.solvers.base import get  # noqa: E402

SOLVERS = ("dpm++2m", "unipc", "deis", "ipndm")
SPACINGS = ("logsnr", "karras", "uniform", "quadratic")
REF = dict(solver="unipc", nfe=200, spacing="logsnr")
TUNE_SEED, EVAL_SEED, FD_SEED = 0, 12345, 54321
CHUNK = 512


def noise(m, n: int, seed: int) -> torch.Tensor:
    path = m.denoiser.path
    z = torch.randn((n, *m.data_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64))) * z).to(m.dtype)


def run(den, x: torch.Tensor, *args, nfe_expected: int | None = None, **kw) -> torch.Tensor:
    """Sample in chunks; check the evaluations spent when ``nfe_expected`` is given."""
    outs = []
    with torch.no_grad():
        for k in range(0, x.shape[0], CHUNK):
            o = pfode.sample(den, x[k : k + CHUNK], *args, return_info=True, **kw)
            if nfe_expected is not None and o.nfe != nfe_expected:
                raise RuntimeError(f"spent {o.nfe} evaluations, expected {nfe_expected}")
            outs.append(o.x)
    return torch.cat(outs)


def dist(x: torch.Tensor, ref: torch.Tensor) -> float:
    d = (x - ref).reshape(x.shape[0], -1).to(torch.float64)
    return float(d.pow(2).mean(1).sqrt().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nfes", default=None, help="comma-separated NFEs (default 4,6,8,10; quick: 4)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--held-out", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--eval-n", type=int, default=None)
    ap.add_argument("--fd-n", type=int, default=None, help="FD samples (default: the size of real half B)")
    ap.add_argument("--teacher", default="dopri5", help="dopri5, or a fixed-step solver run with --teacher-nfe")
    ap.add_argument("--teacher-nfe", type=int, default=100)
    ap.add_argument("--teacher-tol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    q = args.quick
    nfes = [int(v) for v in (args.nfes or ("4" if q else "4,6,8,10")).split(",")]
    search = dict(
        n=args.n or (16 if q else 64),
        held_out=args.held_out or (8 if q else 32),
        budget=args.budget or (30 if q else 200),
        rounds=args.rounds,
    )
    eval_n = args.eval_n or (64 if q else 256)
    setup(1)
    t_all = time.perf_counter()

    m = resolve_model("builtin:digits", None)
    den, path = m.denoiser, m.denoiser.path
    t_ends = torch.tensor([path.t_max, path.t_min], dtype=torch.float64)

    # -- metric 1: the evaluation noises, the 200-NFE reference, its check against dopri5 --------------------------
    x_ev = noise(m, eval_n, EVAL_SEED)
    t0 = time.perf_counter()
    ref_ev = run(den, x_ev, nfe_expected=REF["nfe"], **REF)
    ref_s = time.perf_counter() - t0
    n_chk = min(eval_n, search["n"] + search["held_out"])
    t0 = time.perf_counter()
    with torch.no_grad():
        o = pfode.sample(den, x_ev[:n_chk], t_ends, get("dopri5", rtol=1e-5, atol=1e-5), return_info=True)
    dopri_s = time.perf_counter() - t0
    ref_vs_dopri = dist(ref_ev[:n_chk], o.x)
    print(
        f"reference unipc 200 NFE on {eval_n} noises: {ref_s:.0f}s; vs dopri5 (tol 1e-5) on {n_chk} noises: "
        f"RMSE {ref_vs_dopri:.2e} (dopri5: {o.nfe} NFE, {dopri_s:.0f}s -- tune's teacher cost at this batch)",
        flush=True,
    )

    # -- metric 2: classifier features, real halves, FD noises and the reference's FD --------------------------------
    xd, yd = digits(return_labels=True)
    nd = xd.shape[0]
    t0 = time.perf_counter()
    clf, acc = train_classifier(xd, yd, epochs=5 if q else 40)
    clf_s = time.perf_counter() - t0
    f_all = features(clf, xd)
    perm = torch.randperm(nd, generator=torch.Generator().manual_seed(0))
    f_ref = f_all[perm[nd // 2 :]]  # half B
    fd_floor = fd(f_all[perm[: nd // 2]], f_ref)
    fd_n = args.fd_n or (200 if q else f_ref.shape[0])
    x_fd = noise(m, fd_n, FD_SEED)
    t0 = time.perf_counter()
    ref_fd_samples = run(den, x_fd, nfe_expected=REF["nfe"], **REF)
    fd_ref = fd(features(clf, ref_fd_samples), f_ref)
    print(
        f"classifier acc {acc:.3f} ({clf_s:.0f}s); FD real half A {fd_floor:.4g}; FD reference (unipc 200, "
        f"{fd_n} samples) {fd_ref:.4g} ({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )

    def fd_of(*a, **kw):
        s = run(den, x_fd, *a, **kw)
        return fd(features(clf, s), f_ref), s

    tkw = dict(teacher=args.teacher, teacher_tol=args.teacher_tol)
    if args.teacher != "dopri5":
        tkw["teacher_nfe"] = args.teacher_nfe

    # -- per NFE --------------------------------------------------------------------------------------------------
    results, rows, pics = [], [], {}
    for nfe in nfes:
        grid_d = {}
        for s in SOLVERS:
            for sp in SPACINGS:
                try:
                    grid_d[f"{s}/{sp}"] = dist(run(den, x_ev, solver=s, nfe=nfe, spacing=sp, nfe_expected=nfe), ref_ev)
                except ValueError as e:
                    grid_d[f"{s}/{sp}"] = f"error: {e}"
        ok = {k: v for k, v in grid_d.items() if isinstance(v, float)}
        best_key = min(ok, key=ok.get)
        b_solver, b_spacing = best_key.split("/")
        fd_untuned, s_untuned = fd_of(solver=b_solver, nfe=nfe, spacing=b_spacing, nfe_expected=nfe)

        t0 = time.perf_counter()
        recipe = pfode.tune(den, nfe, shape=m.data_shape, seed=TUNE_SEED, family="usf", dtype=m.dtype, **search, **tkw)
        tune_s = time.perf_counter() - t0
        assert recipe.nfe == nfe, (recipe.nfe, nfe)
        d_tuned = dist(run(den, x_ev, recipe, nfe_expected=nfe), ref_ev)
        fd_tuned, s_tuned = fd_of(recipe, nfe_expected=nfe)

        ub = dict(recipe.meta.get("untuned_best") or {})
        if ub:
            ub["eval_distance"] = dist(run(den, x_ev, solver=ub["solver"], nfe=nfe, spacing=ub["spacing"]), ref_ev)
            ub["eval_fd"] = fd_of(solver=ub["solver"], nfe=nfe, spacing=ub["spacing"])[0]
        d_untuned = ok[best_key]
        res = {
            "nfe": nfe,
            "untuned_grid_distance": grid_d,
            "untuned_best": {"solver": b_solver, "spacing": b_spacing, "distance": d_untuned, "fd": fd_untuned},
            "tune_untuned_best": ub,
            "tuned": {"distance": d_tuned, "fd": fd_tuned, "seconds": tune_s, "recipe": recipe.to_dict()},
            "ratio_distance": d_tuned / d_untuned,
        }
        results.append(res)
        rows.append([nfe, best_key, d_untuned, d_tuned, d_tuned / d_untuned, fd_untuned, fd_tuned, tune_s])
        pics[nfe] = (s_untuned, s_tuned, best_key)
        meta = recipe.meta
        print(
            f"NFE {nfe}: untuned best {best_key} dist {d_untuned:.4g} FD {fd_untuned:.4g} | tuned dist {d_tuned:.4g} "
            f"FD {fd_tuned:.4g} ({tune_s:.0f}s, {meta['sampler_runs']} runs, train {meta['train_error']:.4g}, "
            f"held-out {meta['held_out_error']:.4g}) | tune's untuned_best "
            f"{ub.get('solver')}/{ub.get('spacing')} held-out {ub.get('held_out_error', float('nan')):.4g} "
            f"eval {ub.get('eval_distance', float('nan')):.4g}",
            flush=True,
        )

    header = ["NFE", "untuned best", "untuned dist", "tuned dist", "ratio", "untuned FD", "tuned FD", "tune s"]
    print(table(rows, header))
    print(f"FD floor (real half A) {fd_floor:.4g}; FD reference (unipc 200 NFE) {fd_ref:.4g}")

    # -- figure ---------------------------------------------------------------------------------------------------
    suffix = "_quick" if q else ""
    ns = [r["nfe"] for r in results]
    fig = _figure(12.0, 9.0)
    gs = fig.add_gridspec(2, 6)
    ax1, ax2 = fig.add_subplot(gs[0, :3]), fig.add_subplot(gs[0, 3:])
    ax1.plot(ns, [r["untuned_best"]["distance"] for r in results], "o-", label="untuned best (oracle choice)")
    ax1.plot(ns, [r["tuned"]["distance"] for r in results], "s-", label="tuned (pfode.tune, usf)")
    ax1.set(xlabel="NFE", ylabel="mean RMSE to unipc 200 NFE", yscale="log", title="distance to the reference")
    ax2.plot(ns, [r["untuned_best"]["fd"] for r in results], "o-", label="untuned best")
    ax2.plot(ns, [r["tuned"]["fd"] for r in results], "s-", label="tuned")
    ax2.axhline(fd_ref, color="gray", ls="--", label="unipc 200 NFE")
    ax2.axhline(fd_floor, color="k", ls=":", label="real half A (floor)")
    ax2.set(xlabel="NFE", ylabel="FD-digits vs real half B", yscale="log", title="FD-digits")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    n0 = ns[0]
    s_u, s_t, bk = pics[n0]
    panels = [
        (f"untuned best {bk}, NFE {n0}", s_u[:36]),
        (f"tuned, NFE {n0}", s_t[:36]),
        ("unipc 200 NFE", ref_fd_samples[:36]),
    ]
    for j, (title, imgs) in enumerate(panels):
        ax = fig.add_subplot(gs[1, 2 * j : 2 * j + 2])
        ax.imshow(image_grid(imgs, ncol=6)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    png = save_figure(fig, RESULTS / f"tuned_digits{suffix}.png")

    p = write_json(
        f"tuned_digits{suffix}.json",
        {
            "model": "builtin:digits",
            "path": path.spec(),
            "quick": q,
            "nfes": nfes,
            "search": {**search, "family": "usf", "seed": TUNE_SEED, **tkw},
            "note": "untuned best is chosen by the distance on the evaluation set itself (favours the baseline); "
            "the search is reduced from tune's defaults (n=128, held_out=64, budget=1000, rounds=2)",
            "reference": {**REF, "seconds": ref_s, "rmse_vs_dopri5_tol1e-5": ref_vs_dopri, "check_samples": n_chk,
                          "dopri5_nfe": o.nfe, "dopri5_seconds": dopri_s},
            "eval": {"n": eval_n, "seed": EVAL_SEED, "metric": "mean over samples of per-sample RMSE"},
            "fd": {"n": fd_n, "seed": FD_SEED, "classifier_test_accuracy": acc, "floor_real_half_A": fd_floor,
                   "reference_unipc200": fd_ref},
            "untuned_solvers": SOLVERS,
            "untuned_spacings": SPACINGS,
            "results": results,
            "table": {"header": header, "rows": rows},
            "plot": png.name,
            "total_s": time.perf_counter() - t_all,
        },
    )
    print(f"wrote {p} and {png} (total {time.perf_counter() - t_all:.0f}s)")


if __name__ == "__main__":
    main()
