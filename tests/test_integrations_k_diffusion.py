"""pfode.integrations.k_diffusion and pfode.integrations.flow_matching.

k-diffusion's own samplers are loaded from ``k_diffusion/sampling.py`` by file path under a private module
name (its ``__init__`` imports torchvision and more), with a private ``utils`` providing ``append_dims``, the
one helper the ODE samplers compared here use.
"""

from __future__ import annotations

import math

import pytest
import torch

import pfode
from pfode.analytic import Gaussian, GaussianMixture
from pfode.integrations import flow_matching
from pfode.integrations import k_diffusion as kd
from pfode.paths import EDM, Linear


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and keeps timings stable on shared machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ksampling():
    """k-diffusion's sampling module, loaded without the rest of k-diffusion by pfode's own loader."""
    for dep in ("scipy", "torchdiffeq", "torchsde", "tqdm"):
        pytest.importorskip(dep)
    try:
        return kd.load_sampling()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(d=4, k=3, generator=torch.Generator().manual_seed(0))


def _kmodel(target, path=None):
    path = path or EDM()

    def model(x, sigma, scale=1.0):
        x0, _ = target.x0_eps(x, sigma, path)
        return x0 * scale

    return model


def _sigmas(ksampling, n=10, lo=0.002, hi=80.0):
    return ksampling.get_sigmas_karras(n, lo, hi).to(torch.float64)


# -- k-diffusion agreement ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpmpp_2m"])
@pytest.mark.parametrize("final_zero", [True, False])
def test_matches_k_diffusion(ksampling, mixture, name, final_zero):
    model = _kmodel(mixture)
    sigmas = _sigmas(ksampling)
    if not final_zero:
        sigmas = sigmas[:-1]
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    ref = getattr(ksampling, name)(model, x.clone(), sigmas, disable=True)
    out = getattr(kd, name)(model, x.clone(), sigmas, disable=True)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert _rel(out, ref) < 1e-5


def test_callback_keys_and_values_match_k_diffusion(ksampling, mixture):
    model = _kmodel(mixture)
    sigmas = _sigmas(ksampling, 6)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80.0
    ours, theirs = [], []
    kd.sample_dpmpp_2m(model, x.clone(), sigmas, callback=ours.append)
    ksampling.sample_dpmpp_2m(model, x.clone(), sigmas, callback=theirs.append, disable=True)
    assert len(ours) == len(theirs) == len(sigmas) - 1
    for a, b in zip(ours, theirs):
        assert set(a) == {"x", "i", "sigma", "sigma_hat", "denoised"} == set(b)
        assert a["i"] == b["i"]
        assert float(a["sigma"]) == float(b["sigma"]) == float(a["sigma_hat"])
        assert _rel(a["x"], b["x"]) < 1e-6 and _rel(a["denoised"], b["denoised"]) < 1e-6


def test_extra_args_are_passed(ksampling, mixture):
    model = _kmodel(mixture)
    sigmas = _sigmas(ksampling, 5)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80.0
    ref = ksampling.sample_euler(model, x.clone(), sigmas, extra_args={"scale": 0.5}, disable=True)
    out = kd.sample_euler(model, x.clone(), sigmas, extra_args={"scale": 0.5})
    assert _rel(out, ref) < 1e-6
    assert _rel(out, kd.sample_euler(model, x.clone(), sigmas)) > 1e-3


def test_load_sampling_leaves_no_stub_in_sys_modules(ksampling):
    """A later ``import k_diffusion`` must get the real package, never a stub pfode left behind."""
    import sys

    assert kd.load_sampling() is ksampling and callable(ksampling.sample_euler)
    for name in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling"):
        mod = sys.modules.get(name)
        assert mod is None or getattr(mod, "__file__", None), name  # absent, or the real (file-backed) module
    assert not [k for k in sys.modules if k.startswith("_pfode_k_diffusion")]
    assert ksampling.utils.append_dims(torch.zeros(3), 3).shape == (3, 1, 1)


# -- every pfode solver, k-diffusion signature -------------------------------------------------------
def test_every_solver_has_a_sampler():
    for name in pfode.solvers.available():
        fn = getattr(kd, kd.sampler_name(name))
        assert callable(fn) and fn.solver_name == name and kd.SAMPLERS[fn.__name__] == name
    assert kd.sampler_name("dpm++2m") == "sample_dpmpp_2m"
    assert kd.sampler_name("dpm-fast") == "sample_dpm_fast"
    assert kd.sampler_name("dpm++2m-sde") == "sample_dpmpp_2m_sde"


def test_every_sampler_solves_a_gaussian():
    """Deterministic samplers land on the exact flow map; stochastic ones run and stay finite."""
    g = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.diag(torch.tensor([0.3, 1.0, 2.0])))
    model = _kmodel(g)
    hi = 80.0
    sigmas = torch.cat([pfode.grid(EDM(), 32, "karras"), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * hi
    exact = g.flow_map(x, hi, 0.0, EDM())
    for fname, name in kd.SAMPLERS.items():
        solver = pfode.solvers.get(name)
        out = getattr(kd, fname)(model, x.clone(), sigmas, generator=torch.Generator().manual_seed(5))
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), fname
        if not solver.stochastic:  # 32 Karras steps: first order within 10%, second 2%, higher orders 1%
            assert _rel(out, exact) < {1: 0.1, 2: 2e-2}.get(solver.order, 1e-2), (fname, _rel(out, exact))


def test_single_step_to_zero_is_the_denoiser(mixture):
    model = _kmodel(mixture)
    x = torch.randn(5, 4, dtype=torch.float64)
    seen = []
    out = kd.sample_unipc(model, x, torch.tensor([3.0, 0.0]), callback=seen.append)
    assert torch.allclose(out, model(x, torch.full((5,), 3.0, dtype=torch.float64)))
    assert len(seen) == 1 and seen[0]["i"] == 0


def test_solver_options_and_generator(mixture):
    model = _kmodel(mixture)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0])
    x = torch.randn(6, 4, dtype=torch.float64) * 10
    a = kd.sample_unipc(model, x, sigmas, order=3)
    b = kd.sample_unipc(model, x, sigmas, order=1)
    assert not torch.allclose(a, b)
    s1 = kd.sample_ddpm(model, x, sigmas, generator=torch.Generator().manual_seed(0))
    s2 = kd.sample_ddpm(model, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2)
    # neutral k-diffusion churn settings are accepted
    c = kd.sample_euler(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0)
    assert torch.allclose(c, kd.sample_euler(model, x, sigmas))


