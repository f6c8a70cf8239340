"""PFODEScheduler as a drop-in for diffusers schedulers: agreement with each one it replaces; gain of pfode grids.

Part 1, agreement. For each diffusers scheduler that PFODEScheduler can stand in for, run the pipeline loop
(``latents * init_noise_sigma``, ``scale_model_input``, model, ``step``) with the diffusers scheduler and with
``PFODEScheduler.from_config(scheduler.config, solver=<the same algorithm>)`` on the same model and the same
starting noise (and the same generator for stochastic DDPM), at a few step counts. The model is tamed: the exact
noise prediction of Gaussian data (``pfode.analytic.Gaussian``, full covariance, 4x4x4 "latents") at the
timestep the loop passes, plus ``1e-2 tanh(W x)``; outputs are unsaturated and depend on every step. Printed:
whether the timesteps are identical (values and dtype), and the max abs / relative difference of the outputs.
Rows marked ``approx`` are schedulers whose algorithm pfode has only approximately (a different final step or
coefficients); ``refused`` rows are grids PFODEScheduler refuses with an error.

Part 2, opting in to a pfode grid. The same drop-in with the source scheduler's timesteps vs ``spacing="logsnr"``
(and ``"karras"``), on the exact Gaussian model (no extra term), error = mean per-sample RMSE to the exact
probability-flow endpoint (``Gaussian.flow_map``, closed form) from the same ``x`` at ``t = 1``, at a few NFE.

Run: ``python benchmarks/agree_diffusers.py [--quick]``; writes ``benchmarks/results/agree_diffusers.{json,png}``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import pfode  # noqa: F401  (registers solvers)
from pfode.analytic import Gaussian
from pfode.integrations import diffusers as pfd

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (4, 4, 4)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _target(seed: int = 0) -> Gaussian:
    d = int(np.prod(SHAPE))
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    evals = torch.exp(torch.empty(d, dtype=torch.float64).uniform_(math.log(0.05**2), 0.0, generator=gen))
    mean = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    return Gaussian(mean, q @ torch.diag(evals) @ q.T)


class Model:
    """The diffusers-facing model of ``config``: the target's exact prediction at the timestep it is given
    (``PathSpec.t_of_timestep``), in the config's prediction type, plus ``extra * tanh(W x)`` on channels."""

    def __init__(self, config, target: Gaussian, extra: float = 1e-2):
        self.spec = pfd.path_from_config(config, learned_variance="drop")
        self.target, self.extra = target, extra
        self.w = torch.randn(SHAPE[0], SHAPE[0], generator=torch.Generator().manual_seed(7)) / 2
        self.calls = 0

    def __call__(self, x, timestep):
        self.calls += 1
        t = float(self.spec.t_of_timestep(torch.as_tensor(timestep).double().flatten()[0]))
        path = self.spec.path
        a, s = float(path.alpha(t)), float(path.sigma(t))
        xd = x.double()
        x0, eps = self.target.x0_eps(xd, t, path)
        if self.extra:  # on eps (VP: alpha can be tiny), on x0 (flow matching: alpha = 0 at sigma = 1)
            term = self.extra * torch.tanh(torch.einsum("ij,bj...->bi...", self.w.double(), xd))
            if self.spec.family == "flow":
                x0 = x0 + term
                eps = (xd - a * x0) / s
            else:
                eps = eps + term
                x0 = (xd - s * eps) / a
        pred = self.spec.prediction
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": eps - x0}[pred]
        return out.to(x.dtype)


def run_loop(sched, model, steps, x, seed=None, **kw):
    """The pipeline loop; returns the final sample."""
    sched.set_timesteps(steps, **kw)
    x = x * float(getattr(sched, "init_noise_sigma", 1.0))
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        kwargs = {"generator": gen} if (gen is not None and takes_gen) else {}
        x = sched.step(model(inp, t), t, x, **kwargs).prev_sample
    return x


