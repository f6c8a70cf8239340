"""Latency: the sampler's own cost per step, and end-to-end policy latency, pfode vs k-diffusion vs diffusers.

1. **Per step**, with a nearly free network (``x -> 0.1 x``, one elementwise op in every library), 20 steps, one
   thread, CPU, batch 16 and 1024 (8 features): CPU time per step of a whole sampling call. pfode runs a prepared
   ``pfode.Sampler`` eagerly and compiled (``compile=True``), with its default finiteness checks and without them
   (``check_finite=False``, no host-device sync); k-diffusion runs ``sample_dpmpp_2m`` on precomputed Karras
   sigmas; diffusers runs its pipeline loop (``set_timesteps``, ``scale_model_input``, ``step``).
2. **Policy**: a 3-layer MLP (width 256, SiLU; the time enters as one feature) on a 16-dimensional action,
   10 network evaluations, batch 1 and 64, ``torch.no_grad``; every library's 10-NFE multistep samplers
   (pfode dpm++2m and unipc, eager and compiled; k-diffusion dpmpp_2m through a DDPM eps wrapper, as
   ``benchmarks/overhead.py``; diffusers DPMSolverMultistep and UniPC). Wall-clock latency of each call: median
   and p99.

Every configuration is warmed up (compilation happens there), then timed in interleaved rounds so that load
on this shared machine hits all of them alike; ratios are from one run. The compiled and eager pfode samples
are checked to agree, and every library's samples to be finite and non-degenerate.

Run: ``python benchmarks/latency.py [--quick]``; writes ``benchmarks/results/latency.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402
from overhead import KEpsDenoiser  # noqa: E402

import pfode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SAME = {"dpm++2m": ("k-diffusion dpmpp_2m", "diffusers DPMSolverMultistep"), "unipc": ("diffusers UniPC",)}


def _diffusers(cls_name: str, order_opts: dict):
    return _peers.make_scheduler(cls_name, timestep_spacing="trailing", **order_opts)


DIFFUSERS = {
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_order": 2}),
}


def runners(net, nfe: int, x: torch.Tensor, net_time_feature: bool) -> dict:
    """``{label: callable() -> samples}``: every sampler on the eps network ``net(x, t)`` (DDPM table)."""
    path = pfode.paths.VPDiscrete.ddpm()
    den = pfode.Denoiser(net, path, prediction="eps", time_input="index")
    r = {}
    for name in ("dpm++2m", "unipc"):
        eager = pfode.Sampler(den, nfe=nfe, solver=name)
        comp = pfode.Sampler(den, nfe=nfe, solver=name, compile=True)
        r[f"pfode {name}"] = lambda s=eager: s(x)
        r[f"pfode {name} compiled"] = lambda s=comp: s(x)
        r[f"pfode {name} compiled, no checks"] = lambda s=comp: s(x, check_finite=False)
    K = _peers.k_sampling()
    s_min, s_max = float(path.s(path.t_min)), float(path.s(path.t_max))
    sig = K.get_sigmas_karras(nfe, s_min, s_max)
    kden = KEpsDenoiser(net, path.alphas_cumprod) if net_time_feature else (lambda u, sigma: net(u, sigma))
    r["k-diffusion dpmpp_2m"] = lambda: K.sample_dpmpp_2m(kden, x * sig[0], sig, disable=True)
    for label, (cls, opts) in DIFFUSERS.items():
        sch = _diffusers(cls, opts)

        def run(sch=sch):
            sch.set_timesteps(nfe)
            y = x * sch.init_noise_sigma
            for t in sch.timesteps:
                y = sch.step(net(sch.scale_model_input(y, t), t.expand(y.shape[0])), t, y).prev_sample
            return y

        r[f"diffusers {label}"] = run
    return r


def check(outputs: dict, tol: float):
    """Finite, non-degenerate samples everywhere; compiled pfode equal to eager pfode."""
    for k, v in outputs.items():
        if not (torch.isfinite(v).all() and float(v.std()) > 1e-6):
            raise RuntimeError(f"{k}: degenerate samples")
    for name in ("dpm++2m", "unipc"):
        ref = outputs[f"pfode {name}"]
        for k in (f"pfode {name} compiled", f"pfode {name} compiled, no checks"):
            err = float((outputs[k] - ref).abs().max() / ref.abs().max())
            if err > tol:
                raise RuntimeError(f"{k} differs from eager by {err:.2e}")


def per_step(batch: int, nfe: int, rounds: int, inner: int) -> dict:
    """CPU microseconds per step of each sampler (median over interleaved rounds)."""
    x = torch.randn(batch, 8)
    r = runners(lambda u, t: u * 0.1, nfe, x, net_time_feature=False)
    with torch.no_grad():
        check({k: f() for k, f in r.items()}, 1e-5)
        for f in r.values():
            for _ in range(5):
                f()
        times: dict = {k: [] for k in r}
        for _ in range(rounds):
            for k, f in r.items():
                n = max(1, inner // 8) if k.startswith("diffusers") else inner
                t = time.process_time()
                for _ in range(n):
                    f()
                times[k].append((time.process_time() - t) / n / nfe * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


class PolicyMLP(torch.nn.Module):
    """``(action [B, 16], t [B]) -> eps [B, 16]``: three linear layers of width 256 with SiLU; ``t / 1000`` is one
    extra input feature."""

    def __init__(self, d: int = 16, width: int = 256):
        super().__init__()
        self.l1 = torch.nn.Linear(d + 1, width)
        self.l2 = torch.nn.Linear(width, width)
        self.l3 = torch.nn.Linear(width, d)

    def forward(self, x, t):
        h = torch.cat([x, t.reshape(-1, 1).to(x.dtype) * 1e-3], dim=1)
        return self.l3(torch.nn.functional.silu(self.l2(torch.nn.functional.silu(self.l1(h)))))


def policy(batch: int, nfe: int, calls: int) -> dict:
    """Wall-clock latency (median, p99, in microseconds) of one sampling call per sampler."""
    torch.manual_seed(0)
    net = PolicyMLP().eval()
    x = torch.randn(batch, 16)
    r = runners(net, nfe, x, net_time_feature=True)
    lat: dict = {k: [] for k in r}
    with torch.no_grad():
        check({k: f() for k, f in r.items()}, 1e-4)
        for f in r.values():
            for _ in range(20):
                f()
        block = 25
        for _ in range(max(1, calls // block)):
            for k, f in r.items():
                for _ in range(block):
                    t = time.perf_counter()
                    f()
                    lat[k].append((time.perf_counter() - t) * 1e6)
    out = {}
    for k, v in lat.items():
        v = sorted(v)
        out[k] = {"median": statistics.median(v), "p99": v[min(len(v) - 1, int(0.99 * len(v)))], "calls": len(v)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rounds, inner, calls = (3, 10, 50) if args.quick else (9, 40, 400)
    step = {b: per_step(b, 20, rounds, inner) for b in (16, 1024)}
    print("sampler cost, CPU us per step (network x -> 0.1 x, 20 steps, 1 thread)")
    print(f"{'':40s} {'batch 16':>10s} {'batch 1024':>11s}   x same-algorithm peer (16 / 1024)")
    for k in step[16]:
        alg = k.split()[1] if k.startswith("pfode") else None
        extra = ""
        if alg in SAME:
            ratios = [step[b][k] / min(step[b][p] for p in SAME[alg]) for b in (16, 1024)]
            extra = f"   {ratios[0]:.3f} / {ratios[1]:.3f}"
        print(f"{k:40s} {step[16][k]:10.1f} {step[1024][k]:11.1f}{extra}")
    pol = {b: policy(b, 10, calls) for b in (1, 64)}
    print("\npolicy latency, 3-layer MLP (width 256), 16-d action, 10 NFE, us per call (median / p99)")
    print(f"{'':40s} {'batch 1':>17s} {'batch 64':>17s}")
    for k in pol[1]:
        cells = [f"{pol[b][k]['median']:8.0f} /{pol[b][k]['p99']:7.0f}" for b in (1, 64)]
        print(f"{k:40s} {cells[0]:>17s} {cells[1]:>17s}")
    summary = {}
    for b in (1, 64):
        peers = {k: v["median"] for k, v in pol[b].items() if not k.startswith("pfode")}
        mine = {k: v["median"] for k, v in pol[b].items() if k.startswith("pfode")}
        bp, bm = min(peers, key=peers.get), min(mine, key=mine.get)
        summary[b] = {"best peer": bp, "best pfode": bm, "ratio": mine[bm] / peers[bp],
                      "eager ratio": min(v for k, v in mine.items() if "compiled" not in k) / peers[bp]}
        print(f"batch {b}: best pfode {bm} {mine[bm]:.0f} us vs best peer {bp} {peers[bp]:.0f} us: "
              f"x{summary[b]['ratio']:.3f} (eager pfode x{summary[b]['eager ratio']:.3f})")
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "latency_quick" if args.quick else "latency"
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"per_step_cpu_us": step, "policy_us": pol, "policy_summary": summary, "wall_s": wall,
                    "torch": torch.__version__}, indent=2)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    labels = list(step[16])
    ys = range(len(labels))
    for off, b in ((-0.2, 16), (0.2, 1024)):
        axes[0].barh([y + off for y in ys], [step[b][k] for k in labels], height=0.4, label=f"batch {b}")
    axes[0].set_yticks(list(ys), labels)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("CPU us per step (x -> 0.1 x network)")
    axes[0].legend()
    labels = list(pol[1])
    ys = range(len(labels))
    for off, b in ((-0.2, 1), (0.2, 64)):
        axes[1].barh([y + off for y in ys], [pol[b][k]["median"] for k in labels], height=0.4, label=f"batch {b}",
                     xerr=[[0] * len(labels), [pol[b][k]["p99"] - pol[b][k]["median"] for k in labels]])
    axes[1].set_yticks(list(ys), labels)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("us per call, median (bar) to p99 (whisker); 10 NFE policy MLP")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print(f"wrote {RESULTS / name}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
