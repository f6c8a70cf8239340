"""Property and closed-form tests of the affine Gaussian paths in :mod:`pfode.paths`.

Derivatives are checked against torch autograd of ``alpha``/``sigma``; SDE coefficients against
their definitions (and the Score-SDE closed forms); the DDPM table against an independent numpy
construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfode import paths as P

SETTINGS = settings(max_examples=40, deadline=None)


def _cos2(t):
    return torch.cos(math.pi * t / 2) ** 2


def _sin(t):
    return torch.sin(math.pi * t / 2)


def _d_cos2(t):  # d/dt cos^2(pi t / 2) = -(pi / 2) sin(pi t)
    return -(math.pi / 2) * torch.sin(math.pi * t)


def _d_sin(t):
    return (math.pi / 2) * torch.cos(math.pi * t / 2)


FACTORIES = {
    "vp": P.VP,
    "cosine": P.VPCosine,
    "ddpm": P.VPDiscrete.ddpm,
    "subvp": P.SubVP,
    "ve": P.VE,
    "edm": P.EDM,
    "linear": P.Linear,
    "trig": P.Trig,
    "affine-autograd": lambda: P.Affine(_cos2, _sin),
    "affine-given": lambda: P.Affine(_cos2, _sin, d_alpha_fn=_d_cos2, d_sigma_fn=_d_sin, name="cos2-sin"),
}
PATHS = {name: make() for name, make in FACTORIES.items()}
NAMES = list(PATHS)

# The Affine paths span [0, 1] with sigma(0) = 0 and alpha(1) = 0; test them inside [1e-3, 1 - 1e-3].
_RANGE = {"affine-autograd": (1e-3, 1 - 1e-3), "affine-given": (1e-3, 1 - 1e-3)}

unit = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True)


def interior_t(name: str, u: float) -> float:
    """A time in the open interior of the path's default range; for VPDiscrete, away from the knots."""
    path = PATHS[name]
    lo, hi = _RANGE.get(name, (path.t_min, path.t_max))
    if isinstance(path, P.VPDiscrete):
        n = path.n
        pos = lo * n + u * (hi - lo) * n  # in units of knot spacing
        i = min(int(pos), n - 1)
        frac = min(max(pos - i, 0.01), 0.99)
        return (i + frac) / n
    t = lo + u * (hi - lo)
    return min(max(t, lo + 1e-9 * (hi - lo)), hi - 1e-9 * (hi - lo))


def autograd_dt(fn, t: float) -> float:
    """``d fn / dt`` at ``t`` by torch autograd (0 when fn does not depend on t)."""
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = fn(tt)
        if not y.requires_grad:
            return 0.0
        (g,) = torch.autograd.grad(y, tt, allow_unused=True)
    return 0.0 if g is None else float(g)


def close(a, b, rtol=1e-10, atol=1e-12):
    return abs(float(a) - float(b)) <= atol + rtol * abs(float(b))


# ---------------------------------------------------------------------------------------------
# properties on every path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=unit)
def test_alpha_sigma_positive_and_finite(name, u):
    path = PATHS[name]
    t = interior_t(name, u)
    a, s = path.alpha(t), path.sigma(t)
    assert a.dtype == torch.float64 and s.dtype == torch.float64
    assert math.isfinite(float(a)) and math.isfinite(float(s))
    assert float(a) > 0 and float(s) > 0


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u1=unit, u2=unit)
def test_lam_strictly_decreasing(name, u1, u2):
    path = PATHS[name]
    t1, t2 = sorted((interior_t(name, u1), interior_t(name, u2)))
    if t1 == t2:
        return
    assert float(path.lam(t1)) > float(path.lam(t2))
    assert float(path.d_lam(t1)) < 0


@pytest.mark.parametrize("name", NAMES)
def test_lam_decreasing_on_dense_grid(name):
    path = PATHS[name]
    lo, hi = _RANGE.get(name, (path.t_min, path.t_max))
    t = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    lam = path.lam(t)
    assert bool(torch.isfinite(lam).all())
    assert bool((lam[1:] < lam[:-1]).all())


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=unit)
def test_derivatives_match_autograd(name, u):
    path = PATHS[name]
    t = interior_t(name, u)
    assert close(path.d_alpha(t), autograd_dt(path.alpha, t))
    assert close(path.d_sigma(t), autograd_dt(path.sigma, t))
    assert close(path.d_lam(t), autograd_dt(path.lam, t), rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=unit)
