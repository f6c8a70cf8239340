"""Tests of prediction conversions and :class:`pfode.Denoiser`.

Network targets are built from their definitions (``v = alpha eps - sigma x0``, ``score = -eps / sigma``,
``velocity = d/dt (alpha x0 + sigma eps)`` by autograd), never from the module's own formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pfode
from pfode import paths as P
from pfode.predictions import PREDICTIONS, Coeffs, convert, from_x0_eps, to_x0_eps

SETTINGS = settings(max_examples=30, deadline=None)

PATHS = {
    "vp": P.VP(),
    "cosine": P.VPCosine(),
    "ddpm": P.VPDiscrete.ddpm(),
    "subvp": P.SubVP(),
    "ve": P.VE(),
    "edm": P.EDM(),
    "linear": P.Linear(),
    "trig": P.Trig(),
    "affine": P.Affine(lambda t: torch.cos(math.pi * t / 2) ** 2, lambda t: torch.sin(math.pi * t / 2)),
}
NAMES = list(PATHS)
_RANGE = {"affine": (1e-3, 0.99)}  # alpha = cos^2 is ~2.5e-6 at 0.999: conversions lose digits there


def interior_t(name: str, u: float) -> float:
    path = PATHS[name]
    lo, hi = _RANGE.get(name, (path.t_min, path.t_max))
    t = lo + u * (hi - lo)
    if isinstance(path, P.VPDiscrete):  # away from the knots, where d_alpha jumps
        i = min(int(t * path.n), path.n - 1)
        t = (i + min(max(t * path.n - i, 0.01), 0.99)) / path.n
    return min(max(t, lo + 1e-6 * (hi - lo)), hi - 1e-6 * (hi - lo))


def autograd_dt(fn, t: float) -> float:
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = fn(tt)
        if not y.requires_grad:
            return 0.0
        (g,) = torch.autograd.grad(y, tt)
    return float(g)


def coefficients(path, t: float):
    """alpha, sigma and their derivatives (autograd) as floats."""
    return (
        float(path.alpha(t)),
        float(path.sigma(t)),
        autograd_dt(path.alpha, t),
        autograd_dt(path.sigma, t),
    )


def target_of(kind: str, x0, eps, a, s, da, ds):
    """What a network of type ``kind`` outputs for the pair (x0, eps), from the definitions."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "score":  # grad_x log N(x; a x0, s^2 I) at x = a x0 + s eps
        x = a * x0 + s * eps
        return -(x - a * x0) / s**2
    if kind == "velocity":
        return da * x0 + ds * eps
    raise AssertionError(kind)


