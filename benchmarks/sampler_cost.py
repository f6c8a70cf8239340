"""Pure sampler cost per step: every sampler driven by a network that returns a constant tensor.

``benchmarks/overhead.py`` measures overhead as (sampling time) - (the same MLP replayed on the inputs
that sampler gave it). Here the network costs nothing, so the time per step is the sampler's own work
with no subtraction at all: pfode (prepared Sampler), k-diffusion (precomputed sigmas) and diffusers (one
``set_timesteps`` per call, as pipelines do). CPU time, one thread, NFE 20.

Run: ``python benchmarks/sampler_cost.py``; writes ``benchmarks/results/sampler_cost.{json,png}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402

import pfode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NFE = 20


def cpu_us_per_step(fn, repeats: int) -> float:
    for _ in range(max(5, repeats // 10)):
        fn()
    best = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(repeats):
            fn()
        best.append((time.process_time() - t) / repeats / NFE * 1e6)
    return sorted(best)[len(best) // 2]


def runners(batch: int, d: int = 8):
    out = torch.randn(batch, d)
    x = torch.randn(batch, d)
    path = pfode.paths.VPDiscrete.ddpm()
    den = pfode.Denoiser(lambda x, t: out, path, prediction="eps", time_input="index")
    r = {}
    for name in ("dpm++2m", "unipc", "ddim"):
        s = pfode.Sampler(den, nfe=NFE, solver=name)
        r[f"pfode {name}"] = lambda s=s: s(x)
    K = _peers.k_sampling()
    sig = K.get_sigmas_karras(NFE, float(path.s(path.t_min)), float(path.s(path.t_max)))

    def model(x, sigma, **kw):
        return out

    for name in ("dpmpp_2m", "euler"):
        fn = getattr(K, f"sample_{name}")
        r[f"k-diffusion {name}"] = lambda fn=fn: fn(model, x, sig, disable=True)
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    for label, cls in (
        ("DPMSolverMultistep", DPMSolverMultistepScheduler),
        ("UniPC", UniPCMultistepScheduler),
        ("DDIM", DDIMScheduler),
        ("Euler", EulerDiscreteScheduler),
    ):
        sch = cls(num_train_timesteps=1000, timestep_spacing="trailing")

        def run(sch=sch):
            sch.set_timesteps(NFE)
            y = x * sch.init_noise_sigma
            for t in sch.timesteps:
                y = sch.step(out, t, sch.scale_model_input(y, t)).prev_sample
            return y

        r[f"diffusers {label}"] = run
    return r


SAME = {"dpm++2m": ("k-diffusion dpmpp_2m", "diffusers DPMSolverMultistep"), "unipc": ("diffusers UniPC",)}


def main(argv=None) -> int:
    torch.set_num_threads(1)
    table = {}
    for batch in (16, 1024):
        table[batch] = {
            k: cpu_us_per_step(f, 60 if k.startswith("diffusers") else 200) for k, f in runners(batch).items()
        }
    print(f"pure sampler CPU us/step, NFE {NFE}, constant-output network, 1 thread")
    for batch, row in table.items():
        peers = {k: v for k, v in row.items() if not k.startswith("pfode")}
        best = min(peers, key=peers.get)
        print(f"\nbatch {batch} (best peer: {best}, {peers[best]:.1f} us/step)")
        for k, v in row.items():
            extra = ""
            if k.startswith("pfode"):
                alg = k.split()[1]
                same = min((row[p] for p in SAME.get(alg, ())), default=None)
                extra = f"  x best peer {v / peers[best]:.2f}"
                if same:
                    extra += f"  x same-algorithm peer {v / same:.2f}"
            print(f"  {k:32s} {v:8.1f}{extra}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampler_cost.json").write_text(json.dumps({"nfe": NFE, "cpu_us_per_step": table}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (batch, row) in zip(axes, table.items()):
        names = list(row)
        colors = [
            "#1f77b4" if n.startswith("pfode") else ("#ff7f0e" if n.startswith("k-") else "#2ca02c") for n in names
        ]
        ax.barh(names, [row[n] for n in names], color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("CPU us per step (log scale)")
        ax.set_title(f"batch {batch}")
        ax.invert_yaxis()
    fig.suptitle(
        f"Pure sampler cost, NFE {NFE}, constant-output network (blue pfode, orange k-diffusion, green diffusers)"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "sampler_cost.png", dpi=100)
    print(f"\nwrote {RESULTS / 'sampler_cost.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
