"""Mean-reverting diffusion (IR-SDE) and the MRS samplers against closed-form truth.

* the path: IR-SDE's closed forms (``alpha = e^{-thetabar}``, ``sigma^2 = lambda^2 (1 - alpha^2)``,
  ``g^2 = 2 lambda^2 theta``), its discrete cosine table, derivatives, the lam inverse, descriptions;
* the MRS updates written as in the paper, in ``x`` (an independent implementation here), equal pfode's solvers on
  ``y = x - mu`` step for step (ODE and SDE, data and noise prediction);
* shift invariance;
* convergence orders of the ODE samplers against the exact Gaussian flow map (``pfode.analytic`` on the shifted
  target), and convergence in law of IR-SDE's Euler-Maruyama sampler and of the MRS SDE sampler;
* a missing ``mu``, bad input, and a short training run whose checkpoint loads back.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import pfode
from pfode import analytic
from pfode import mean_reverting as mr
from pfode.metrics import w2_gaussian
from pfode.sample import PerSampleNoise

D = 3


def _gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = 0.3 * a @ a.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), cov)


GAUSS = _gaussian()
MIX = analytic.GaussianMixture.random(D, 3, std_range=(0.2, 0.6), generator=torch.Generator().manual_seed(3))
PATH = mr.MeanReverting(stationary_std=0.5)


def _mu(n=6, seed=1):
    return 0.7 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the path ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_path_is_ir_sde_closed_form(schedule):
    p = mr.MeanReverting(stationary_std=0.3, schedule=schedule, alpha_end=0.01)
    t = torch.linspace(1e-3, 1.0, 41, dtype=torch.float64)
    # thetabar = int theta (trapezoid on a fine grid), alpha(1) = alpha_end
    fine = torch.linspace(0.0, 1.0, 200001, dtype=torch.float64)
    tb = torch.cumulative_trapezoid(p.theta(fine), fine)
    assert abs(float(tb[-1]) + math.log(0.01)) < 1e-8
    assert torch.allclose(p.thetabar(fine[1:]), tb, rtol=1e-8, atol=1e-12)
    a, s = p.alpha(t), p.sigma(t)
    assert torch.allclose(a, torch.exp(-p.thetabar(t)), rtol=1e-14)
    assert torch.allclose(s**2, 0.09 * (1 - a**2), rtol=1e-12)
    # SDE coefficients: f = -theta and sigma_t^2 / theta_t = 2 lambda^2, and the generic Path definitions agree
    assert torch.allclose(p.f(t), -p.theta(t), rtol=1e-12)
    assert torch.allclose(p.g2(t), 2 * 0.09 * p.theta(t), rtol=1e-12)
    assert torch.allclose(pfode.paths.Path.g2(p, t), p.g2(t), rtol=1e-9)
    # derivatives against autograd
    tt = t[1:-1].clone().requires_grad_(True)
    (da,) = torch.autograd.grad(torch.exp(-p.thetabar(tt)).sum(), tt)
    (ds,) = torch.autograd.grad(p.sigma(tt).sum(), tt)
    assert torch.allclose(p.d_alpha(t[1:-1]), da, rtol=1e-10)
    assert torch.allclose(p.d_sigma(t[1:-1]), ds, rtol=1e-10)
    # lam decreases strictly and inverts to float64 precision
    lam = p.lam(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert float((p.t_of_lam(lam) - t).abs().max()) < 1e-12
    assert float(p.t_of_lam(torch.tensor(math.inf))) == 0.0


def test_cosine_schedule_is_ir_sde_table():
    """IR-SDE's discrete cosine table (theta_i = 1 - cos^2 ratio at x_i = i / (T + 2)) is our theta up to scale."""
    T, s = 100, 0.008
    x = torch.arange(T + 3, dtype=torch.float64) / (T + 2)
    ac = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
    table = 1 - ac[1:-1] / ac[0]
    p = mr.MeanReverting(cosine_offset=s)
    ours = p.theta(x[1:-1])
    assert torch.allclose(ours / ours[-1], table / table[-1], rtol=1e-12)