def test_t_of_lam_inverts_lam(name, u):
    path = PATHS[name]
    t = interior_t(name, u)
    back = float(path.t_of_lam(path.lam(t)))
    assert abs(back - t) <= 1e-10 * max(1.0, abs(t))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=unit)
def test_f_and_g2_match_definitions(name, u):
    path = PATHS[name]
    t = interior_t(name, u)
    f_ref = autograd_dt(lambda x: torch.log(path.alpha(x)), t)  # f = d log alpha / dt
    s2 = float(path.sigma(t)) ** 2
    g2_ref = (
        autograd_dt(lambda x: path.sigma(x) ** 2, t) - 2.0 * f_ref * s2
    )  # g^2 = d sigma^2/dt - 2 f sigma^2
    assert close(path.f(t), f_ref, atol=1e-12)
    assert close(path.g2(t), g2_ref, rtol=1e-9, atol=1e-12)
    assert float(path.g2(t)) > 0
    # the identity g^2 = -2 sigma^2 dlam/dt
    assert close(path.g2(t), -2.0 * s2 * autograd_dt(path.lam, t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=unit)
def test_s_and_t_of_s(name, u):
    path = PATHS[name]
    t = interior_t(name, u)
    s = path.s(t)
    assert close(s, float(path.sigma(t)) / float(path.alpha(t)), rtol=1e-13)
    assert abs(float(path.t_of_s(s)) - t) <= 1e-10 * max(1.0, t)


@pytest.mark.parametrize("name", NAMES)
def test_vectorised_shapes_and_dtype(name):
    path = PATHS[name]
    lo, hi = _RANGE.get(name, (path.t_min, path.t_max))
    t = torch.linspace(lo, hi, 12, dtype=torch.float32).reshape(3, 4)
    for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma, path.lam, path.f, path.g2, path.s):
        out = fn(t)
        assert out.shape == (3, 4) and out.dtype == torch.float64
    back = path.t_of_lam(path.lam(t.double()))
    assert back.shape == (3, 4)
    assert torch.allclose(back, t.double(), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------

T_CHECK = np.array([1e-3, 0.05, 0.3, 0.5, 0.77, 0.99])


def test_vp_matches_score_sde_closed_form():
    bmin, bmax = 0.1, 20.0
    path = P.VP(bmin, bmax)
    t = T_CHECK
    beta = bmin + t * (bmax - bmin)
    integral = bmin * t + 0.5 * (bmax - bmin) * t**2  # int_0^t beta
    alpha = np.exp(-0.5 * integral)
    tt = torch.tensor(t)
    np.testing.assert_allclose(path.alpha(tt).numpy(), alpha, rtol=1e-14)
    np.testing.assert_allclose(path.sigma(tt).numpy(), np.sqrt(1 - np.exp(-integral)), rtol=1e-13)
    np.testing.assert_allclose(path.f(tt).numpy(), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(path.g2(tt).numpy(), beta, rtol=1e-11)


def test_subvp_matches_score_sde_closed_form():
    bmin, bmax = 0.1, 20.0
    path = P.SubVP(bmin, bmax)
    t = T_CHECK
    beta = bmin + t * (bmax - bmin)
    integral = bmin * t + 0.5 * (bmax - bmin) * t**2
    tt = torch.tensor(t)
    np.testing.assert_allclose(path.sigma(tt).numpy(), 1 - np.exp(-integral), rtol=1e-13)
    np.testing.assert_allclose(path.f(tt).numpy(), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(path.g2(tt).numpy(), beta * (1 - np.exp(-2 * integral)), rtol=1e-11)


def test_ve_edm_linear_trig_closed_forms():
    t = torch.tensor(T_CHECK)
    ve = P.VE(0.01, 50.0)
    np.testing.assert_allclose(ve.sigma(t).numpy(), 0.01 * (50.0 / 0.01) ** T_CHECK, rtol=1e-13)
    np.testing.assert_allclose(ve.g2(t).numpy(), 2 * ve.sigma(t).numpy() ** 2 * math.log(5000.0), rtol=1e-12)
    edm = P.EDM()
    np.testing.assert_allclose(edm.g2(t).numpy(), 2 * T_CHECK, rtol=1e-14)
    np.testing.assert_allclose(edm.lam(t).numpy(), -np.log(T_CHECK), rtol=1e-14)
    lin = P.Linear()
    np.testing.assert_allclose(lin.alpha(t).numpy(), 1 - T_CHECK, rtol=1e-15)
    np.testing.assert_allclose(lin.f(t).numpy(), -1 / (1 - T_CHECK), rtol=1e-13)
    trig = P.Trig()
    np.testing.assert_allclose(trig.alpha(t).numpy() ** 2 + trig.sigma(t).numpy() ** 2, 1.0, rtol=1e-15)


def test_cosine_matches_improved_ddpm_definition():
    s = 0.008
    path = P.VPCosine(s=s)
    t = T_CHECK

    def fbar(x):
        return np.cos((x + s) / (1 + s) * np.pi / 2) ** 2

    abar = fbar(t) / fbar(0.0)
    np.testing.assert_allclose(path.alpha(torch.tensor(t)).numpy() ** 2, abar, rtol=1e-13)
    np.testing.assert_allclose(path.sigma(torch.tensor(t)).numpy() ** 2, 1 - abar, rtol=1e-10)
    assert -4.8 < float(path.lam(path.t_max)) < -4.75


@pytest.mark.parametrize("name", ["vp", "cosine", "ddpm", "subvp", "edm", "linear", "trig"])
def test_paths_reaching_zero_noise(name):
    path = PATHS[name]
    assert path.reaches_zero
    assert float(path.sigma(path.t_lo)) == 0.0
    assert float(path.lam(path.t_lo)) == math.inf
    # the inverse maps lam = +inf (s = 0) back to the zero-noise time exactly
    assert float(path.t_of_lam(math.inf)) == path.t_lo
    assert float(path.t_of_s(0.0)) == path.t_lo
    # and huge finite lam to a time in range, close to t_lo
    t_big = float(path.t_of_lam(300.0))
    assert path.t_lo <= t_big < 1e-6


def test_ve_does_not_reach_zero():
    assert not P.VE().reaches_zero


@pytest.mark.parametrize("name", ["vp", "cosine", "subvp", "linear", "trig", "edm", "ddpm"])
def test_t_of_lam_relative_accuracy_at_tiny_t(name):
    path = PATHS[name]
    t = torch.tensor([1e-9, 1e-7, 1e-5], dtype=torch.float64)
    back = path.t_of_lam(path.lam(t))
    assert torch.allclose(back, t, rtol=1e-8, atol=0)


def test_vp_with_zero_beta_min_inverts():
    path = P.VP(beta_min=0.0, beta_max=1.0)
    t = torch.tensor([0.0, 1e-4, 0.5, 1.0], dtype=torch.float64)
    back = path.t_of_lam(path.lam(t))
    assert torch.allclose(back, t, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# VPDiscrete
# ---------------------------------------------------------------------------------------------


def _ddpm_table(n=1000):
    betas = np.linspace(1e-4, 0.02, n)
    return betas, np.cumprod(1.0 - betas)


def test_vpdiscrete_reproduces_ddpm_table_at_knots():
    betas, ac = _ddpm_table()
    t = torch.tensor((np.arange(1000) + 1) / 1000.0)
    for path in (P.VPDiscrete.ddpm(), P.VPDiscrete(betas=betas), P.VPDiscrete(alphas_cumprod=ac)):
        a2 = path.alpha(t).numpy() ** 2
        np.testing.assert_allclose(a2, ac, rtol=1e-14, atol=0)
        np.testing.assert_allclose(path.sigma(t).numpy() ** 2, 1 - ac, rtol=1e-12)
        assert path.n == 1000
        assert path.t_min == pytest.approx(1e-3) and path.t_max == 1.0


def test_vpdiscrete_alphas_cumprod_equals_betas():
    betas, ac = _ddpm_table()
    p1, p2 = P.VPDiscrete(betas=betas), P.VPDiscrete(alphas_cumprod=ac)
    t = torch.linspace(0, 1, 3001, dtype=torch.float64)
    for fn in ("alpha", "sigma", "lam", "d_alpha", "d_sigma"):
        torch.testing.assert_close(getattr(p1, fn)(t[1:]), getattr(p2, fn)(t[1:]), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(p1.alphas_cumprod, torch.tensor(ac), rtol=1e-15, atol=0)


def test_vpdiscrete_interpolates_log_alpha_linearly():
    betas, ac = _ddpm_table()
    path = P.VPDiscrete(betas=betas)
    la = np.concatenate([[0.0], 0.5 * np.log(ac)])  # log alpha at t = 0, 1/N, ..., 1
    i = np.array([0, 3, 499, 998])
    w = np.array([0.25, 0.5, 0.1, 0.9])
    t = (i + w) / 1000
    expected = la[i] + w * (la[i + 1] - la[i])
    np.testing.assert_allclose(path.log_alpha(torch.tensor(t)).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(path.alpha(torch.tensor(t)).numpy(), np.exp(expected), rtol=1e-14)
    # slope of the segment to the right of a knot
    np.testing.assert_allclose(
        path.d_alpha(torch.tensor(t)).numpy(),
        np.exp(expected) * (la[i + 1] - la[i]) * 1000,
        rtol=1e-10,
    )


def test_vpdiscrete_index_round_trip():
    path = P.VPDiscrete.ddpm()
    idx = torch.arange(1000, dtype=torch.float64)
    t = path.t_of_index(idx)
    torch.testing.assert_close(t, (idx + 1) / 1000, rtol=0, atol=1e-15)
    torch.testing.assert_close(path.index_of_t(t), idx, rtol=0, atol=1e-12)
    assert float(path.index_of_t(0.5)) == pytest.approx(499.0, abs=1e-12)
    tt = torch.rand(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(path.t_of_index(path.index_of_t(tt)), tt, rtol=0, atol=1e-14)


def test_vpdiscrete_t_of_lam_at_knots():
    path = P.VPDiscrete.ddpm()
    t = path.t_of_index(torch.arange(1000, dtype=torch.float64))
    torch.testing.assert_close(path.t_of_lam(path.lam(t)), t, rtol=0, atol=1e-10)


def test_vpdiscrete_bad_input():
    with pytest.raises(ValueError, match="betas"):
        P.VPDiscrete()
    with pytest.raises(ValueError, match="betas"):
        P.VPDiscrete(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.8])
    with pytest.raises(ValueError, match="betas"):
        P.VPDiscrete(betas=[0.1, 1.5])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        P.VPDiscrete(alphas_cumprod=[0.9, 0.95])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        P.VPDiscrete(alphas_cumprod=[1.0, 0.9])
    with pytest.raises(ValueError, match="n="):
        P.VPDiscrete.ddpm(n=1)


# ---------------------------------------------------------------------------------------------
# Affine, constructors, registry
# ---------------------------------------------------------------------------------------------


def test_affine_with_and_without_derivatives_agree():
    a, b = PATHS["affine-autograd"], PATHS["affine-given"]
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(a.d_alpha(t), b.d_alpha(t), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.d_sigma(t), b.d_sigma(t), rtol=1e-12, atol=1e-14)
    assert repr(b) == "Affine(name='cos2-sin', t_min=0, t_max=1)"


def test_affine_equal_to_builtin_trig():
    aff = P.Affine(lambda t: torch.cos(math.pi * t / 2), lambda t: torch.sin(math.pi * t / 2))
    trig = P.Trig()
    t = torch.linspace(0.01, 0.99, 33, dtype=torch.float64)
    for fn in ("alpha", "sigma", "d_alpha", "d_sigma", "lam", "f", "g2"):
        torch.testing.assert_close(getattr(aff, fn)(t), getattr(trig, fn)(t), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(aff.t_of_lam(trig.lam(t)), t, rtol=0, atol=1e-13)


def test_affine_bad_input():
    with pytest.raises(TypeError, match="alpha_fn"):
        P.Affine(1.0, _sin)
    with pytest.raises(ValueError, match="t_min"):
        P.Affine(_cos2, _sin, t_min=1.0, t_max=0.5)
    with pytest.raises(ValueError, match="lam"):
        P.Affine(lambda t: t + 0.1, lambda t: 1.0 - t + 0.1)  # log-SNR increasing
    with pytest.raises(ValueError, match="same shape"):
        P.Affine(lambda t: torch.ones(3, dtype=torch.float64), _sin)
    with pytest.raises(ValueError, match="sigma_fn"):
        P.Affine(_cos2, lambda t: t - 0.5)


def test_constructor_bad_input():
    with pytest.raises(ValueError, match="beta_min"):
        P.VP(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_max"):
        P.VP(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="s="):
        P.VPCosine(s=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        P.VE(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        P.EDM(sigma_min=0.0)


def test_get_path_names():
    assert isinstance(P.get_path("vp"), P.VP)
    assert isinstance(P.get_path("cosine"), P.VPCosine)
    assert isinstance(P.get_path("ddpm"), P.VPDiscrete)
    assert P.get_path("vp-discrete", n=10).n == 10
    assert isinstance(P.get_path("rectified-flow"), P.Linear)
    assert P.get_path("edm", sigma_max=10.0).t_max == 10.0
    path = P.Trig()
    assert P.get_path(path) is path
    for name in P.available():
        assert isinstance(P.get_path(name), P.Path)


def test_get_path_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="path='nope'") as e:
        P.get_path("nope")
    for name in P.available():
        assert name in str(e.value)
    with pytest.raises(TypeError, match="path"):
        P.get_path(3)


# ---------------------------------------------------------------------------------------------
# descriptions: spec() / from_spec()
# ---------------------------------------------------------------------------------------------

# every described path class, with constructor arguments away from their defaults
NON_DEFAULT = {
    "vp": lambda: P.VP(beta_min=0.2, beta_max=12.0, t_min=2e-3, t_max=0.95),
    "subvp": lambda: P.SubVP(beta_min=0.05, beta_max=15.0, t_min=5e-3, t_max=0.9),
    "cosine": lambda: P.VPCosine(s=0.01, t_min=3e-3, t_max=0.98),
    "ddpm": lambda: P.VPDiscrete.ddpm(200, beta_start=2e-4, beta_end=0.03),
    "vp-discrete-table": lambda: P.VPDiscrete(alphas_cumprod=torch.linspace(0.999, 0.01, 50) ** 1.5),
    "vp-discrete-betas": lambda: P.VPDiscrete(betas=torch.linspace(1e-3, 0.05, 40, dtype=torch.float32)),
    "ve": lambda: P.VE(sigma_min=0.02, sigma_max=30.0),
    "edm": lambda: P.EDM(sigma_min=0.005, sigma_max=60.0),
    "linear": lambda: P.Linear(t_min=0.01, t_max=0.97),
    "trig": lambda: P.Trig(t_min=0.02, t_max=0.96),
}


def test_every_named_path_class_is_covered_by_the_spec_tests():
    made = {type(make()) for make in NON_DEFAULT.values()}
    classes = {c for n, c in vars(P).items() if isinstance(c, type) and issubclass(c, P.Path) and n[0] != "_"}
    assert classes - made == {P.Path, P.Affine}


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_spec_round_trips_exactly_through_json(name):
    import json

    path = NON_DEFAULT[name]()
    spec = path.spec()
    text = json.dumps(spec)  # JSON-serialisable
    back = P.from_spec(json.loads(text))
    assert type(back) is type(path) and back.spec() == spec
    assert (back.t_min, back.t_max, back.t_lo, back.t_hi) == (path.t_min, path.t_max, path.t_lo, path.t_hi)
    t = torch.linspace(path.t_min, min(path.t_max, 1.0), 97, dtype=torch.float64)
    for fn in ("alpha", "sigma", "lam", "d_alpha", "d_sigma"):
        assert torch.equal(getattr(back, fn)(t), getattr(path, fn)(t)), fn
    assert P.Path.from_spec(spec).spec() == spec and P.get_path(spec).spec() == spec
    defaults = type(path) if name not in ("ddpm", "vp-discrete-table", "vp-discrete-betas") else None
    if defaults is not None:  # the arguments matter: a default path has another description
        assert defaults().spec() != spec


def test_ddpm_tables_are_described_compactly():
    assert P.VPDiscrete.ddpm(1000).spec() == {"name": "ddpm", "n": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    table = P.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 10, dtype=torch.float64))
    assert table.spec()["name"] == "vp-discrete" and len(table.spec()["alphas_cumprod"]) == 10


def test_affine_paths_cannot_be_described():
    with pytest.raises(ValueError, match="user functions.*cannot be described as JSON"):
        PATHS["affine-autograd"].spec()


def test_from_spec_names_bad_keys_and_names():
    with pytest.raises(ValueError, match=r"key 'beta' is unknown for 'vp'; valid keys: name, beta_min, beta_max"):
        P.from_spec({"name": "vp", "beta": 1.0})
    with pytest.raises(ValueError, match="has no 'name'; valid names: .*cosine"):
        P.from_spec({"t_min": 0.1})
    with pytest.raises(ValueError, match="name='nope' is unknown; valid names: .*trig"):
        P.from_spec({"name": "nope"})
    with pytest.raises(ValueError, match="alphas_cumprod"):
        P.from_spec({"name": "vp-discrete", "alphas_cumprod": [0.5, 0.9]})  # not decreasing
    with pytest.raises(TypeError, match="must be a dict"):
        P.from_spec("vp")
