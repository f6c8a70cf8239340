"""How many evaluations the shipped moons model needs to sit on its data (the README's moons example).

Model: ``builtin:moons`` (flow matching on the Linear path, velocity prediction), float32, 4000 samples from
noise ``x_T = sigma(t_max) * randn`` (seed 0). For dpm++2m and unipc at NFE 8, 12, 16, 24 and 32, and dopri5
(rtol = atol = 1e-5), the sliced W2 distance (256 projections, seed 0) to 4000 fresh points of the moons data
(seed 1); the row "data" is the distance between two independent 4000-point data sets (seeds 2 and 1), the
floor at this sample size.

Run: ``.venv/bin/python benchmarks/moons_nfe.py`` (about 1 minute of CPU). Writes
``benchmarks/results/moons_nfe.{json,png}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import RESULTS, setup, table, write_json  # noqa: E402

import pfode  # noqa: E402
from pfode import data, metrics, models  # noqa: E402

N = 4000
NFES = (8, 12, 16, 24, 32)
SOLVERS = ("dpm++2m", "unipc")


def sw2(x, ref) -> float:
    return float(metrics.sliced_w2(x, ref, generator=torch.Generator().manual_seed(0)))


def main():
    setup()
    m = models.load("builtin:moons")
    path = m.denoiser.path
    ref = data.toy2d("moons", N, seed=1)
    sigma = float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64)))
    x_T = sigma * torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    rows, out = [], {"n": N, "rows": []}
    for solver in SOLVERS:
        for nfe in NFES:
            d = sw2(pfode.sample(m.denoiser, x_T, nfe=nfe, solver=solver), ref)
            rows.append([solver, nfe, f"{d:.4f}"])
            out["rows"].append({"solver": solver, "nfe": nfe, "sliced_w2": d})
    res = pfode.sample(m.denoiser, x_T, solver=pfode.solvers.get("dopri5", rtol=1e-5, atol=1e-5), return_info=True)
    d = sw2(res.x, ref)
    rows.append(["dopri5 1e-5", res.nfe, f"{d:.4f}"])
    out["rows"].append({"solver": "dopri5", "nfe": res.nfe, "sliced_w2": d})
    floor = sw2(data.toy2d("moons", N, seed=2), ref)
    rows.append(["data", "-", f"{floor:.4f}"])
    out["data_floor"] = floor
    print(table(rows, ["solver", "nfe", "sliced W2 to data"]))
    write_json("moons_nfe", out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for solver in SOLVERS:
        r = [e for e in out["rows"] if e["solver"] == solver]
        ax.plot([e["nfe"] for e in r], [e["sliced_w2"] for e in r], "o-", label=solver)
    ax.axhline(d, color="k", ls="--", lw=1, label=f"dopri5 ({res.nfe} NFE)")
    ax.axhline(floor, color="gray", ls=":", lw=1, label="data vs data")
    ax.set(xlabel="NFE", ylabel="sliced W2 to data", yscale="log", title="builtin:moons")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "moons_nfe.png", dpi=120)
    print(f"wrote {RESULTS / 'moons_nfe.json'} and moons_nfe.png")


if __name__ == "__main__":
    main()