def test_spec_round_trip_and_bad_input():
    p = mr.MeanReverting(stationary_std=0.2, schedule="constant", alpha_end=0.02, t_min=1e-3, t_max=0.9)
    q = pfode.paths.from_spec(p.spec())
    assert isinstance(q, mr.MeanReverting) and q.spec() == p.spec()
    t = torch.linspace(1e-3, 0.9, 7, dtype=torch.float64)
    assert torch.equal(q.sigma(t), p.sigma(t))
    assert "mean-reverting" in pfode.paths.available()
    den = pfode.Denoiser(lambda x, t, mu=None: x, p, "eps")
    assert pfode.Denoiser.from_spec(den.net, den.spec()).path.spec() == p.spec()
    with pytest.raises(ValueError, match="stationary_std"):
        mr.MeanReverting(stationary_std=0.0)
    with pytest.raises(ValueError, match="schedule"):
        mr.MeanReverting(schedule="linear")
    with pytest.raises(ValueError, match="alpha_end"):
        mr.MeanReverting(alpha_end=1.5)
    with pytest.raises(ValueError, match="t_min"):
        mr.MeanReverting(t_min=0.5, t_max=0.4)


# --- mu --------------------------------------------------------------------------------------------------
def test_missing_mu_is_a_clear_error():
    den = mr.exact_denoiser(GAUSS, PATH)
    with pytest.raises(ValueError, match="mu is missing"):
        mr.sample(den, None, nfe=5)
    with pytest.raises(ValueError, match="mu is missing"):
        mr.sample_euler_maruyama(den, None, steps=5)
    with pytest.raises(ValueError, match="mu is missing"):  # the plain sampler without the condition
        pfode.sample(den, torch.randn(4, D, dtype=torch.float64), nfe=5)
    net = mr.MuConcat(pfode.nets.MLP(data_shape=(2 * D,), width=16, depth=1))
    with pytest.raises(ValueError, match="mu is missing"):
        net(torch.randn(4, D), torch.rand(4))
    with pytest.raises(ValueError, match="mu has shape"):
        net(torch.randn(4, D), torch.rand(4), mu=torch.randn(4, D + 1))
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        mr.sample(den, [[0.0] * D], nfe=5)
    with pytest.raises(ValueError, match="MeanReverting path"):
        mr.sample(GAUSS.denoiser(pfode.paths.VP()), _mu(), nfe=5)
    with pytest.raises(ValueError, match="twice the channels"):
        mr.MuConcat(pfode.nets.MLP(data_shape=(3,)))
    obj = pfode.train.get_objective("mean-reverting")
    with pytest.raises(ValueError, match="mu is missing"):
        obj.prepare(torch.randn(8, D), torch.Generator().manual_seed(0))


# --- MRS = pfode's exponential integrators on y -------------------------------------------------------------
def _paper_mrs(den, mu, x_T, times, rule, g=None):
    """The MRS updates of Li et al. (2024) written in x, independent of pfode's solvers (float64).

    ``x_t = alpha_t x_0 + (1 - alpha_t) mu + sigma_t eps``; ``h = lam_t - lam_s``. Data prediction
    ``x_t = (sigma_t/sigma_s) x_s + (1 - sigma_t/sigma_s) mu + alpha_t (1 - e^{-h}) (D - mu)`` with
    ``D = x0_hat`` (order 1) or ``(1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}`` (order 2, multistep); noise prediction
    ``x_t = (alpha_t/alpha_s) x_s + (1 - alpha_t/alpha_s) mu - sigma_t (e^h - 1) eps``; the SDE forms with
    ``e^{-2h}`` and ``2 (e^h - 1)`` and the noise ``sigma_t sqrt(1 - e^{-2h}) z`` (data) or
    ``sigma_t sqrt(e^{2h} - 1) z``.
    """
    P = den.path
    a = [float(P.alpha(t)) for t in times]
    s = [float(P.sigma(t)) for t in times]
    lam = [math.log(ai / si) for ai, si in zip(a, s)]
    noise = PerSampleNoise(x_T, g) if g is not None else None

    def x0_eps(x, i, t=None):
        t = times[i] if t is None else t
        x0, eps = den.pair_at(x - mu, t, {"mu": mu})
        return x0 + mu, eps

    x, prev = x_T.clone(), None
    for i in range(len(times) - 1):
        h = lam[i + 1] - lam[i]
        x0, eps = x0_eps(x, i)
        ra, rs = a[i + 1] / a[i], s[i + 1] / s[i]
        if rule == "ode1-data":
            x = rs * x + (1 - rs) * mu + a[i + 1] * (-math.expm1(-h)) * (x0 - mu)
        elif rule == "ode1-noise":
            x = ra * x + (1 - ra) * mu - s[i + 1] * math.expm1(h) * eps
        elif rule == "ode2-data":
            dd = x0
            if prev is not None:
                r = (lam[i] - lam[i - 1]) / h
                dd = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
            x = rs * x + (1 - rs) * mu + a[i + 1] * (-math.expm1(-h)) * (dd - mu)
            prev = x0
        elif rule == "ode2-noise":  # singlestep, midpoint in lam
            tm = P.t_of_lam(torch.tensor(lam[i] + h / 2, dtype=torch.float64))
            am, sm = float(P.alpha(tm)), float(P.sigma(tm))
            u = am / a[i] * x + (1 - am / a[i]) * mu - sm * math.expm1(h / 2) * eps
            _, eps_m = x0_eps(u, i, tm)
            x = ra * x + (1 - ra) * mu - s[i + 1] * math.expm1(h) * eps_m
        elif rule == "sde1-data":
            c = rs * math.exp(-h)
            x = c * x + (1 - c) * mu + a[i + 1] * (-math.expm1(-2 * h)) * (x0 - mu)
            x = x + s[i + 1] * math.sqrt(-math.expm1(-2 * h)) * noise()
        elif rule == "sde1-noise":
            x = ra * x + (1 - ra) * mu - 2 * s[i + 1] * math.expm1(h) * eps
            x = x + s[i + 1] * math.sqrt(math.expm1(2 * h)) * noise()
        elif rule == "sde2-data":
            c = rs * math.exp(-h)
            e = -math.expm1(-2 * h)
            x = c * x + (1 - c) * mu + a[i + 1] * e * (x0 - mu)
            if prev is not None:
                r = (lam[i] - lam[i - 1]) / h
                x = x + 0.5 * a[i + 1] * e / r * (x0 - prev)
            x = x + s[i + 1] * math.sqrt(e) * noise()
            prev = x0
    return x