def _cases():
    import diffusers as d

    c = []

    def add(label, sched, solver, options=None, note="", stochastic=False):
        c.append(dict(label=label, sched=sched, solver=solver, options=options or {}, note=note, stochastic=stochastic))

    add("DDPM", d.DDPMScheduler(clip_sample=False), "ddpm", stochastic=True)
    add("DDIM leading (SD config)", d.DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=False, clip_sample=False),
        "ddim")
    add("DDIM trailing", d.DDIMScheduler(timestep_spacing="trailing", clip_sample=False), "ddim")
    add("DDIM linspace (steps to t - N//n)", d.DDIMScheduler(timestep_spacing="linspace", clip_sample=False), "ddim")
    add("DPM++2M", d.DPMSolverMultistepScheduler(), "dpm++2m")
    add("DPM++2M karras v-pred", d.DPMSolverMultistepScheduler(use_karras_sigmas=True, prediction_type="v_prediction"),
        "dpm++2m")
    add("DPM++2M zero-SNR trailing v-pred", d.DPMSolverMultistepScheduler(
        **SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"), "dpm++2m")
    add("DPM++3M", d.DPMSolverMultistepScheduler(solver_order=3), "dpm++3m", note="approx: other 3M coefficients")
    add("UniPC bh2", d.UniPCMultistepScheduler(), "unipc")
    add("UniPC karras", d.UniPCMultistepScheduler(use_karras_sigmas=True), "unipc")
    add("DEIS order 2", d.DEISMultistepScheduler(), "deis", {"order": 2, "variable": "lam"})
    add("Euler", d.EulerDiscreteScheduler(), "euler")
    add("Euler leading (SD config)", d.EulerDiscreteScheduler(**SD, timestep_spacing="leading", steps_offset=1),
        "euler")
    add("Euler karras", d.EulerDiscreteScheduler(use_karras_sigmas=True), "euler")
    add("Heun", d.HeunDiscreteScheduler(), "heun")
    add("LMS", d.LMSDiscreteScheduler(), "ipndm", {"order": 4},
        note="approx: LMS's last step to sigma 0 is 4th order, pfode's is the denoising step")
    add("DPM++2S singlestep", d.DPMSolverSinglestepScheduler(), "dpm++2s",
        note="approx: other algorithm (pfode's 2S has its own midpoints); same timesteps")
    add("PNDM (SD config)", d.PNDMScheduler(**SD, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        "ipndm", note="approx: PNDM's pseudo-numerical steps are not pfode's; repeated warm-up timestep collapsed")
    add("KDPM2", d.KDPM2DiscreteScheduler(), "midpoint", note="refused")
    add("FlowMatchEuler shift 3", d.FlowMatchEulerDiscreteScheduler(shift=3.0), "euler", {"variable": "t"})
    add("FlowMatchEuler dynamic (mu=0.8)", d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "euler",
        {"variable": "t"})
    add("FlowMatchHeun shift 3", d.FlowMatchHeunDiscreteScheduler(shift=3.0), "heun", {"variable": "t"})
    return c


def agreement(steps_list, n_samples: int, target: Gaussian):
    rows = []
    x = torch.randn(n_samples, *SHAPE, generator=torch.Generator().manual_seed(1))
    for case in _cases():
        ref = case["sched"]
        cfg = ref.config
        kw = {"mu": 0.8} if cfg.get("use_dynamic_shifting") else {}
        for steps in steps_list:
            row = dict(label=case["label"], solver=case["solver"], steps=steps, note=case["note"])
            model = Model(cfg, target)
            seed = 3 if case["stochastic"] else None
            want = run_loop(type(ref).from_config(cfg), model, steps, x, seed, **kw)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # the scheduler itself: configs of schedulers built in memory carry no _class_name
                    ours = pfd.PFODEScheduler.from_config(ref, solver=case["solver"], solver_options=case["options"])
                    got = run_loop(ours, model, steps, x, seed, **kw)
            except ValueError as e:
                row.update(error=str(e).split(";")[0])
                rows.append(row)
                continue
            src = type(ref).from_config(cfg)
            src.set_timesteps(steps, **kw)
            same = ours.timesteps.shape == src.timesteps.shape and torch.equal(ours.timesteps, src.timesteps)
            row.update(
                timesteps_equal=bool(same),
                dtype=str(ours.timesteps.dtype).replace("torch.", ""),
                source_dtype=str(src.timesteps.dtype).replace("torch.", ""),
                max_abs=float((got - want).abs().max()),
                rel=float((got - want).norm() / want.norm()),
                std=float(want.std()),
            )
            rows.append(row)
    return rows


def grid_gain(nfes, n_samples: int, target: Gaussian):
    """Error to the exact endpoint: the source scheduler's timesteps vs pfode's logsnr/karras grids."""
    import diffusers as d

    configs = [
        ("DDIM leading (SD config), dpm++2m", d.DDIMScheduler(**SD, steps_offset=1, clip_sample=False), "dpm++2m", {}),
        ("DPM++2M linspace, dpm++2m", d.DPMSolverMultistepScheduler(), "dpm++2m", {}),
        ("DPM++2M karras, dpm++2m", d.DPMSolverMultistepScheduler(use_karras_sigmas=True), "dpm++2m", {}),
        ("UniPC linspace, unipc", d.UniPCMultistepScheduler(), "unipc", {}),
        ("Euler leading (SD config), euler", d.EulerDiscreteScheduler(**SD, timestep_spacing="leading",
                                                                      steps_offset=1), "euler", {}),
        ("FlowMatchEuler shift 3, unipc", d.FlowMatchEulerDiscreteScheduler(shift=3.0), "unipc", {}),
    ]
    x1 = torch.randn(n_samples, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = []
    for label, ref, solver, opts in configs:
        for spacing in (None, "logsnr", "karras"):
            for nfe in nfes:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sched = pfd.PFODEScheduler.from_config(ref, solver=solver, solver_options=opts, spacing=spacing)
                model = Model(sched.config, target, extra=0.0)
                path = model.spec.path
                sched.set_timesteps(nfe)
                prog = sched._prog
                t0 = float(prog.t[0])
                t1 = 1.0 - 1e-3 if model.spec.family == "flow" else 1.0
                # the same trajectory for every grid: x at t = 1 carried exactly to the grid's first time
                x = target.flow_map(x1, t1, t0, path).float() if t0 != t1 else x1.float()
                end = 0.0 if prog.g.zero else float(prog.end.t)
                exact = target.flow_map(x1, t1, end, path) if end > 0 else _endpoint(target, x1, t1, path)
                model.calls = 0
                xx = x
                for t in sched.timesteps:
                    xx = sched.step(model(xx, t), t, xx).prev_sample
                err = float(((xx.double() - exact) ** 2).flatten(1).mean(1).sqrt().mean())
                rows.append(dict(config=label, spacing=spacing or "source", nfe=model.calls, error=err))
    return rows


def _endpoint(target: Gaussian, x1, t1, path):
    """The exact PF-ODE endpoint at zero noise: ``mu + S^(1/2) (alpha^2 S + sigma^2)^(-1/2) (x - alpha mu)``."""
    a, s = float(path.alpha(t1)), float(path.sigma(t1))
    f = x1.reshape(x1.shape[0], -1)
    z = target._rot(f, a)
    ratio = torch.sqrt(target.evals / target.marginal_var(torch.tensor(a, dtype=torch.float64),
                                                         torch.tensor(s, dtype=torch.float64)))
    return (target.mean + (ratio * z) @ target.evecs.T).reshape(x1.shape)


def plot(path_png, rows, gain, steps_list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(18, 8))
    ax = axes[0]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    width = 0.8 / len(steps_list)
    for j, steps in enumerate(steps_list):
        vals = []
        for lab in labels:
            r = next((r for r in rows if r["label"] == lab and r["steps"] == steps), None)
            vals.append(r["rel"] if r and "rel" in r else np.nan)
        ax.barh(np.arange(len(labels)) + j * width, np.maximum(vals, 1e-9), height=width, label=f"{steps} steps")
    ax.set_yticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xscale("log")
    ax.axvline(1e-5, color="k", ls="--", lw=1)
    ax.set_xlabel("relative difference of outputs, PFODEScheduler vs the diffusers scheduler (1e-5 dashed)")
    ax.invert_yaxis()
    ax.legend(fontsize=9)
    ax.set_title("Part 1: drop-in agreement (blank: refused)")
    ax = axes[1]
    for k, cfg in enumerate(dict.fromkeys(r["config"] for r in gain)):
        color = f"C{k}"
        for spacing, ls in (("source", "-"), ("logsnr", "--"), ("karras", ":")):
            pts = [(r["nfe"], r["error"]) for r in gain if r["config"] == cfg and r["spacing"] == spacing]
            ax.plot(*zip(*pts), ls=ls, color=color, marker="o", ms=3,
                    label=f"{cfg} [{spacing}]" if spacing == "source" else None)
    ax.plot([], [], "k-", label="source timesteps")
    ax.plot([], [], "k--", label='spacing="logsnr"')
    ax.plot([], [], "k:", label='spacing="karras"')
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for r in gain})
    ax.set_xticks(nfes)
    ax.set_xticklabels([str(v) for v in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE")
    ax.set_ylabel("mean per-sample RMSE to the exact PF-ODE endpoint")
    ax.set_title("Part 2: source scheduler's timesteps vs pfode grids (exact Gaussian model)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and step counts")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps_list = [6, 12] if args.quick else [6, 12, 25]
    nfes = [5, 10, 20] if args.quick else [5, 8, 10, 15, 20, 30]
    n = 16 if args.quick else 64
    target = _target()
    t0 = time.perf_counter()
    rows = agreement(steps_list, n, target)
    t1 = time.perf_counter()
    print(f"\nPart 1: PFODEScheduler.from_config(cfg, solver=...) vs the diffusers scheduler ({n} samples, {SHAPE})")
    print(f"{'scheduler':36s} {'solver':8s} {'steps':>5s} {'same ts':>7s} {'dtype':>7s} {'max abs':>9s} "
          f"{'rel':>9s}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['label']:36s} {r['solver']:8s} {r['steps']:5d} {'-':>7s} {'-':>7s} {'-':>9s} {'-':>9s}  "
                  f"refused: {r['error'][:70]}")
            continue
        print(f"{r['label']:36s} {r['solver']:8s} {r['steps']:5d} {str(r['timesteps_equal']):>7s} {r['dtype']:>7s} "
              f"{r['max_abs']:9.2e} {r['rel']:9.2e}  {r['note']}")
    gain = grid_gain(nfes, n * 4, target)
    t2 = time.perf_counter()
    print("\nPart 2: error to the exact endpoint (exact Gaussian model), source timesteps vs pfode grids")
    cfgs = list(dict.fromkeys(r["config"] for r in gain))
    nfe_cols = sorted({r["nfe"] for r in gain})
    print(f"{'config':36s} {'grid':8s} " + " ".join(f"{'NFE ' + str(v):>9s}" for v in nfe_cols))
    for cfg in cfgs:
        for sp in ("source", "logsnr", "karras"):
            vals = {r["nfe"]: r["error"] for r in gain if r["config"] == cfg and r["spacing"] == sp}
            print(f"{cfg:36s} {sp:8s} " + " ".join(f"{vals.get(v, float('nan')):9.2e}" for v in nfe_cols))
        src = {r["nfe"]: r["error"] for r in gain if r["config"] == cfg and r["spacing"] == "source"}
        best = {v: min(r["error"] for r in gain if r["config"] == cfg and r["nfe"] == v and r["spacing"] != "source")
                for v in nfe_cols if v in src}
        print(f"{'':36s} {'gain':8s} " + " ".join(f"{src[v] / best[v]:8.2f}x" if v in best else f"{'':9s}"
                                                for v in nfe_cols))
    import diffusers

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "_quick" if args.quick else ""
    data = {
        "what": __doc__.splitlines()[0],
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
        "shape": list(SHAPE),
        "samples": n,
        "agreement": rows,
        "grid_gain": gain,
        "seconds": {"agreement": t1 - t0, "grid_gain": t2 - t1},
    }
    (RESULTS / f"agree_diffusers{tag}.json").write_text(json.dumps(data, indent=1))
    plot(RESULTS / f"agree_diffusers{tag}.png", rows, gain, steps_list)
    print(f"\nwrote {RESULTS / f'agree_diffusers{tag}.json'} and .png  ({t2 - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
