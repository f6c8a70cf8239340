"""float16 / bfloat16 sampling on the shipped models: the state stays in the model's dtype, the result is finite,
half precision amplifies rounding no more than float32 does, and a state of another dtype is refused by name."""

from __future__ import annotations

import pytest
import torch

import pfode
from pfode import analytic, models, paths

HALF = (torch.float16, torch.bfloat16)
N = {"digits": 2, "moons": 64}  # float16 convolutions take a slow fallback on the CPU: few digits


def _start(m, n: int) -> torch.Tensor:
    """``sigma(t_max) * z`` in float32 (the same noise for every dtype)."""
    p = m.denoiser.path
    z = torch.randn(n, *m.data_shape, generator=torch.Generator().manual_seed(0))
    return float(p.sigma(p.t_max)) * z


def _nfe(solver: str, want: int) -> int:
    """The smallest budget of at least ``want`` evaluations that ``solver`` spends exactly."""
    s = pfode.solvers.get(solver)
    for nfe in range(want, want + 4 * s.evals_per_step + 2):
        try:
            s.for_nfe(nfe, True)
            return nfe
        except ValueError:
            continue
    raise AssertionError(f"no budget near {want} for {solver}")


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name, dtype):
        if (name, dtype) not in cache:
            cache[name, dtype] = models.load(f"builtin:{name}", dtype=dtype)
        return cache[name, dtype]

    return get


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", ["digits", "moons"])
def test_half_precision_sampling_keeps_the_dtype_through_the_loop(loaded, name, dtype):
    # before the fix every solver stopped at the first evaluation: "mat1 and mat2 must have the same dtype" (the
    # time embedding was float32, the network's weights half)
    m = loaded(name, dtype)
    assert m.dtype == dtype
    x_T = _start(m, N[name]).to(dtype)
    seen = []
    out = pfode.sample(
        m.denoiser, x_T, nfe=6, solver="dpm++2m", return_trajectory=True, callback=lambda d: seen.append(d)
    )
    assert out.x.dtype == dtype and bool(torch.isfinite(out.x).all())
    assert len(out.trajectory) == 7 and all(x.dtype == dtype for x in out.trajectory)
    assert len(seen) == 6 and all(d["x"].dtype == dtype and d["x0_hat"].dtype == dtype for d in seen)


def _amplification(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error against the float64 result in units of ``x``'s machine epsilon."""
    return float((x.double() - ref).norm() / ref.norm()) / torch.finfo(x.dtype).eps


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "unipc"])
@pytest.mark.parametrize("name", ["digits", "moons"])
def test_half_precision_amplifies_rounding_no_more_than_float32(loaded, name, solver):
    """Against the float64 result, the relative error in units of the dtype's epsilon is the rounding amplification of
    the whole computation (network and solver). In float16/bfloat16 it stays within 4x that of float32 (measured:
    0.8-2.4 eps against 2.3-8.3 eps in float32), so half precision costs its own precision and nothing more."""
    x_T = _start(loaded(name, torch.float32), N[name])
    nfe = _nfe(solver, 8)
    ref = pfode.sample(loaded(name, torch.float64).denoiser, x_T.double(), nfe=nfe, solver=solver)
    amp = {}
    for dtype in (torch.float32, *HALF):
        x = pfode.sample(loaded(name, dtype).denoiser, x_T.to(dtype), nfe=nfe, solver=solver)
        assert x.dtype == dtype
        amp[dtype] = _amplification(x, ref)
    for dtype in HALF:
        assert amp[dtype] <= 4 * max(amp[torch.float32], 1.0), (name, solver, amp)


@pytest.mark.parametrize(
    "path, solver, nfe, bound",
    [("vp", "dpm2", 11, 3), ("vp", "dpm3", 16, 3), ("edm", "dpm3", 16, 3), ("vp", "deis", 10, 1.2)],
)
def test_noise_prediction_steps_rebuild_eps_without_cancellation(path, solver, nfe, bound):
    """DPM-Solver and DEIS rebuild ``eps_hat = (x - alpha x0_hat) / sigma`` from the state, which cancels at low
    noise. On the exact denoiser of a Gaussian (a linear flow: the solver is all there is) doing that in the
    half-precision state cost 4-6 eps of the dtype for DPM-Solver and 1.7-1.8 for DEIS; in float32 it costs 1.4-1.9
    and 0.6."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    cov = q @ torch.diag(torch.logspace(-4, 0, 16, dtype=torch.float64)) @ q.T  # standard deviations 0.01 to 1
    target = analytic.Gaussian(0.5 * torch.randn(16, generator=gen, dtype=torch.float64), cov)
    p = paths.get_path(path)
    den = target.denoiser(p)
    x_T = float(p.sigma(p.t_max)) * torch.randn(256, 16, generator=gen, dtype=torch.float64)
    ref = pfode.sample(den, x_T, nfe=nfe, solver=solver)
    for dtype in HALF:
        x = pfode.sample(den, x_T.to(dtype), nfe=nfe, solver=solver)
        assert x.dtype == dtype and _amplification(x, ref) < bound, (dtype, _amplification(x, ref))


def test_every_fixed_step_solver_samples_the_moons_model_in_half_precision(loaded):
    x_T = _start(loaded("moons", torch.float32), 16)
    checked = []
    for solver in pfode.solvers.available():
        if pfode.solvers.get(solver).adaptive:
            continue
        nfe = _nfe(solver, 8)
        for dtype in HALF:
            gen = torch.Generator().manual_seed(1)
            x = pfode.sample(loaded("moons", dtype).denoiser, x_T.to(dtype), nfe=nfe, solver=solver, generator=gen)
            assert x.dtype == dtype and bool(torch.isfinite(x).all()), (solver, dtype)
        checked.append(solver)
    assert {"ddim", "dpm++2m", "euler", "heun", "rk4", "unipc", "deis", "dpm3", "dpm-v3", "usf"} <= set(checked)


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_a_state_in_another_dtype_is_refused_naming_both(loaded, name):
    half, full = loaded(name, torch.float16), loaded(name, torch.float32)
    x = _start(full, 1)
    with pytest.raises(TypeError, match=r"float16 weights but got input x of dtype float32.*x_T.to\(torch.float16\)"):
        pfode.sample(half.denoiser, x, nfe=4)
    with pytest.raises(TypeError, match=r"float32 weights but got input x of dtype bfloat16"):
        pfode.sample(full.denoiser, x.to(torch.bfloat16), nfe=4)


def test_adaptive_solvers_refuse_half_precision_states():
    den = pfode.Denoiser(lambda x, t: 0.1 * x, paths.EDM(), prediction="eps")
    for name in ("dopri5", "dpm-adaptive"):
        with pytest.raises(TypeError, match=f"{name}.*float32 or float64.*float16"):
            pfode.sample(den, torch.randn(2, 3).half(), solver=name)