RULES = [
    ("ode1-data", "mrs-ode-1"),
    ("ode1-noise", "mrs-ode-1"),
    ("ode2-data", "mrs-ode-2-data"),
    ("ode2-noise", "mrs-ode-2-noise"),
    ("sde1-data", "mrs-sde-1-data"),
    ("sde1-noise", "mrs-sde-1-noise"),
    ("sde2-data", "mrs-sde-2-data"),
]


@pytest.mark.parametrize("rule,name", RULES, ids=[r for r, _ in RULES])
def test_mrs_updates_are_exponential_integrators_on_y(rule, name):
    den = mr.exact_denoiser(MIX, PATH)
    mu = _mu()
    grid = pfode.grid(PATH, 20)  # >= 15 steps: no lower-order final step
    g = torch.Generator().manual_seed(5)
    x = mr.sample(den, mu, grid, name, denoise=False, generator=g)
    g = torch.Generator().manual_seed(5)
    x_T = mu + float(PATH.sigma(grid[0])) * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    ref = _paper_mrs(den, mu, x_T, grid.tolist(), rule, g if rule.startswith("sde") else None)
    assert float((x - ref).abs().max()) < 1e-10 * (1 + float(ref.abs().max()))


def test_shift_invariance():
    """Shifting the data and mu by c shifts the restoration by c; sample() is pfode.sample on y = x - mu."""
    mu = _mu()
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    shifted = analytic.Gaussian(GAUSS.mean + c, GAUSS.cov)
    x_T = mu + 0.5 * torch.randn(mu.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for solver in ("dpm++2m", "unipc", "mrs-ode-2-noise"):
        a = mr.sample(mr.exact_denoiser(GAUSS, PATH), mu, solver=solver, nfe=9, x_T=x_T)
        b = mr.sample(mr.exact_denoiser(shifted, PATH), mu + c, solver=solver, nfe=9, x_T=x_T + c)
        assert torch.allclose(a + c, b, atol=1e-10)
    den = mr.exact_denoiser(GAUSS, PATH)
    a = mr.sample(den, mu, solver="dpm++2m", nfe=10, x_T=x_T)
    y = pfode.sample(den, x_T - mu, solver="dpm++2m", nfe=10, cond={"mu": mu})
    assert torch.equal(a, y + mu)
    out = mr.sample(den, mu, solver="dpm++2m", nfe=10, x_T=x_T, return_trajectory=True)
    assert torch.equal(out.x, a) and torch.equal(out.trajectory[0], x_T)


def test_clip_bounds_the_restoration_in_x():
    den = mr.exact_denoiser(GAUSS, PATH)
    mu = _mu()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x = mr.sample(den, mu, solver="dpm++2m", nfe=5, generator=g(), clip=(-0.5, 0.25))
    assert float(x.min()) >= -0.5 - 1e-12 and float(x.max()) <= 0.25 + 1e-12
    assert float(x.min()) < -0.49 and float(x.max()) > 0.24  # the bounds are reached (the data spread is wider)
    wide = mr.sample(den, mu, solver="dpm++2m", nfe=5, generator=g(), clip=(-1e9, 1e9))
    assert torch.allclose(wide, mr.sample(den, mu, solver="dpm++2m", nfe=5, generator=g()), atol=1e-12)
    em = mr.sample_euler_maruyama(den, mu, 5, generator=g(), clip=(-1e9, 1e9))
    assert torch.allclose(em, mr.sample_euler_maruyama(den, mu, 5, generator=g()), atol=1e-10)
    with pytest.raises(ValueError, match="lo < hi"):
        mr.clipped(den, 1.0, -1.0)


# --- orders and laws on the exact Gaussian --------------------------------------------------------------------
STEPS = [20, 40, 80, 160]


@pytest.mark.parametrize("solver", ["ddim", "dpm2", "dpm++2m", "dpm++3m", "unipc", "heun"])
def test_ode_orders_on_exact_gaussian(solver):
    """Error at ``s = sigma/alpha = 0.1`` against the closed-form flow map of the shifted Gaussian (per-sample mu)."""
    den = mr.exact_denoiser(GAUSS, PATH)
    mu = _mu(8)
    T = PATH.t_max
    t_end = float(PATH.t_of_s(torch.tensor(0.1, dtype=torch.float64)))
    x_T = mu + float(PATH.sigma(T)) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(4), dtype=mu.dtype)
    ref = mr.flow_map(GAUSS, x_T, mu, T, t_end, PATH)
    errs = []
    for n in STEPS if solver != "dpm2" else [k // 2 for k in STEPS]:  # dpm2: two evaluations per step
        x = mr.sample(den, mu, pfode.grid(PATH, n, t_end=t_end), solver, x_T=x_T, denoise=False)
        errs.append(float((x - ref).pow(2).mean().sqrt()))
    order = pfode.solvers.get(solver).order
    slope = math.log(errs[-2] / errs[-1]) / math.log(2)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert abs(slope - order) < 0.3, (solver, errs, slope)


class _UnitNoise:
    """Noise that is ``e_j`` at call ``k`` in row ``1 + D + k D + j`` and 0 elsewhere (rows ``0..D``: no noise)."""

    def __init__(self, like, *_):
        self.like, self.k = like, 0

    def __call__(self):
        z = torch.zeros_like(self.like)
        rows = 1 + D + self.k * D + torch.arange(D)
        if rows[-1] < z.shape[0]:
            z[rows, torch.arange(D)] = 1.0
        self.k += 1
        return z


def _exact_law_error(run, calls):
    """Exact W2 between the law of a sampler's output and the data law, for a start from the exact marginal.

    With the exact (affine) denoiser of a Gaussian and a fixed ``mu`` a sampler is affine in the start ``y_T`` and its
    ``calls`` noise draws ``z_k``: ``x = b + A y_T + sum_k C_k z_k``. ``run(x_T, noise)`` on the rows ``y_T = 0``,
    ``e_j`` and ``z_k = e_j`` recovers ``b``, ``A`` and ``C_k``, hence the output law ``N(b + A m_T, A S_T A^T +
    sum_k C_k C_k^T)`` for ``y_T ~ N(m_T, S_T)`` -- no Monte-Carlo error.
    """
    mu0 = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    n = 1 + D + calls * D
    y_T = torch.zeros(n, D, dtype=torch.float64)
    y_T[1 : 1 + D] = torch.eye(D, dtype=torch.float64)
    mu = mu0.expand(n, D).clone()
    out = run(mr.exact_denoiser(GAUSS, PATH), mu, mu + y_T)
    lin = out[1:] - out[0]
    A, C = lin[:D].T, lin[D:].T  # columns: A e_j, C_k e_j
    aT, sT = float(PATH.alpha(PATH.t_max)), float(PATH.sigma(PATH.t_max))
    m_T = aT * (GAUSS.mean - mu0)
    S_T = aT**2 * GAUSS.cov + sT**2 * torch.eye(D, dtype=torch.float64)
    mean, cov = out[0] + A @ m_T, A @ S_T @ A.T + C @ C.T
    return w2_gaussian(mean, cov, GAUSS.mean, GAUSS.cov)


def test_euler_maruyama_baseline_converges_in_law():
    """IR-SDE's sampler (Euler-Maruyama in t): exact weak error ~ 1/steps (weak order 1)."""

    def em(steps):
        return lambda den, mu, x_T: mr.sample_euler_maruyama(den, mu, steps, x_T=x_T, noise=_UnitNoise(mu))

    errs = [_exact_law_error(em(n), n) for n in (25, 50, 100)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    slopes = [math.log(a / b) / math.log(2) for a, b in zip(errs, errs[1:])]
    assert all(0.7 < s < 1.3 for s in slopes), (errs, slopes)
    assert errs[-1] < 0.015, errs  # 0.0103 at IR-SDE's 100 steps


@pytest.mark.parametrize("solver", ["mrs-sde-1-data", "mrs-sde-2-data", "mrs-sde-1-noise"])
def test_mrs_sde_converges_in_law(monkeypatch, solver):
    """The MRS SDE samplers (pfode's SDE solvers on y) converge in law; the data-prediction 2M one with 50
    evaluations is about as close to the data law as IR-SDE's Euler-Maruyama with 100, and with 100 much closer."""
    monkeypatch.setattr(sys.modules["pfode.sample"], "PerSampleNoise", _UnitNoise)

    def mrs(nfe):
        return lambda den, mu, x_T: mr.sample(den, mu, solver=solver, nfe=nfe, x_T=x_T)

    errs = [_exact_law_error(mrs(n), n - 1) for n in (25, 50, 100)]  # the final denoising step draws no noise
    assert errs[0] > errs[1] > errs[2], errs
    assert 0.7 < math.log(errs[1] / errs[2]) / math.log(2), errs
    if solver == "mrs-sde-2-data":
        em = _exact_law_error(
            lambda den, mu, x_T: mr.sample_euler_maruyama(den, mu, 100, x_T=x_T, noise=_UnitNoise(mu)), 100
        )
        assert errs[1] < 1.5 * em and errs[2] < em / 2, (errs, em)


# --- training -----------------------------------------------------------------------------------------------
def test_tiny_training_run_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x0 = MIX.sample(256, g).float()
    mu = x0 + 0.3 * torch.randn(x0.shape, generator=g)
    obj = pfode.train.get_objective("mean-reverting", path={"name": "mean-reverting", "stationary_std": 0.4})
    net = pfode.nets.MLP(data_shape=(2 * D,), width=32, depth=1)
    cfg = {"iterations": 3, "batch_size": 64, "log_every": 0, "tensorboard": False, "quiet": True, "device": "cpu",
           "sample_every": 3, "sample_n": 16, "sample_nfe": 2}
    tr = pfode.train.Trainer(net, obj, (x0, mu), cfg, tmp_path)
    hist = tr.fit()
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    assert list((tmp_path / "samples").glob("*.png"))  # the sample plot restores the latest batch's mu
    model = pfode.models.load(tmp_path)
    assert isinstance(model.net, mr.MuConcat) and model.denoiser.path.spec() == obj.path.spec()
    out = mr.sample(model.denoiser, mu[:5], nfe=4, generator=torch.Generator().manual_seed(0))
    ref = mr.sample(obj.denoiser(tr.ema), mu[:5], nfe=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, D) and torch.allclose(out, ref, atol=1e-6)
    # the loss regresses the shifted target: the exact denoiser's x0 output has the smaller expected loss
    obj0 = pfode.train.get_objective(
        "mean-reverting", path=obj.path, prediction="x0", degradation={"name": "noise", "std": 0.0}
    )
    batch = obj0.prepare(MIX.sample(1000, g), torch.Generator().manual_seed(1))
    exact = mr.exact_denoiser(MIX, obj.path).net
    good = obj0.loss(lambda y, t, mu: exact(y.double(), t, mu=mu.double()).float(), batch)[0]
    bad = obj0.loss(lambda y, t, mu: exact(y.double(), t, mu=mu.double()).float() + 0.1, batch)[0]
    assert float(good) < float(bad)


def test_config_checks_the_objective():
    from pfode.train.config import check_config

    cfg = {
        "data": {"name": "toy2d", "kind": "moons", "n": 512},
        "model": {"name": "mlp", "data_shape": [4], "width": 16, "depth": 1},
        "objective": {
            "name": "mean-reverting",
            "path": {"name": "mean-reverting", "stationary_std": 0.4},
            "degradation": {"name": "noise", "std": 0.2},
        },
        "train": {"iterations": 2, "batch_size": 64},
    }
    assert check_config(cfg) is cfg
    bad = {**cfg, "objective": {**cfg["objective"], "degradation": {"name": "noise", "sd": 0.2}}}
    with pytest.raises(ValueError, match="degradation key 'sd'"):
        check_config(bad)
    bad = {**cfg, "objective": {**cfg["objective"], "path": "cosine"}}
    with pytest.raises(ValueError, match="MeanReverting"):
        check_config(bad)
