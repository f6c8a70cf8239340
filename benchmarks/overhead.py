"""Per-step sampler overhead on CPU: pfode vs diffusers vs k-diffusion, with a tiny MLP (sampler-dominated).

overhead per step = (wall time of one sampling call - wall time of a loop calling the same net on the
very inputs that sampler gave it) / model calls. Everything runs in one process, one thread, under
``torch.no_grad()``, float32; each configuration is warmed up, then timed ``--repeats`` times (each
timing averages ``--inner`` calls, right after its model-only replay) in a rotating order, and the
median is reported.

Why the replay: the untrained MLP sends every sampler's trajectory to values of order 100, where
SiLU's exp underflows to subnormal floats and the net runs up to 4x slower (at batch 1024, 32 vs
15 us per SiLU). A model-only loop on other inputs (e.g. its own outputs fed back) would count that
slowdown, the same ~35 us per step for every library, as sampler overhead. Replaying each sampler's
recorded inputs makes the subtracted model time the model time that sampler actually caused.

The net is an epsilon-prediction MLP on the DDPM table taking the (float) DDPM timestep; every library
drives it the way its users do:

* pfode: ``pfode.sample(Denoiser(net, VPDiscrete.ddpm(), "eps", time_input="index"), x_T, nfe=N, solver=...)``
  (grid, plan and time tensors built inside the call, as a user gets them);
* diffusers: ``set_timesteps`` + the pipeline loop ``scale_model_input -> net -> step``;
* k-diffusion: ``sample_*`` on ``get_sigmas_karras`` with a minimal VE wrapper of the eps net
  (``c_in = 1/sqrt(sigma^2 + 1)``, sigma -> timestep by log-linear interpolation, ``D = x - sigma eps``),
  a leaner version of ``k_diffusion.external.DiscreteEpsDDPMDenoiser``.

Run: ``python benchmarks/overhead.py [--quick] [--profile]``;
writes ``benchmarks/results/overhead[_quick].{json,png}``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers  # noqa: E402

import pfode  # noqa: E402
from pfode.paths import VPDiscrete  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PFODE = ("dpm++2m", "unipc", "ddim", "euler")
DIFFUSERS = {
    "DPMSolverMultistep": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "algorithm_type": "dpmsolver++"},
    ),
    "UniPC": ("UniPCMultistepScheduler", {"solver_order": 2}),
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
}
PFODE_GRID_GIVEN = ("dpm++2m", "unipc")
KDIFF = ("dpmpp_2m", "euler")
TARGET = {"dpm++2m": 0.3, "unipc": 0.3}
#: the peers running the same algorithm as each pfode row (for the "x same-algorithm peer" column)
SAME_ALGORITHM = {
    "dpm++2m": ("diffusers DPMSolverMultistep", "k-diffusion dpmpp_2m"),
    "unipc": ("diffusers UniPC",),
    "ddim": ("diffusers DDIM",),
    "euler": ("diffusers Euler", "k-diffusion euler"),
}


class MLP(torch.nn.Module):
    """Two hidden layers of width 64; the timestep enters as one extra input feature (t / 1000)."""

    def __init__(self, d: int, width: int = 64):
        super().__init__()
        self.l1 = torch.nn.Linear(d + 1, width)
        self.l2 = torch.nn.Linear(width, width)
        self.l3 = torch.nn.Linear(width, d)

    def forward(self, x, t):
        h = torch.cat([x, t.reshape(-1, 1).to(x.dtype) * 1e-3], dim=1)
        h = torch.nn.functional.silu(self.l1(h))
        h = torch.nn.functional.silu(self.l2(h))
        return self.l3(h)


class KEpsDenoiser:
    """k-diffusion's view of a DDPM eps network: ``D(x, sigma)`` in ``x / alpha`` coordinates."""

    def __init__(self, net, alphas_cumprod: torch.Tensor):
        self.net = net
        ac = alphas_cumprod.to(torch.float32)
        self.log_sigmas = (((1 - ac) / ac) ** 0.5).log()

    def sigma_to_t(self, sigma):
        ls = sigma.log()
        hi = torch.searchsorted(self.log_sigmas, ls).clamp(1, len(self.log_sigmas) - 1)
        lo = hi - 1
        w = (ls - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return lo.to(ls.dtype) + w.clamp(0, 1)

    def __call__(self, x, sigma):
        c_in = (sigma * sigma + 1).rsqrt()[:, None]
        eps = self.net(x * c_in, self.sigma_to_t(sigma))
        return x - eps * sigma[:, None]


def make_runners(net, nfe: int, B: int, d: int):
    """``{label: (library, callable(x_T) -> samples)}`` for every sampler."""
    path = VPDiscrete.ddpm()
    den = pfode.Denoiser(net, path, prediction="eps", time_input="index")
    runners = {}

    for name in PFODE:

        def run_pf(x, name=name):
            return pfode.sample(den, x, nfe=nfe, solver=name, spacing="logsnr")

        runners[f"pfode {name}"] = ("pfode", run_pf)

    g = pfode.grid(path, nfe - 1, "logsnr")  # what nfe=N builds: N - 1 steps, then the denoising call
    for name in PFODE_GRID_GIVEN:

        def run_pf_grid(x, name=name):
            return pfode.sample(den, x, grid=g, solver=name)

        runners[f"pfode {name} (grid given)"] = ("pfode", run_pf_grid)

    # a prepared pfode.Sampler: grid, plan and time tensors built once, reused across calls
    for name in PFODE_GRID_GIVEN:
        sampler = pfode.Sampler(den, nfe=nfe, solver=name, spacing="logsnr")

        def run_prepared(x, sampler=sampler):
            return sampler(x)

        runners[f"pfode {name} (prepared Sampler)"] = ("pfode-prepared", run_prepared)

    for label, (cls, opts) in DIFFUSERS.items():
        sched = _peers.make_scheduler(cls, timestep_spacing="trailing", **opts)

        def run_df(x, sched=sched):
            sched.set_timesteps(nfe)
            x = x * sched.init_noise_sigma
            for t in sched.timesteps:
                eps = net(sched.scale_model_input(x, t), t.expand(x.shape[0]))
                x = sched.step(eps, t, x).prev_sample
            return x

        runners[f"diffusers {label}"] = ("diffusers", run_df)

    K = _peers.k_sampling()
    kden = KEpsDenoiser(net, path.alphas_cumprod)
    s_min, s_max = float(path.s(path.t_min)), float(path.s(path.t_max))
    for name in KDIFF:
        fn = getattr(K, f"sample_{name}")

        def run_k(x, fn=fn):
            sigmas = K.get_sigmas_karras(nfe, s_min, s_max)
            return fn(kden, x * sigmas[0], sigmas, disable=True)

        runners[f"k-diffusion {name}"] = ("k-diffusion", run_k)
    return runners, den


def record_calls(net, runners, x):
    """``{label: [(x_in, t_in), ...]}``: copies of the inputs each runner gives the net, call by call."""
    calls: list = []
    orig = net.forward

    def recording(xi, ti):
        calls.append((xi.clone(), ti.clone()))
        return orig(xi, ti)

    net.forward = recording
    out = {}
    try:
        with torch.no_grad():
            for label, (_, fn) in runners.items():
                calls = []
                fn(x)
                out[label] = calls
    finally:
        del net.forward
    return out


def replays(net, recorded):
    """``{label: callable(x)}`` running the net on each runner's recorded inputs (its model-only loop)."""

    def make(inputs):
        def replay(_x):
            for xi, ti in inputs:
                net(xi, ti)

        return replay

    return {label: make(inputs) for label, inputs in recorded.items()}


def time_runners(runners, baselines, x, repeats: int, inner: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Per-call seconds of each sampler and of its model-only replay timed right before it (paired).

    Both wall time (``perf_counter``) and this thread's CPU time (``thread_time``; with one torch thread
    all work runs on the calling thread) are recorded: CPU time is far less sensitive to other processes
    competing for the cores.
    """
    labels = list(runners)
    out = {k: {"wall": [], "cpu": [], "base_wall": [], "base_cpu": []} for k in labels}
    with torch.no_grad():
        for _ in range(warmup):
            for k in labels:
                runners[k][1](x)
                baselines[k](x)
        for r in range(repeats):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]  # rotate to spread drift
            for k in order:
                fn, base_fn = runners[k][1], baselines[k]
                w0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(inner):
                    base_fn(x)
                w1, c1 = time.perf_counter(), time.thread_time()
                for _ in range(inner):
                    fn(x)
                w2, c2 = time.perf_counter(), time.thread_time()
                out[k]["base_wall"].append((w1 - w0) / inner)
                out[k]["base_cpu"].append((c1 - c0) / inner)
                out[k]["wall"].append((w2 - w1) / inner)
                out[k]["cpu"].append((c2 - c1) / inner)
    return out


# -- where pfode's time goes ------------------------------------------------------------------


def cprofile_pfode(den, x, nfe: int, solver: str, calls: int, top: int = 25) -> str:
    pr = cProfile.Profile()
    with torch.no_grad():
        pr.enable()
        for _ in range(calls):
            pfode.sample(den, x, nfe=nfe, solver=solver, spacing="logsnr")
        pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def plot(path_png, table, batches, nfe, title_suffix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k in table[batches[0]] if k != "model only" and not k.startswith("_")]
    colors = {
        "pfode": "#1f77b4",
        "pfode-prepared": "#9ecae1",
        "diffusers": "#ff7f0e",
        "k-diffusion": "#2ca02c",
    }
    fig, axes = plt.subplots(1, len(batches), figsize=(8.5 * len(batches), 7.5))
    if len(batches) == 1:
        axes = [axes]
    h = 0.4
    for ax, B in zip(axes, batches):
        rows = table[B]
        cpu = [rows[k]["overhead_cpu_us_per_step"] for k in labels]
        wall = [rows[k]["overhead_us_per_step"] for k in labels]
        y = range(len(labels))
        c = [colors[rows[k]["library"]] for k in labels]
        bars = ax.barh([i - h / 2 for i in y], cpu, height=h, color=c)
        ax.barh([i + h / 2 for i in y], wall, height=h, color=c, alpha=0.35, hatch="//", edgecolor="grey")
        for b_, v in zip(bars, cpu):
            ax.text(max(v, 0), b_.get_y() + b_.get_height() / 2, f" {v:.1f}", va="center", fontsize=9)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=10)
        ax.invert_yaxis()
        net_us = rows["model only"]["call_cpu_us"] / nfe
        bp = rows["_best_peer_cpu"]
        ax.axvline(rows[bp]["overhead_cpu_us_per_step"], color="k", ls=":", lw=1)
        ax.axvline(0.3 * rows[bp]["overhead_cpu_us_per_step"], color="r", ls="--", lw=1.2)
        ax.set_title(f"batch {B} (the net alone: {net_us:.0f} us CPU per call)", fontsize=12)
        ax.set_xlabel("overhead per step (us) = (sampling - net replayed on its inputs) / NFE", fontsize=11)
        ax.set_xlim(min(0, min(wall) * 1.1), max(max(cpu), max(wall)) * 1.15)
        ax.grid(True, axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=col) for col in colors.values()]
    handles += [
        plt.Rectangle((0, 0), 1, 1, facecolor="grey", alpha=0.35, hatch="//", edgecolor="grey"),
        plt.Line2D([], [], color="k", ls=":"),
        plt.Line2D([], [], color="r", ls="--"),
    ]
    names = ["pfode", "pfode prepared Sampler", "diffusers", "k-diffusion"] + [
        "wall-time overhead (light, hatched; solid bars: CPU time)",
        "best peer (CPU)",
        "target: 0.3 x best peer",
    ]
    fig.legend(handles, names, loc="lower center", ncol=4, frameon=False, fontsize=10)
    fig.suptitle(
        f"Per-step sampler overhead on CPU: 1 thread, float32, tiny MLP, NFE {nfe}, median of paired repeats"
        f"{title_suffix}",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 1024])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="also print cProfile of pfode dpm++2m")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    repeats = args.repeats or (5 if args.quick else 15)
    inner = 3 if args.quick else 10
    warmup = 2 if args.quick else 5
    tag = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    nfe, d = args.nfe, args.dim
    net = MLP(d).eval()

    table, profiles = {}, {}
    t_all = time.perf_counter()
    for B in args.batches:
        x = torch.randn(B, d)
        runners, den = make_runners(net, nfe, B, d)
        recorded = record_calls(net, runners, x)
        calls = {k: len(v) for k, v in recorded.items()}
        bad = {k: v for k, v in calls.items() if v != nfe}
        if bad:
            raise RuntimeError(f"model calls differ from nfe={nfe}: {bad}")
        times = time_runners(runners, replays(net, recorded), x, repeats, inner, warmup)
        rows = {}
        base_w = [v for t in times.values() for v in t["base_wall"]]
        base_c = [v for t in times.values() for v in t["base_cpu"]]
        rows["model only"] = {
            "library": "baseline",
            "call_us": statistics.median(base_w) * 1e6,
            "call_cpu_us": statistics.median(base_c) * 1e6,
            "model_calls": nfe,
        }
        for k, t in times.items():
            dw = [a - b for a, b in zip(t["wall"], t["base_wall"])]
            dc = [a - b for a, b in zip(t["cpu"], t["base_cpu"])]
            q1, _, q3 = statistics.quantiles(dw, n=4)
            rows[k] = {
                "library": runners[k][0],
                "call_us": statistics.median(t["wall"]) * 1e6,
                "call_cpu_us": statistics.median(t["cpu"]) * 1e6,
                "overhead_us_per_step": statistics.median(dw) / nfe * 1e6,
                "overhead_us_per_step_iqr": [q1 / nfe * 1e6, q3 / nfe * 1e6],
                "overhead_cpu_us_per_step": statistics.median(dc) / nfe * 1e6,
                "model_calls": calls[k],
            }
        for metric, suffix in (("overhead_us_per_step", ""), ("overhead_cpu_us_per_step", "_cpu")):
            peers = {
                k: v for k, v in rows.items() if isinstance(v, dict) and v["library"] in ("diffusers", "k-diffusion")
            }
            best_peer = min(peers, key=lambda k, m=metric: peers[k][m])
            for k, v in rows.items():
                if isinstance(v, dict) and v["library"].startswith("pfode"):
                    v["ratio_to_best_peer" + suffix] = v[metric] / peers[best_peer][metric]
                    same = SAME_ALGORITHM[k.split()[1]]
                    v["ratio_to_same_algorithm_peer" + suffix] = v[metric] / min(rows[p][metric] for p in same)
            rows["_best_peer" + suffix] = best_peer
        table[B] = rows
        if args.profile:
            profiles[B] = cprofile_pfode(den, x, nfe, "dpm++2m", calls=200 if B <= 64 else 20)

    # -- report --------------------------------------------------------------------------------
    load = os.getloadavg()
    print(
        f"NFE {nfe}, MLP d={d} width 64, float32, 1 thread; median over {repeats} repeats of {inner} calls, "
        f"each paired with the net replayed on that sampler's inputs; "
        f"load average now {load[0]:.1f} on {os.cpu_count()} cores"
    )
    for B in args.batches:
        rows = table[B]
        print(
            f"\nbatch {B}: net replays (median) {rows['model only']['call_us']:.0f} us/call wall, "
            f"{rows['model only']['call_cpu_us']:.0f} us CPU "
            f"({rows['model only']['call_cpu_us'] / nfe:.1f} us CPU per net call); "
            f"best peer: {rows['_best_peer']} (wall), {rows['_best_peer_cpu']} (CPU)"
        )
        print(
            f"{'sampler':40s} {'call us':>8s} {'overhead us/step':>17s} {'IQR':>15s} {'x best':>7s}   "
            f"{'CPU us/step':>11s} {'x best':>7s} {'x same-alg':>10s}"
        )
        for k, v in rows.items():
            if k.startswith("_") or k == "model only":
                continue
            r = v.get("ratio_to_best_peer")
            rc = v.get("ratio_to_best_peer_cpu")
            iqr = f"[{v['overhead_us_per_step_iqr'][0]:.0f}, {v['overhead_us_per_step_iqr'][1]:.0f}]"
            rs = v.get("ratio_to_same_algorithm_peer_cpu")
            print(
                f"{k:40s} {v['call_us']:8.0f} {v['overhead_us_per_step']:17.1f} {iqr:>15s} "
                f"{'' if r is None else f'{r:7.2f}':>7s}   {v['overhead_cpu_us_per_step']:11.1f} "
                f"{'' if rc is None else f'{rc:7.2f}':>7s} {'' if rs is None else f'{rs:10.2f}':>10s}"
            )
    verdicts = {}
    for B in args.batches:
        for s, lim in TARGET.items():
            for variant in ("", " (prepared Sampler)"):
                v = table[B][f"pfode {s}{variant}"]
                rc, rs = v["ratio_to_best_peer_cpu"], v.get("ratio_to_same_algorithm_peer_cpu")
                verdicts[f"{s}{variant} batch {B}"] = {
                    "ratio_wall": v["ratio_to_best_peer"],
                    "ratio_cpu": rc,
                    "ratio_same_algorithm_cpu": rs,
                    "target": lim,
                    "met_cpu_vs_best_peer": rc <= lim,
                    "met_cpu_vs_same_algorithm": rs is not None and rs <= lim,
                }
    print("\ntargets (pfode overhead per step <= 0.3 x the peer's; CPU time, the robust figure on a shared machine):")
    for k, v in verdicts.items():
        same = v["ratio_same_algorithm_cpu"]
        print(
            f"  {k:40s} vs best peer (any algorithm) {v['ratio_cpu']:5.2f} "
            f"{'MET' if v['met_cpu_vs_best_peer'] else 'NOT MET':8s} vs same-algorithm peer "
            f"{'-' if same is None else f'{same:5.2f}'} {'MET' if v['met_cpu_vs_same_algorithm'] else 'NOT MET'}"
        )

    for B, txt in profiles.items():
        print(f"\ncProfile, pfode dpm++2m, batch {B} (sorted by own time):")
        print("\n".join(txt.splitlines()[:45]))

    elapsed = time.perf_counter() - t_all
    print(f"\ntime: {elapsed:.0f}s")
    data = {
        "setup": {
            "nfe": nfe,
            "dim": d,
            "net": "MLP(d+1 -> 64 -> 64 -> d), SiLU, timestep/1000 as an input feature",
            "dtype": "float32",
            "threads": 1,
            "repeats": repeats,
            "inner": inner,
            "warmup": warmup,
            "overhead": "median over repeats of (sampling call - paired replay of the net on that call's inputs) / NFE",
            "load_average_at_end": list(os.getloadavg()),
            "versions": {"torch": torch.__version__, "pfode": pfode.__version__},
        },
        "results": {str(B): v for B, v in table.items()},
        "targets": verdicts,
        "cprofile": {str(B): v for B, v in profiles.items()},
        "seconds": elapsed,
    }
    (RESULTS / f"overhead{tag}.json").write_text(json.dumps(data, indent=1))
    plot(RESULTS / f"overhead{tag}.png", table, args.batches, nfe, " (quick)" if args.quick else "")
    print(f"wrote {RESULTS / f'overhead{tag}.json'} and .png")


if __name__ == "__main__":
    main()
