"""Tests of :func:`pfode.grid` and :func:`pfode.as_grid`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pfode
from pfode import paths as P
from pfode.grids import SPACINGS

SETTINGS = settings(max_examples=40, deadline=None)

PATHS = {
    "vp": P.VP(),
    "cosine": P.VPCosine(),
    "ddpm": P.VPDiscrete.ddpm(),
    "subvp": P.SubVP(),
    "ve": P.VE(),
    "edm": P.EDM(),
    "linear": P.Linear(),
    "trig": P.Trig(),
    "affine": P.Affine(
        lambda t: torch.cos(math.pi * t / 2) ** 2,
        lambda t: torch.sin(math.pi * t / 2),
        t_min=0.01,
        t_max=0.99,
    ),
}
NAMES = list(PATHS)


def _check_shape(g, steps, t_start, t_end):
    assert isinstance(g, torch.Tensor)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,) and g.device.type == "cpu"
    assert bool(torch.isfinite(g).all())
    assert bool((g[1:] < g[:-1]).all()), "grid must decrease strictly"
    assert float(g[0]) == t_start and float(g[-1]) == t_end


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(steps=st.integers(1, 80), spacing=st.sampled_from(SPACINGS))
def test_default_grid_shape_and_ends(name, steps, spacing):
    path = PATHS[name]
    g = pfode.grid(path, steps, spacing)
    _check_shape(g, steps, path.t_max, path.t_min)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(steps=st.integers(1, 80), u=st.floats(0.0, 0.45), w=st.floats(0.55, 1.0))
def test_logsnr_uniform_in_lam(name, steps, u, w):
    path = PATHS[name]
    lo, hi = path.t_min, path.t_max
    t_end, t_start = lo + u * (hi - lo), lo + w * (hi - lo)
    g = pfode.grid(path, steps, "logsnr", t_start=t_start, t_end=t_end)
    _check_shape(g, steps, t_start, t_end)
    lam = path.lam(g)
    want = torch.linspace(float(lam[0]), float(lam[-1]), steps + 1, dtype=torch.float64)
    torch.testing.assert_close(lam, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(steps=st.integers(1, 80), rho=st.floats(1.0, 10.0))
def test_karras_uniform_in_s_pow_inv_rho(name, steps, rho):
    path = PATHS[name]
    g = pfode.grid(path, steps, "karras", rho=rho)
    _check_shape(g, steps, path.t_max, path.t_min)
    r = (path.sigma(g) / path.alpha(g)) ** (1.0 / rho)
    want = torch.linspace(float(r[0]), float(r[-1]), steps + 1, dtype=torch.float64)
    torch.testing.assert_close(r, want, rtol=1e-9, atol=1e-12)


def test_karras_on_edm_is_the_karras_schedule():
    """EDM's eq. (5): sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    smin, smax, rho, n = 0.002, 80.0, 7.0, 18
    i = np.arange(n)
    want = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    g = pfode.grid(P.EDM(smin, smax), n - 1, "karras", rho=rho)
    np.testing.assert_allclose(g.numpy(), want, rtol=1e-13)


def test_logsnr_on_edm_is_geometric():
    g = pfode.grid(P.EDM(), 10, "logsnr")
    np.testing.assert_allclose(g.numpy(), np.geomspace(80.0, 0.002, 11), rtol=1e-13)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(steps=st.integers(1, 80))
def test_uniform_and_quadratic_closed_forms(name, steps):
    path = PATHS[name]
    ts, te = path.t_max, path.t_min
    i = np.arange(steps + 1) / steps
    tol = dict(rtol=1e-14, atol=1e-15 * max(1.0, ts))
    np.testing.assert_allclose(pfode.grid(path, steps, "uniform").numpy(), ts + (te - ts) * i, **tol)
    np.testing.assert_allclose(
        pfode.grid(path, steps, "quadratic").numpy(), te + (ts - te) * (1 - i) ** 2, **tol
    )


@pytest.mark.parametrize("name", ["edm", "linear", "vp", "cosine", "ddpm", "subvp", "trig"])
@pytest.mark.parametrize("spacing", ["karras", "uniform", "quadratic"])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grid_may_end_at_zero_noise(name, spacing, steps):
    path = PATHS[name]
    assert path.reaches_zero
    g = pfode.grid(path, steps, spacing, t_end=0.0)
    _check_shape(g, steps, path.t_max, 0.0)
    assert float(path.sigma(g[-1])) == 0.0


@pytest.mark.parametrize("name", ["edm", "linear", "vp", "ddpm"])
def test_logsnr_to_zero_noise_raises(name):
    with pytest.raises(ValueError, match="logsnr"):
        pfode.grid(PATHS[name], 10, "logsnr", t_end=0.0)


def test_karras_needs_finite_s_at_start():
    with pytest.raises(ValueError, match="karras"):
        pfode.grid(P.Linear(), 10, "karras", t_start=1.0)