def rand_pair(seed: int, shape=(4, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def assert_close(a, b, tol=1e-10):
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} * {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# pure conversions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_convert_round_trip_all_pairs(name, u, seed):
    path = PATHS[name]
    t = interior_t(name, u)
    x0, eps = rand_pair(seed)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x = a * x0 + s * eps
    g = torch.Generator().manual_seed(seed + 1)
    for src in PREDICTIONS:
        v = torch.randn(x.shape, generator=g, dtype=torch.float64) * (1.0 / s if src == "score" else 1.0)
        for dst in PREDICTIONS:
            there = convert(v, src, dst, x, path, t)
            back = convert(there, dst, src, x, path, t)
            assert_close(back, v)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(u=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_from_then_to_recovers_pair(name, u, seed):
    path = PATHS[name]
    t = interior_t(name, u)
    x0, eps = rand_pair(seed)
    a, s, da, ds = coefficients(path, t)
    x = a * x0 + s * eps
    c = Coeffs.at(path, t, like=x)
    for kind in PREDICTIONS:
        out = from_x0_eps(kind, x0, eps, c)
        assert_close(out, target_of(kind, x0, eps, a, s, da, ds), 1e-11)
        x0h, epsh = to_x0_eps(kind, out, x, c)
        assert_close(x0h, x0)
        assert_close(epsh, eps)


@pytest.mark.parametrize("name", ["vp", "edm", "linear", "ddpm"])
def test_convert_matches_definitions_per_sample_times(name):
    """``convert`` with a ``[B]`` time tensor: the targets at each sample's own time."""
    path = PATHS[name]
    x0, eps = rand_pair(7, shape=(5, 2, 3))
    ts = [interior_t(name, u) for u in (0.05, 0.2, 0.5, 0.8, 0.97)]
    cs = [coefficients(path, t) for t in ts]
    x = torch.stack([c[0] * x0[i] + c[1] * eps[i] for i, c in enumerate(cs)])
    t = torch.tensor(ts, dtype=torch.float64)
    for src in PREDICTIONS:
        value = torch.stack([target_of(src, x0[i], eps[i], *c) for i, c in enumerate(cs)])
        for dst in PREDICTIONS:
            want = torch.stack([target_of(dst, x0[i], eps[i], *c) for i, c in enumerate(cs)])
            assert_close(convert(value, src, dst, x, path, t), want, 1e-9)


def test_convert_bad_names():
    path, x = P.VP(), torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="source"):
        convert(x, "noise", "x0", x, path, 0.5)
    with pytest.raises(ValueError, match="target"):
        convert(x, "eps", "flow", x, path, 0.5)
    c = Coeffs.at(path, 0.5)
    with pytest.raises(ValueError, match="prediction"):
        to_x0_eps("bad", x, x, c)
    with pytest.raises(ValueError, match="prediction"):
        from_x0_eps("bad", x, x, c)


# ---------------------------------------------------------------------------------------------
# Denoiser with nets that output the exact target
# ---------------------------------------------------------------------------------------------


class ExactNet:
    """A network that outputs the exact ``kind`` target of (x0, eps) at whatever path time it is told."""

    def __init__(self, path, kind, x0, eps, time_to_t=lambda tn: tn):
        self.path, self.kind, self.x0, self.eps, self.time_to_t = path, kind, x0, eps, time_to_t
        self.seen = []

    def __call__(self, x, t_net, **cond):
        self.seen.append((x, t_net, cond))
        assert t_net.shape == (x.shape[0],)
        outs = []
        for i, tn in enumerate(t_net.tolist()):
            t = float(self.time_to_t(tn))
            outs.append(target_of(self.kind, self.x0[i], self.eps[i], *coefficients(self.path, t)))
        return torch.stack(outs).to(x.dtype)


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_denoiser_recovers_pair_from_exact_net(name, kind):
    path = PATHS[name]
    x0, eps = rand_pair(3, shape=(3, 2, 2))
    t = torch.tensor([interior_t(name, u) for u in (0.1, 0.5, 0.9)], dtype=torch.float64)
    a, s = path.alpha(t)[:, None, None], path.sigma(t)[:, None, None]
    x = a * x0 + s * eps
    net = ExactNet(path, kind, x0, eps)
    den = pfode.Denoiser(net, path, prediction=kind)
    x0h, epsh = den(x, t)
    assert x0h.dtype == torch.float64 and x0h.shape == x.shape
    assert_close(x0h, x0, 1e-9)
    assert_close(epsh, eps, 1e-9)
    ((seen_x, seen_t, _),) = net.seen
    assert seen_x is x
    torch.testing.assert_close(seen_t, t, rtol=0, atol=0)
    # the solver fast path agrees at a single time
    tt = float(t[1])
    a1, s1, da1, ds1 = (float(f(tt)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    xs = x[1:2]
    net1 = ExactNet(path, kind, x0[1:2], eps[1:2])
    den1 = pfode.Denoiser(net1, path, prediction=kind)
    fast = den1.x0(xs, torch.tensor([tt], dtype=torch.float64), a1, s1, da1, ds1)
    assert_close(fast, x0[1:2], 1e-9)


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_denoiser_scalar_time_and_float32(kind):
    path = P.VP()
    x0, eps = rand_pair(11, shape=(4, 3), dtype=torch.float64)
    t = 0.4
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x = (a * x0 + s * eps).float()
    net = ExactNet(path, kind, x0, eps)
    den = pfode.Denoiser(net, path, prediction=kind)
    x0h, epsh = den(x, t)
    assert x0h.dtype == torch.float32 and epsh.dtype == torch.float32
    torch.testing.assert_close(x0h, x0.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(epsh, eps.float(), rtol=1e-4, atol=1e-4)
    ((_, seen_t, _),) = net.seen
    assert seen_t.dtype == torch.float32 and seen_t.shape == (4,)
    assert bool((seen_t == torch.tensor(t, dtype=torch.float32)).all())


def test_denoiser_passes_conditioning():
    path = P.EDM()
    got = {}

    def net(x, t, label=None):
        got["label"] = label
        return torch.zeros_like(x)

    den = pfode.Denoiser(net, path, prediction="eps")
    x = torch.randn(2, 3, dtype=torch.float64)
    x0h, epsh = den(x, 1.0, label="cat")
    assert got["label"] == "cat"
    torch.testing.assert_close(x0h, x)  # eps = 0 on EDM (alpha = 1)
    torch.testing.assert_close(epsh, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# Denoiser with a small random torch network
# ---------------------------------------------------------------------------------------------


class SmallNet(torch.nn.Module):
    def __init__(self, d: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(d + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, d)
        ).double()

    def forward(self, x, t):
        return self.body(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("name", ["vp", "cosine", "ddpm", "ve", "edm", "linear", "affine"])
def test_denoiser_with_random_net_is_consistent(name, kind):
    """The pair returned must reconstruct x and reproduce the network's output by definition."""
    path = PATHS[name]
    net = SmallNet(3, seed=5)
    den = pfode.Denoiser(net, path, prediction=kind)
    ts = [interior_t(name, u) for u in (0.1, 0.4, 0.7, 0.95)]
    t = torch.tensor(ts, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        out = net(x, t)
        x0h, epsh = den(x, t)
    for i, ti in enumerate(ts):
        a, s, da, ds = coefficients(path, ti)
        assert_close(a * x0h[i] + s * epsh[i], x[i], 1e-10)
        assert_close(target_of(kind, x0h[i], epsh[i], a, s, da, ds), out[i], 1e-9)


# ---------------------------------------------------------------------------------------------
# time inputs
# ---------------------------------------------------------------------------------------------


def test_time_input_index_on_vpdiscrete():
    path = PATHS["ddpm"]
    x0, eps = rand_pair(4, shape=(3, 2))
    t = torch.tensor([0.0505, 0.5, 1.0], dtype=torch.float64)
    x = path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * eps
    net = ExactNet(path, "eps", x0, eps, time_to_t=lambda i: (i + 1) / 1000)
    den = pfode.Denoiser(net, path, prediction="eps", time_input="index")
    x0h, epsh = den(x, t)
    ((_, seen_t, _),) = net.seen
    torch.testing.assert_close(
        seen_t, torch.tensor([49.5, 499.0, 999.0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert_close(x0h, x0, 1e-9)
    assert_close(epsh, eps, 1e-12)


def test_time_input_sigma():
    x0, eps = rand_pair(5, shape=(2, 3))
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    # VP: sigma(t) = sqrt(1 - exp(-(beta_min t + (beta_max - beta_min) t^2 / 2)))
    sig = np.sqrt(1 - np.exp(-(0.1 * t.numpy() + 0.5 * 19.9 * t.numpy() ** 2)))
    path = P.VP()

    def sig_to_t(s):
        # invert the closed form: 9.95 t^2 + 0.1 t + log(1 - s^2) = 0
        c = math.log(1 - s * s)
        return (-0.1 + math.sqrt(0.01 - 4 * 9.95 * c)) / (2 * 9.95)

    net = ExactNet(path, "v", x0, eps, time_to_t=sig_to_t)
    den = pfode.Denoiser(net, path, prediction="v", time_input="sigma")
    x = path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * eps
    x0h, epsh = den(x, t)
    ((_, seen_t, _),) = net.seen
    np.testing.assert_allclose(seen_t.numpy(), sig, rtol=1e-13)
    assert_close(x0h, x0, 1e-9)
    assert_close(epsh, eps, 1e-9)
    # EDM: the network's sigma is the path time itself
    seen = []
    den = pfode.Denoiser(
        lambda x, s: seen.append(s) or torch.zeros_like(x), P.EDM(), "eps", time_input="sigma"
    )
    den(torch.zeros(2, 1, dtype=torch.float64), torch.tensor([3.5, 0.25], dtype=torch.float64))
    assert seen[0].tolist() == [3.5, 0.25]


def test_time_input_reversed_flow_matching_convention():
    """A flow-matching net with data at time 1: x_r = r x0 + (1 - r) eps, velocity dx/dr = x0 - eps."""
    path = P.Linear()
    x0, eps = rand_pair(6, shape=(3, 4))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = (1 - t)[:, None] * x0 + t[:, None] * eps
    seen = []

    def fm_net(x, r):
        seen.append(r)
        return x0 - eps  # d/dr (r x0 + (1 - r) eps)

    den = pfode.Denoiser(fm_net, path, prediction="velocity", time_input="reversed")
    x0h, epsh = den(x, t)
    torch.testing.assert_close(seen[0], 1 - t, rtol=0, atol=1e-15)
    assert_close(x0h, x0, 1e-12)
    assert_close(epsh, eps, 1e-12)
    # the fast path negates the velocity too
    den1 = pfode.Denoiser(lambda x, r: (x0 - eps)[:1], path, prediction="velocity", time_input="reversed")
    fast = den1.x0(x[:1], 1 - t[:1], 0.8, 0.2, -1.0, 1.0)
    assert_close(fast, x0[:1], 1e-12)
    # a reversed-time x0-predictor is not negated
    den = pfode.Denoiser(lambda x, r: x0, path, prediction="x0", time_input="reversed")
    x0h, epsh = den(x, t)
    assert_close(x0h, x0, 0)
    assert_close(epsh, eps, 1e-12)


def test_time_input_callable():
    path = P.VP()
    x0, eps = rand_pair(8, shape=(2, 3))
    t = torch.tensor([0.25, 0.75], dtype=torch.float64)
    x = path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * eps

    def to_net(tt):
        return 1000.0 * tt

    net = ExactNet(path, "x0", x0, eps, time_to_t=lambda tn: tn / 1000.0)
    den = pfode.Denoiser(net, path, prediction="x0", time_input=to_net)
    x0h, epsh = den(x, t)
    ((_, seen_t, _),) = net.seen
    torch.testing.assert_close(seen_t, torch.tensor([250.0, 750.0], dtype=torch.float64))
    assert_close(x0h, x0, 1e-12)
    assert_close(epsh, eps, 1e-10)
    assert "to_net" in repr(den)


def test_time_input_t_is_identity():
    den = pfode.Denoiser(lambda x, t: x, P.Trig(), "x0", time_input="t")
    torch.testing.assert_close(
        den.net_time(torch.tensor([0.1, 0.6])), torch.tensor([0.1, 0.6], dtype=torch.float64)
    )


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def _zero_net(x, t):
    return torch.zeros_like(x)


def test_denoiser_unknown_prediction():
    with pytest.raises(ValueError, match="prediction='noise'") as e:
        pfode.Denoiser(_zero_net, P.VP(), prediction="noise")
    for kind in PREDICTIONS:
        assert kind in str(e.value)
    with pytest.raises(TypeError, match="prediction"):
        pfode.Denoiser(_zero_net, P.VP(), prediction=3)


def test_denoiser_unknown_time_input():
    with pytest.raises(ValueError, match="time_input='step'"):
        pfode.Denoiser(_zero_net, P.VP(), time_input="step")
    with pytest.raises(TypeError, match="time_input"):
        pfode.Denoiser(_zero_net, P.VP(), time_input=5)
    with pytest.raises(ValueError, match="time_input='index'"):
        pfode.Denoiser(_zero_net, P.VP(), time_input="index")


def test_denoiser_bad_net_or_path():
    with pytest.raises(TypeError, match="net"):
        pfode.Denoiser("not a net", P.VP())
    with pytest.raises(TypeError, match="path"):
        pfode.Denoiser(_zero_net, "vp")


def test_denoiser_output_shape_mismatch_names_both_shapes():
    den = pfode.Denoiser(lambda x, t: torch.cat([x, x], dim=1), P.VP())
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="output") as e:
        den(x, 0.5)
    assert "(2, 6, 4, 4)" in str(e.value) and "(2, 3, 4, 4)" in str(e.value)
    den = pfode.Denoiser(lambda x, t: x.numpy(), P.VP())
    with pytest.raises(TypeError, match="tensor"):
        den(x, 0.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_denoiser_non_finite_x(bad):
    den = pfode.Denoiser(_zero_net, P.VP())
    x = torch.zeros(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x"):
        den(x, 0.5)


def test_denoiser_bad_x_and_t():
    den = pfode.Denoiser(_zero_net, P.VP())
    with pytest.raises(TypeError, match="x"):
        den(np.zeros((2, 3)), 0.5)
    with pytest.raises(TypeError, match="x"):
        den(torch.zeros(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="t must"):
        den(torch.zeros(2, 3), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="t must"):
        den(torch.zeros(2, 3), torch.zeros(2, 2))


def test_package_exports_each_name_once_and_all_resolve():
    assert len(pfode.__all__) == len(set(pfode.__all__))
    assert all(hasattr(pfode, n) for n in pfode.__all__)


def test_every_entry_point_rejects_a_bare_network_with_the_same_hint():
    x = torch.zeros(2, 3)
    net = lambda x, t: x  # noqa: E731
    calls = [
        lambda: pfode.sample(net, x, nfe=4),
        lambda: pfode.Sampler(net, nfe=4),
        lambda: pfode.log_likelihood(net, x),
        lambda: pfode.invert(net, x, nfe=4),
        lambda: pfode.adjoint_sample(net, x, nfe=4),
        lambda: pfode.cfg(net, 2.0),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"denoiser must be a pfode\.Denoiser, got function; wrap your network"):
            call()


# ---------------------------------------------------------------------------------------------
# prediction objects, x0_at, descriptions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("name", ["vp", "ddpm", "edm", "linear", "affine"])
def test_fast_float_x0_matches_the_tensor_conversion(name, kind):
    from pfode.predictions import get_prediction

    path, t = PATHS[name], interior_t(name, 0.37)
    x0, eps = rand_pair(5)
    a, s, da, ds = coefficients(path, t)
    out = target_of(kind, x0, eps, a, s, da, ds)
    x = a * x0 + s * eps
    pred = get_prediction(kind)
    assert pred.name == kind and get_prediction(pred) is pred
    fast = pred.x0(out.clone(), x, a, s, da, ds)
    assert_close(fast, pred.to_x0_eps(out, x, Coeffs(a, s, da, ds))[0], 1e-12)
    assert_close(fast, x0, 1e-9)
    den = pfode.Denoiser(lambda x_, t_: out, path, prediction=kind)
    assert_close(den.x0(x, torch.full((5,), t), a, s, da, ds), x0, 1e-9)


def test_unknown_prediction_cannot_fall_through_to_velocity():
    from pfode.predictions import Prediction, get_prediction

    with pytest.raises(ValueError, match="prediction='flow'.*valid values: eps, x0, v, score, velocity"):
        get_prediction("flow")
    a, s, da, ds = 0.8, 0.6, -0.9, 1.2
    outputs = set()
    for kind in PREDICTIONS:  # each type's maps are consistent: x = a x0 + s eps, and output(pair(out)) = out
        pred = get_prediction(kind)
        assert isinstance(pred, Prediction)
        (px, po), (ex, eo) = pred.to_x0(a, s, da, ds), pred.to_eps(a, s, da, ds)
        ox, oe = pred.to_out(a, s, da, ds)
        assert abs(a * px + s * ex - 1) < 1e-12 and abs(a * po + s * eo) < 1e-12, kind
        assert abs(ox * px + oe * ex) < 1e-12 and abs(ox * po + oe * eo - 1) < 1e-12, kind
        outputs.add((round(ox, 9), round(oe, 9)))
    assert len(outputs) == len(PREDICTIONS)  # five different outputs: no type falls through to another
    assert not hasattr(pfode.Denoiser, "_velocity_sign")


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("time_input", ["t", "sigma", "reversed"])
def test_x0_at_is_the_call_at_per_sample_times(kind, time_input):
    path = P.Trig()
    den = pfode.Denoiser(lambda x, t: torch.sin(x) * t[:, None], path, prediction=kind, time_input=time_input)
    x = torch.randn(4, 3)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    got = den.x0_at(x, t)
    assert got.dtype == torch.float32 and torch.equal(got, den(x, t)[0])
    assert torch.equal(den.x0_at(x, 0.4), den(x, 0.4)[0])
    xd = x.double().requires_grad_(True)
    (g,) = torch.autograd.grad(den.x0_at(xd, t).sum(), xd)  # differentiable in x
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="t must be a float or a \\[B\\] tensor with B=4"):
        den.x0_at(x, t[:3])


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_denoiser_spec_round_trip(kind):
    import json

    cases = ((P.VPDiscrete.ddpm(100), "index"), (P.EDM(0.01, 40.0), "sigma"), (P.Trig(0.01, 0.9), "reversed"))
    for path, ti in cases:
        den = pfode.Denoiser(lambda x, t: torch.cos(x) * t[:, None], path, prediction=kind, time_input=ti)
        spec = json.loads(json.dumps(den.spec()))
        assert spec["version"] == 1 and spec["prediction"] == kind and spec["time_input"] == ti
        back = pfode.Denoiser.from_spec(den.net, spec)
        assert back.spec() == spec and type(back.path) is type(path)
        x, t = torch.randn(3, 2), torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64) * path.t_max
        assert all(torch.equal(a, b) for a, b in zip(back(x, t), den(x, t)))


def test_denoiser_spec_refuses_what_json_cannot_describe_and_names_bad_keys():
    with pytest.raises(ValueError, match="time_input=.*callable, which cannot be described"):
        pfode.Denoiser(_zero_net, P.VP(), time_input=lambda t: 2 * t).spec()
    with pytest.raises(ValueError, match="cannot be described as JSON"):
        pfode.Denoiser(_zero_net, PATHS["affine"]).spec()
    good = pfode.Denoiser(_zero_net, P.VP(), "v").spec()
    with pytest.raises(ValueError, match="key 'sampler' is unknown; valid keys: version, path, prediction"):
        pfode.Denoiser.from_spec(_zero_net, {**good, "sampler": "x"})
    for key in ("version", "path", "prediction", "time_input"):
        bad = {k: v for k, v in good.items() if k != key}
        with pytest.raises(ValueError, match=f"has no '{key}'; it needs the keys version, path"):
            pfode.Denoiser.from_spec(_zero_net, bad)
    with pytest.raises(ValueError, match="version=2; this pfode reads version 1"):
        pfode.Denoiser.from_spec(_zero_net, {**good, "version": 2})
    with pytest.raises(ValueError, match="prediction='noise'"):
        pfode.Denoiser.from_spec(_zero_net, {**good, "prediction": "noise"})


def test_checks_module_no_longer_imports_predictions():
    import inspect

    import pfode._checks
    from pfode.predictions import check_denoiser

    assert "predictions" not in inspect.getsource(pfode._checks)
    with pytest.raises(TypeError, match="teacher must be a pfode.Denoiser"):
        check_denoiser(_zero_net, "teacher")