def test_bad_input(mixture):
    model = _kmodel(mixture)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="s_churn"):
        kd.sample_euler(model, x, torch.tensor([1.0, 0.0]), s_churn=1.0)
    with pytest.raises(ValueError, match="decrease"):
        kd.sample_euler(model, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2"):
        kd.sample_euler(model, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="noise_sampler"):
        kd.sample_ddpm(model, x, torch.tensor([1.0, 0.0]), noise_sampler=lambda a, b: torch.randn_like(x))
    with pytest.raises(ValueError, match="option"):
        kd.sample_euler(model, x, torch.tensor([1.0, 0.0]), bogus=3)
    with pytest.raises(AttributeError):
        kd.sample_not_a_solver  # noqa: B018


def test_denoiser_wraps_on_edm(mixture):
    model = _kmodel(mixture)
    model.sigma_min, model.sigma_max = 0.01, 20.0
    den = kd.denoiser(model)
    assert isinstance(den.path, EDM) and den.path.sigma_min == 0.01 and den.path.sigma_max == 20.0
    x = torch.randn(3, 4, dtype=torch.float64)
    x0, eps = den(x, 2.0)
    ref = model(x, torch.full((3,), 2.0, dtype=torch.float64))
    assert torch.allclose(x0, ref) and torch.allclose(eps, (x - ref) / 2.0)


# -- flow matching ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gauss():
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return Gaussian(torch.tensor([1.0, -0.5, 0.25]), a @ a.T / 3 + 0.2 * torch.eye(3, dtype=torch.float64))


def _fm_velocity(target, data_at=1):
    """Exact velocity of the linear interpolant in the chosen time convention."""
    path = Linear()

    def model(x, tau):
        t = 1.0 - tau if data_at == 1 else tau
        x0, eps = target.x0_eps(x, t, path)
        return x0 - eps if data_at == 1 else eps - x0

    return model


def test_flow_matching_wrapper_samples_gaussian(gauss):
    den = flow_matching.denoiser(_fm_velocity(gauss))
    assert isinstance(den.path, Linear) and den.prediction == "velocity" and den.time_input == "reversed"
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    # the wrapper recovers the exact denoiser
    x0, _ = den(x, 0.4)
    assert torch.allclose(x0, gauss.x0_eps(x, 0.4, den.path)[0], atol=1e-10)
    # lam-based solver from t_max, to zero noise (third order: 5e-5 at 40 steps)
    g = pfode.grid(den.path, 40)
    out = pfode.sample(den, x, g, "dpm3")
    assert _rel(out, gauss.flow_map(x, float(g[0]), 0.0, den.path)) < 2e-4
    # RK4 in t from pure noise at t = 1
    g = pfode.grid(den.path, 16, "uniform", t_start=1.0, t_end=1e-3)
    out = pfode.sample(den, x, g, pfode.solvers.get("rk4", variable="t"))
    assert _rel(out, gauss.flow_map(x, 1.0, 0.0, den.path)) < 1e-4


def test_flow_matching_conventions_agree(gauss):
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    g = pfode.grid(Linear(), 12)
    ref = pfode.sample(flow_matching.denoiser(_fm_velocity(gauss)), x, g, "unipc")
    v1 = _fm_velocity(gauss)
    tx = flow_matching.denoiser(lambda t, y: v1(y, t), signature="tx")
    d0 = flow_matching.denoiser(_fm_velocity(gauss, data_at=0), data_at=0)
    assert d0.time_input == "t"
    assert _rel(pfode.sample(tx, x, g, "unipc"), ref) < 1e-12
    assert _rel(pfode.sample(d0, x, g, "unipc"), ref) < 1e-12
    with pytest.raises(ValueError, match="data_at"):
        flow_matching.denoiser(v1, data_at=2)
    with pytest.raises(ValueError, match="signature"):
        flow_matching.denoiser(v1, signature="yx")


def test_sample_recipe_runs_a_tuned_recipe(tmp_path):
    from pfode.tuning import Recipe

    g = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.diag(torch.tensor([0.3, 1.0, 2.0])))
    model = _kmodel(g)
    den = kd.denoiser(model)
    r = pfode.tune(den, 4, shape=(3,), n=8, held_out=4, dtype=torch.float64, budget=40, rounds=1, teacher="ddim",
                   teacher_nfe=50)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * r.t_start
    seen = []
    out = kd.sample_recipe(model, x, r, callback=seen.append)
    assert torch.equal(out, pfode.sample(den, x, r))
    assert len(seen) == r.nfe and {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(seen[0])
    r.save(tmp_path / "r.json")
    assert torch.equal(kd.sample_recipe(model, x, tmp_path / "r.json"), out)
    with pytest.raises(ValueError, match="tuned for the path"):  # other sigma_min/sigma_max: another path
        model.sigma_max = 10.0
        kd.sample_recipe(model, x, Recipe.load(tmp_path / "r.json"))