def test_custom_ends_and_ve_to_zero():
    g = pfode.grid(P.VE(), 5, "logsnr", t_start=0.9, t_end=0.0)
    np.testing.assert_allclose(g.numpy(), np.linspace(0.9, 0.0, 6), rtol=1e-13, atol=1e-15)
    g = pfode.grid(P.EDM(), 3, "uniform", t_start=100.0, t_end=1.0)
    np.testing.assert_allclose(g.numpy(), [100.0, 67.0, 34.0, 1.0], rtol=1e-15)


def test_grid_bad_input():
    vp = P.VP()
    with pytest.raises(ValueError, match="spacing='linear'") as e:
        pfode.grid(vp, 10, "linear")
    for s in SPACINGS:
        assert s in str(e.value)
    with pytest.raises(ValueError, match="steps"):
        pfode.grid(vp, 0)
    with pytest.raises(ValueError, match="steps"):
        pfode.grid(vp, -3)
    for bad in (2.0, "10", True, None):
        with pytest.raises(TypeError, match="steps"):
            pfode.grid(vp, bad)
    with pytest.raises(ValueError, match="t_start"):
        pfode.grid(vp, 10, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="t_start"):
        pfode.grid(vp, 10, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="t_start"):
        pfode.grid(vp, 10, t_start=1.5)
    with pytest.raises(ValueError, match="t_end"):
        pfode.grid(vp, 10, t_end=-0.1)
    with pytest.raises(ValueError, match="t_start"):
        pfode.grid(vp, 10, t_start=math.nan)
    with pytest.raises(TypeError, match="t_end"):
        pfode.grid(vp, 10, t_end="0")
    with pytest.raises(ValueError, match="rho"):
        pfode.grid(vp, 10, "karras", rho=0.0)
    with pytest.raises(TypeError, match="path"):
        pfode.grid("vp", 10)
    with pytest.raises(TypeError, match="spacing"):
        pfode.grid(vp, 10, spacing=1)


# ---------------------------------------------------------------------------------------------
# as_grid
# ---------------------------------------------------------------------------------------------


def test_as_grid_accepts_sequences():
    g = pfode.as_grid(P.VP(), [1.0, 0.5, 0.1])
    assert g.dtype == torch.float64 and g.tolist() == [1.0, 0.5, 0.1]
    g = pfode.as_grid(P.EDM(), np.array([80.0, 1.0, 0.0], dtype=np.float32))
    assert g.dtype == torch.float64 and g.tolist() == [80.0, 1.0, 0.0]
    g = pfode.as_grid(P.Linear(), torch.tensor([1.0, 0.0]))
    assert g.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_as_grid_non_finite(bad):
    with pytest.raises(ValueError, match="grid has non-finite"):
        pfode.as_grid(P.EDM(), [10.0, bad, 0.1])


@pytest.mark.parametrize("g", [[0.1, 0.5, 1.0], [1.0, 0.5, 0.5, 0.1], [1.0, 0.2, 0.3]])
def test_as_grid_non_monotone(g):
    with pytest.raises(ValueError, match="grid must decrease strictly"):
        pfode.as_grid(P.VP(), g)


@pytest.mark.parametrize("g", [[1.5, 0.5], [1.0, -0.1], [1.0 + 1e-12, 0.5]])
def test_as_grid_out_of_range(g):
    with pytest.raises(ValueError, match="grid spans"):
        pfode.as_grid(P.VP(), g)


def test_as_grid_bad_shape_or_type():
    with pytest.raises(TypeError, match="grid"):
        pfode.as_grid(P.VP(), 10)
    with pytest.raises(TypeError, match="grid"):
        pfode.as_grid(P.VP(), torch.tensor(0.5))
    with pytest.raises(TypeError, match="grid"):
        pfode.as_grid(P.VP(), ["a", "b"])
    with pytest.raises(ValueError, match="grid must be 1-D"):
        pfode.as_grid(P.VP(), [0.5])
    with pytest.raises(ValueError, match="grid must be 1-D"):
        pfode.as_grid(P.VP(), [[1.0, 0.5], [0.4, 0.1]])


def test_an_adaptive_solver_needs_only_the_ends():
    """sample(solver="dopri5") without grid or nfe integrates from t_start to t_end (no contradictory advice)."""
    from pfode.analytic import Gaussian

    g = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 0.5)
    path = P.VP()
    den = g.denoiser(path)
    x = torch.randn(4, 2, dtype=torch.float64)
    out = pfode.sample(den, x, solver="dopri5", return_info=True)
    assert out.times[:2] == [path.t_max, path.t_min]
    want = pfode.sample(den, x, torch.tensor([path.t_max, path.t_min], dtype=torch.float64), "dopri5")
    assert torch.equal(out.x, want)
    half = pfode.sample(den, x, solver="dopri5", t_start=0.5, return_info=True)
    assert half.times[0] == 0.5
