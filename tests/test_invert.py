"""Inversion along the mirror-image grid, plain and exact (BDIA)."""

from __future__ import annotations

import pytest
import torch

import pfode
from pfode import paths as P
from pfode.analytic import Gaussian, GaussianMixture
from pfode.invert import bdia_sample, invert, round_trip

GMM = GaussianMixture.random(6, 4, std_range=(0.1, 1.0), generator=torch.Generator().manual_seed(0))
GAUSS = Gaussian(torch.zeros(4), torch.diag(torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)))
DETERMINISTIC = [
    "ddim",
    "dpm2",
    "dpm3",
    "dpm++2s",
    "dpm++2m",
    "dpm++3m",
    "unipc",
    "deis",
    "heun",
    "midpoint",
    "rk4",
]


def data(n, seed=1):
    return GMM.sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_plain_inversion_converges_to_the_exact_flow_map(solver):
    path = P.VP()
    den = GAUSS.denoiser(path)
    x = GAUSS.sample(6, generator=torch.Generator().manual_seed(2)) * float(path.alpha(path.t_min))
    exact = GAUSS.flow_map(x, path.t_min, path.t_max, path)
    errs = [
        float((invert(den, x, grid=pfode.grid(path, n), solver=solver) - exact).abs().max()) for n in (10, 40)
    ]
    print(f"{solver}: inversion error at 10 / 40 steps {errs[0]:.2e} / {errs[1]:.2e}")
    assert errs[1] < errs[0] and errs[1] < 0.2


def test_inversion_grid_is_the_mirror_image_of_the_sampling_grid():
    path = P.EDM()
    den = GMM.denoiser(path)
    out = invert(den, data(3), nfe=8, solver="dpm++2m", spacing="karras", return_info=True)
    assert torch.equal(out.grid, pfode.grid(path, 8, "karras")) and out.nfe == 8
    # the identical grid is used when sampling back: the round trip of a high-order solver is accurate
    rt = round_trip(den, data(3), nfe=40, solver="dpm++3m", spacing="karras")
    assert rt.rel_err < 1e-2 and rt.nfe == 80


def test_bdia_round_trip_is_exact_where_plain_ddim_is_not():
    path = P.VP()
    den = GMM.denoiser(path)
    x = data(8)
    grid = pfode.grid(path, 10)
    plain = round_trip(den, x, grid=grid, solver="ddim")
    print(f"10 DDIM steps, float64: plain inversion round trip relative error {plain.rel_err:.2e}")
    assert plain.rel_err > 1e-2
    for solver in ("ddim", "dpm++2s", "heun"):
        for gamma in (1.0, 0.5):
            rt = round_trip(den, x, grid=grid, solver=solver, method="bdia", gamma=gamma)
            print(f"BDIA-{solver} gamma={gamma}: round trip relative error {rt.rel_err:.2e}, {rt.nfe} evals")
            assert rt.rel_err < 1e-5
    edm = round_trip(GMM.denoiser(P.EDM()), x, nfe=10, solver="ddim", method="bdia", spacing="karras")
    assert edm.rel_err < 1e-5


def test_bdia_ddim_costs_one_evaluation_per_step_and_samples_well():
    path = P.VP()
    den = GAUSS.denoiser(path)
    inv = invert(
        den,
        GAUSS.sample(4, generator=torch.Generator().manual_seed(3)),
        grid=pfode.grid(path, 12),
        method="bdia",
        return_info=True,
    )
    assert inv.nfe == 12 and inv.x_next is not None
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = GAUSS.flow_map(x_T, path.t_max, path.t_min, path)
    grid = pfode.grid(path, 40)
    out = bdia_sample(den, x_T, grid, return_info=True)
    x, nfe = out.x, out.nfe
    ddim = pfode.sample(den, x_T, grid, "ddim", denoise=False)
    assert nfe == 40
    assert float((x - exact).abs().max()) < float((ddim - exact).abs().max())


def test_bad_input():
    path = P.VP()
    den = GMM.denoiser(path)
    x = data(2)
    for solver in ("ddpm", "euler-maruyama"):
        with pytest.raises(ValueError, match="stochastic"):
            invert(den, x, grid=pfode.grid(path, 5), solver=solver)
    with pytest.raises(ValueError, match="single-step"):
        invert(den, x, grid=pfode.grid(path, 5), solver="dpm++2m", method="bdia")
    with pytest.raises(ValueError, match="gamma"):
        invert(den, x, grid=pfode.grid(path, 5), method="bdia", gamma=0.0)
    with pytest.raises(ValueError, match="method"):
        invert(den, x, grid=pfode.grid(path, 5), method="edict")
    with pytest.raises(ValueError, match="zero noise"):
        invert(den, x, grid=pfode.grid(path, 5, "karras", t_end=0.0))
    with pytest.raises(TypeError, match="x0"):
        invert(den, x.long(), grid=pfode.grid(path, 5))
