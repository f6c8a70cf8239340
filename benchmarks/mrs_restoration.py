"""MRS fast samplers vs IR-SDE's 100-step Euler-Maruyama on mean-reverting restoration (issue 16, item 3).

Task: denoising scikit-learn's 8x8 digits in ``[-1, 1]``: ``mu = x0 + 0.3 N(0, I)``. Samplers (all start from
``x_T = mu + sigma(t_max) eps``, the stationary law, and end with the library's final step to zero noise):

* ``EM`` -- IR-SDE's own sampler, Euler-Maruyama of the reverse MR-SDE on a uniform grid in ``t``
  (:func:`pfode.mean_reverting.sample_euler_maruyama`); the baseline runs 100 steps, as Luo et al. do;
* the MRS samplers of Li et al. (2024) = pfode's exponential integrators on ``y = x - mu`` on log-SNR grids
  (:data:`pfode.mean_reverting.MRS_SOLVERS`): ``mrs-ode-1`` (DDIM), ``mrs-ode-2-data`` (DPM-Solver++(2M)),
  ``mrs-ode-2-noise`` (DPM-Solver-2, singlestep: odd NFE only), ``mrs-sde-2-data`` (SDE-DPM-Solver++(2M)),
  ``mrs-sde-1-noise`` (SDE-DPM-Solver-1 in noise prediction).

Two models:

A. **exact** (no training): the data law replaced by its Gaussian fit ``N(m, S)`` (64-D, the digits' mean and
   covariance + 1e-3 I). Then ``x0 | mu`` is Gaussian with mean ``m + S (S + 0.09 I)^{-1} (mu - m)`` and covariance
   ``S_post``, and the exact mean-reverting denoiser of ``y = x - mu`` given ``mu`` is closed-form. Restorations are
   posterior samples; their ideal expected MSE is ``2 tr(S_post) / 64`` (two independent posterior draws), the
   MMSE (posterior mean) ``tr(S_post) / 64``. What remains is pure discretization error.
B. **trained**: the model of ``configs/digits_mr_denoise.yaml`` (``--model``, default ``runs/digits_mr``), a
   16-channel UNet on ``cat([x_t, mu])``, eps-prediction, trained on all 1,797 digits with fresh noise per batch.
   Evaluated on ``--n`` digits (seeded subset) with fresh degradation noise (seed 1): the clean images were seen in
   training, the noise realisations were not. ``+clip`` rows clip ``x0_hat`` to the data range ``[-1, 1]``
   (:func:`pfode.mean_reverting.clipped`, DPM-Solver++'s static thresholding): an eps-network's error reaches
   ``x0_hat`` divided by ``alpha(t_max) = 0.005``, which few-step samplers otherwise carry into the result.

Metrics: PSNR in dB for the data range 2 (``10 log10(4 / MSE)``), per image, averaged (its standard error is
printed), and the MSE to the clean images -- the papers' metrics; but a restoration is a *sample* of ``x0 | mu``, and a
sampler that under-disperses (few steps, towards the posterior mean) gains PSNR while losing fidelity to the law.
So each part also has a distributional metric (lower is better): A. the exact conditional W2 between the law of the
sampler's output given ``mu`` and the true posterior (RMS over the test ``mu``; computed exactly, see
:func:`exact_law_w2`); B. the sliced W2 between the set of restorations and the set of clean images. "NFE to match
EM-100": the NFE (on ``3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50`` for the two main samplers, ``5, 10, 20, 50`` for the
others) from which the metric stays at or below EM-100's at every larger NFE, and likewise for PSNR within 0.15 dB
(about two standard errors).

Run: ``.venv/bin/python benchmarks/mrs_restoration.py [--model runs/digits_mr] [--n 500]`` (about 3-5 minutes of
CPU with one thread). Writes ``benchmarks/results/mrs_restoration.{json,png}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, Timer, setup, table, write_json  # noqa: E402

from pfode import data, models  # noqa: E402
from pfode import mean_reverting as mr  # noqa: E402
from pfode.metrics import sliced_w2, w2_gaussian  # noqa: E402
from pfode.predictions import Denoiser  # noqa: E402

NOISE = 0.3
NFES = (5, 10, 20, 50)
FINE = (3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50)
MRS = ("mrs-ode-1", "mrs-ode-2-data", "mrs-ode-2-noise", "mrs-sde-2-data", "mrs-sde-1-noise")
PSNR_TOL = 0.15  # dB, about two standard errors of a mean PSNR over 500 images
MAIN = ("mrs-ode-2-data", "mrs-sde-2-data")  # scanned on FINE for the NFE that matches EM-100
CLIPPED = ("mrs-ode-2-data+clip", "mrs-sde-2-data+clip")  # B. only: x0_hat clipped to [-1, 1] (mean_reverting.clipped)


def psnr(x, x0) -> tuple[float, float, float]:
    """Mean PSNR (dB, range 2), its standard error, and the mean MSE."""
    mse = (x.double() - x0.double()).pow(2).flatten(1).mean(1)
    p = 10 * torch.log10(4.0 / mse)
    return float(p.mean()), float(p.std() / math.sqrt(p.numel())), float(mse.mean())


def nfe_ok(solver: str, nfe: int) -> bool:
    return not solver.startswith("mrs-ode-2-noise") or nfe % 2 == 1


def gaussian_model(x_all: torch.Tensor, path: mr.MeanReverting):
    """The exact mean-reverting denoiser for the Gaussian fit of the data (see A. in the module docs)."""
    f = x_all.flatten(1).double()
    d = f.shape[1]
    m = f.mean(0)
    S = torch.cov(f.T) + 1e-3 * torch.eye(d, dtype=torch.float64)
    K = S @ torch.linalg.inv(S + NOISE**2 * torch.eye(d, dtype=torch.float64))  # posterior gain
    S_post = S - K @ S
    S_post = 0.5 * (S_post + S_post.T)
    ev, Q = torch.linalg.eigh(S_post)
    ev = ev.clamp(min=1e-12)

    def net(y, t, mu=None):
        shape = y.shape
        yf, muf = y.flatten(1).double(), mu.flatten(1).double()
        t = t.double().to(y.device)
        a = path.alpha(t)[:, None]
        s = path.sigma(t)[:, None]
        c = m + (muf - m) @ K.T - muf  # E[y0 | mu] = m_post(mu) - mu
        z = (yf - a * c) @ Q  # y_t - alpha c = alpha (y0 - c) + sigma eps, y0 - c ~ N(0, S_post)
        x0 = c + (a * ev / (a * a * ev + s * s) * z) @ Q.T
        return x0.reshape(shape).to(y.dtype)

    mmse = float(ev.sum() / d)
    return Denoiser(net, path, prediction="x0"), lambda mu: m + (mu.flatten(1).double() - m) @ K.T, mmse, S_post


class _UnitNoise:
    """Measurement device for the exact law (A.): noise ``e_j`` at draw ``k`` in row ``off + k d + j``, else 0."""

    off = 0

    def __init__(self, like, *_):
        self.like, self.k = like, 0

    def __call__(self):
        z = torch.zeros_like(self.like).flatten(1)
        d = z.shape[1]
        rows = self.off + self.k * d + torch.arange(d)
        if int(rows[-1]) < z.shape[0]:
            z[rows, torch.arange(d)] = 1.0
        self.k += 1
        return z.reshape(self.like.shape)


def exact_law_w2(draw, calls: int, mu: torch.Tensor, post_mean, s_post) -> float:
    """RMS over ``mu`` of W2(law of the sampler's output given ``mu``, exact posterior ``N(m_post(mu), S_post)``).

    With the exact Gaussian denoiser every sampler here is affine in ``y_T = x_T - mu``, its noise draws and ``mu``:
    ``x = b(mu) + A y_T + sum_k C_k z_k`` with ``A``, ``C_k`` independent of ``mu``. One batched call of
    ``draw(mu_rows, x_T_rows, noise_class)`` on the rows ``(mu_i, y_T = 0, z = 0)``, ``(mu_0, y_T = e_j)`` and
    ``(mu_0, z_k = e_j)`` gives ``b(mu_i)``, ``A`` and ``C_k``; for ``y_T ~ N(0, sigma_T^2 I)`` the output law is
    ``N(b(mu), sigma_T^2 A A^T + sum_k C_k C_k^T)``. No Monte-Carlo error.
    """
    n, d = mu.shape[0], mu[0].numel()
    rows = n + d + calls * d
    mu_rows = torch.cat([mu, mu[:1].expand(rows - n, *mu.shape[1:])])
    y_T = torch.zeros(rows, d, dtype=torch.float64)
    y_T[n : n + d] = torch.eye(d, dtype=torch.float64)
    noise = type("Noise", (_UnitNoise,), {"off": n + d})
    out = draw(mu_rows, mu_rows + y_T.reshape(mu_rows.shape), noise).flatten(1)
    b = out[:n]
    A = (out[n : n + d] - out[0]).T
    C = (out[n + d :] - out[0]).T
    sT = float(PATH_SIGMA_T[0])
    cov = sT**2 * A @ A.T + C @ C.T
    bures = w2_gaussian(torch.zeros(d, dtype=torch.float64), cov, torch.zeros(d, dtype=torch.float64), s_post)
    mean_err = (b - post_mean(mu)).pow(2).sum(1).mean()
    return math.sqrt(float(mean_err) + bures**2)


PATH_SIGMA_T = [0.0]


def law_suite(den, mu, post_mean, s_post) -> dict:
    """Exact conditional W2 of every sampler (A.); the pfode SDE solvers draw through the patched noise class."""
    sample_module = sys.modules["pfode.sample"]  # the module (``pfode.sample`` is the function)

    out = {"em": {}, "mrs": {s: {} for s in MRS}}
    PATH_SIGMA_T[0] = float(den.path.sigma(den.path.t_max))
    with torch.no_grad():
        for n in (*NFES, 100):

            def em(m, x, noise, n=n):
                return mr.sample_euler_maruyama(den, m, n, x_T=x, noise=noise(m))

            out["em"][n] = exact_law_w2(em, n, mu, post_mean, s_post)
        original = sample_module.PerSampleNoise
        try:
            for s in MRS:
                stochastic = "sde" in s
                for n in sorted(set(NFES) | (set(FINE) if s in MAIN else set())):
                    n_used = n if nfe_ok(s, n) else n + 1

                    def mrs(m, x, noise, s=s, n_used=n_used):
                        sample_module.PerSampleNoise = noise
                        return mr.sample(den, m, solver=s, nfe=n_used, x_T=x)

                    out["mrs"][s][n_used] = exact_law_w2(mrs, n_used - 1 if stochastic else 0, mu, post_mean, s_post)
        finally:
            sample_module.PerSampleNoise = original
    return out


def run_suite(den, x0, mu, seed: int, score=None, samplers=MRS) -> dict:
    """``{"em": {nfe: row}, "mrs": {solver: {nfe: row}}}`` with ``row = [psnr, psnr_se, mse, seconds, score]``."""
    out = {"em": {}, "mrs": {s: {} for s in samplers}}

    def gen():
        return torch.Generator().manual_seed(seed)

    def row(x, seconds):
        return [*psnr(x, x0), seconds, score(x) if score is not None else None]

    with torch.no_grad():
        for n in (*NFES, 100):
            with Timer() as tm:
                x = mr.sample_euler_maruyama(den, mu, n, generator=gen())
            out["em"][n] = row(x, tm.s)
        for s in samplers:
            solver, clip = s.removesuffix("+clip"), ((-1.0, 1.0) if s.endswith("+clip") else None)
            for n in sorted(set(NFES) | (set(FINE) if solver in MAIN else set())):
                n_used = n if nfe_ok(s, n) else n + 1
                with Timer() as tm:
                    x = mr.sample(den, mu, solver=solver, nfe=n_used, generator=gen(), clip=clip)
                out["mrs"][s][n_used] = row(x, tm.s)
    return out


def report(name: str, res: dict, metric: str, extra_rows=()) -> dict:
    """Print the table; return, per MRS sampler, the smallest NFE whose ``metric`` (lower is better) is at most
    EM-100's, and the smallest whose PSNR is at least EM-100's."""
    em100 = res["em"][100]
    fmt = lambda n, v: [n, f"{v[0]:.2f} +- {v[1]:.2f}", f"{v[2]:.4f}", f"{v[4]:.4f}"]  # noqa: E731
    rows = [["EM (IR-SDE)", *fmt(n, v)] for n, v in sorted(res["em"].items())]
    for s in res["mrs"]:
        rows += [[s, *fmt(n, v)] for n, v in sorted(res["mrs"][s].items())]
    rows += list(extra_rows)
    print(f"\n{name}")
    print(table(rows, ["sampler", "NFE", "PSNR (dB)", "MSE", metric]))
    reach = {}
    for s in res["mrs"]:
        r = sorted(res["mrs"][s].items())

        def first_from(ok, r=r):  # the smallest NFE from which ok holds at every larger NFE of the grid
            bad = [k for k, (_, v) in enumerate(r) if not ok(v)]
            k = bad[-1] + 1 if bad else 0
            return r[k][0] if k < len(r) else None

        reach[s] = {
            "metric": first_from(lambda v: v[4] <= em100[4]),
            "psnr": first_from(lambda v: v[0] >= em100[0] - PSNR_TOL),
        }
    print(
        f"EM-100: PSNR {em100[0]:.2f} dB, {metric} {em100[4]:.4f}. NFE from which each MRS sampler stays at or below "
        f"EM-100's {metric} / within {PSNR_TOL} dB of its PSNR: "
        + ", ".join(f"{s} {reach[s]['metric']} / {reach[s]['psnr']}" for s in res["mrs"])
    )
    return reach


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/digits_mr")
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    setup()
    x_all = data.digits()
    idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))[: args.n]
    x0 = x_all[idx]
    mu = mr.degrade(x0, "noise", std=NOISE, generator=torch.Generator().manual_seed(1))
    noisy = psnr(mu, x0)
    out = {"noise_std": NOISE, "n": args.n, "noisy_input_psnr": noisy[0], "row": "psnr, psnr_se, mse, seconds, metric"}

    # A. exact Gaussian model: PSNR of restorations and the exact conditional W2 to the posterior
    model = models.load(args.model) if Path(args.model).exists() else None
    path = model.denoiser.path if model is not None else mr.MeanReverting(stationary_std=0.5)
    den_g, post_mean, mmse, s_post = gaussian_model(x_all, path)
    x0d, mud = x0.double(), mu.double()
    with Timer() as tm:
        res_a = run_suite(den_g, x0d, mud, seed=2)
        law = law_suite(den_g, mud, post_mean, s_post)
    res_a["em"] = {n: v[:4] + [law["em"][n]] for n, v in res_a["em"].items()}
    res_a["mrs"] = {s: {n: v[:4] + [law["mrs"][s][n]] for n, v in r.items()} for s, r in res_a["mrs"].items()}
    pm = psnr(post_mean(mud).reshape(x0.shape), x0d)
    ideal = 10 * math.log10(4.0 / (2 * mmse))
    reach_a = report(
        f"A. exact Gaussian model (float64, {tm.s:.0f} s): PSNR, MSE to the clean digits, exact conditional W2 to the "
        "posterior",
        res_a,
        "W2 to posterior",
        [
            ["posterior mean (MMSE)", "-", f"{pm[0]:.2f}", f"{pm[2]:.4f}", "-"],
            ["ideal posterior sample (2 tr S_post / d)", "-", f"{ideal:.2f}", f"{2 * mmse:.4f}", "0"],
            ["noisy input mu", "-", f"{noisy[0]:.2f}", f"{noisy[2]:.4f}", "-"],
        ],
    )
    out["exact"] = {"results": res_a, "reach_em100": reach_a, "posterior_mean_psnr": pm[0]}
    out["exact"]["ideal_sample_mse"] = 2 * mmse

    # B. trained model: PSNR, MSE and the sliced W2 between the restorations and the clean images (as sets)
    ex = None
    if model is None:
        print(f"\n{args.model} not found: `pfode train configs/digits_mr_denoise.yaml --out {args.model}` trains it")
    else:
        den = model.denoiser

        def sw2(x):
            return float(sliced_w2(x.flatten(1), x0.flatten(1), generator=torch.Generator().manual_seed(0)))

        with Timer() as tm:
            res_b = run_suite(den, x0, mu, seed=3, score=sw2, samplers=MRS + CLIPPED)
        floor = sw2(x_all[torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(9))[: args.n]])
        reach_b = report(
            f"B. trained model {args.model} ({tm.s:.0f} s): PSNR, MSE to the clean digits, sliced W2 of the set of "
            "restorations to the clean set",
            res_b,
            "sliced W2",
            [
                ["noisy input mu", "-", f"{noisy[0]:.2f}", f"{noisy[2]:.4f}", f"{sw2(mu):.4f}"],
                ["other clean digits (floor)", "-", "-", "-", f"{floor:.4f}"],
            ],
        )
        out["trained"] = {"model": args.model, "results": res_b, "reach_em100": reach_b, "sliced_w2_floor": floor}
        with torch.no_grad():
            g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
            k = 10
            ex = {
                "clean": x0[:k],
                "noisy mu": mu[:k],
                "EM 100 NFE": mr.sample_euler_maruyama(den, mu[:k], 100, generator=g()),
                "EM 10 NFE": mr.sample_euler_maruyama(den, mu[:k], 10, generator=g()),
                "MRS-ODE-2 (data) 10 NFE": mr.sample(den, mu[:k], solver="mrs-ode-2-data", nfe=10, generator=g()),
                "MRS-SDE-2 (data) 10 NFE": mr.sample(den, mu[:k], solver="mrs-sde-2-data", nfe=10, generator=g()),
                "MRS-SDE-2 + clip 10 NFE": mr.sample(
                    den, mu[:k], solver="mrs-sde-2-data", nfe=10, generator=g(), clip=(-1.0, 1.0)
                ),
            }
    write_json("mrs_restoration.json", out)
    plot(out, ex)


def plot(out, examples):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("exact", "A. exact Gaussian model", "W2 to the exact posterior")]
    if "trained" in out:
        parts.append(("trained", "B. trained UNet", "sliced W2 to the clean set"))
    ncol = len(parts) + (1 if examples else 0)
    fig, axes = plt.subplots(2, ncol, figsize=(5 * ncol, 7.5), squeeze=False)
    for j, (key, title, metric) in enumerate(parts):
        res = out[key]["results"]
        for k, (col, ylabel, scale) in enumerate(((0, "PSNR (dB)", "linear"), (4, metric, "log"))):
            ax = axes[k, j]
            em = sorted(res["em"].items())
            ax.plot([n for n, _ in em], [v[col] for _, v in em], "k.-", label="EM (IR-SDE)")
            ax.axhline(res["em"][100][col], color="k", ls="--", lw=1, label="EM, 100 NFE")
            for s in res["mrs"]:
                r = sorted(res["mrs"][s].items())
                ax.plot([n for n, _ in r], [v[col] for _, v in r], "o-", ms=3, label=s)
            if col == 0:
                ax.axhline(out["noisy_input_psnr"], color="gray", ls=":", lw=1, label="noisy input")
                ax.set_ylim(min(out["noisy_input_psnr"], res["em"][100][0]) - 2, None)
            else:
                ax.set_ylim(max(1e-3, 0.3 * min(v[4] for r in res["mrs"].values() for v in r.values())), 3.0)
            ax.set(xscale="log", yscale=scale, xlabel="NFE", ylabel=ylabel, title=title if k == 0 else None)
            ax.legend(fontsize=6)
    if examples:
        k = next(iter(examples.values())).shape[0]
        gs = axes[0, -1].get_gridspec()
        for ax in axes[:, -1]:
            ax.remove()
        sub = fig.add_subplot(gs[:, -1])
        rows = [torch.cat([im[i, 0].clamp(-1, 1) for i in range(k)], dim=1) for im in examples.values()]
        sub.imshow(torch.cat(rows, dim=0).numpy(), cmap="gray", vmin=-1, vmax=1)
        sub.set_yticks([8 * i + 3.5 for i in range(len(examples))], list(examples), fontsize=7)
        sub.set_xticks([])
        sub.set_title("trained model: before / after")
    fig.tight_layout()
    fig.savefig(RESULTS / "mrs_restoration.png", dpi=120)
    print(f"wrote {RESULTS / 'mrs_restoration.json'} and mrs_restoration.png")


if __name__ == "__main__":
    main()
