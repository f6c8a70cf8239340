"""Exact likelihood of the PF-ODE against closed-form Gaussian-mixture marginals."""

from __future__ import annotations

import math

import pytest
import torch

import pfode
from pfode import paths as P
from pfode.analytic import GaussianMixture
from pfode.likelihood import bits_per_dim, exact_divergence, log_likelihood, trig_velocity
from pfode.predictions import Coeffs, from_x0_eps


def as_prediction(target, path, prediction: str) -> pfode.Denoiser:
    """The exact denoiser of ``target`` as a network of another prediction type."""

    def net(x, t):
        x0, eps = target.x0_eps(x, t, path)
        c = Coeffs.at(path, t, like=x)
        return from_x0_eps(prediction, x0, eps, c).to(x.dtype)

    return pfode.Denoiser(net, path, prediction=prediction)


def data_at_tmin(target, path, n, gen):
    x0 = target.sample(n, generator=gen)
    t = path.t_min
    return float(path.alpha(t)) * x0 + float(path.sigma(t)) * torch.randn(
        x0.shape, generator=gen, dtype=torch.float64
    )


def exact_prior(target, path):
    return lambda z: target.log_prob(z, path.t_max, path)


GMM8 = GaussianMixture.random(8, 4, std_range=(0.1, 1.0), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "path, prediction",
    [
        (P.VP(), "eps"),
        (P.EDM(), "x0"),
        (P.Linear(), "velocity"),
        (P.VP(), "v"),
        (P.EDM(), "score"),
        (P.Linear(), "x0"),
    ],
    ids=["vp-eps", "edm-x0", "linear-velocity", "vp-v", "edm-score", "linear-x0"],
)
def test_exact_divergence_recovers_gmm_log_density_d8(path, prediction):
    gen = torch.Generator().manual_seed(1)
    x = data_at_tmin(GMM8, path, 6, gen)
    den = as_prediction(GMM8, path, prediction)
    out = log_likelihood(den, x, prior=exact_prior(GMM8, path), rtol=1e-6, atol=1e-6)
    exact = GMM8.log_prob(x, path.t_min, path)
    err = float((out.logp - exact).abs().max()) / 8
    print(f"{path!r} {prediction}: max |error| {err:.2e} nats/dim with {out.nfe} evaluations")
    assert err < 1e-4
    assert out.stderr is None and out.logp.dtype == torch.float64 and out.logp.shape == (6,)


def test_exact_divergence_d64_small_batch():
    gm = GaussianMixture.random(64, 4, std_range=(0.1, 1.0), generator=torch.Generator().manual_seed(3))
    path = P.VP()
    gen = torch.Generator().manual_seed(4)
    x = data_at_tmin(gm, path, 3, gen)
    out = log_likelihood(gm.denoiser(path), x, prior=exact_prior(gm, path), rtol=1e-6, atol=1e-6)
    err = float((out.logp - gm.log_prob(x, path.t_min, path)).abs().max()) / 64
    print(f"d=64: max |error| {err:.2e} nats/dim, {out.nfe} evaluations")
    assert err < 1e-4


GMM8_SHARP = GaussianMixture.random(8, 8, std_range=(0.05, 1.0), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "path", [P.VP(), P.Linear(), P.EDM(), P.VE(), P.VPCosine()], ids=["vp", "linear", "edm", "ve", "cosine"]
)
def test_dopri5_accuracy_per_evaluation(path):
    """The benchmark's target mixture (components down to std 0.05): at rtol = atol = 3e-5 the solve in
    theta stays under 3e-5 nats/dim on average within 100 evaluations on every path (stepping in
    asinh(e^lam) with a tolerance relative to the log-density gave about 1e-4 with 97-109)."""
    x = data_at_tmin(GMM8_SHARP, path, 16, torch.Generator().manual_seed(1))
    den = GMM8_SHARP.denoiser(path)
    out = log_likelihood(den, x, prior=exact_prior(GMM8_SHARP, path), rtol=3e-5, atol=3e-5)
    err = (out.logp - GMM8_SHARP.log_prob(x, path.t_min, path)).abs() / 8
    print(f"{path!r}: mean {float(err.mean()):.1e}, max {float(err.max()):.1e} nats/dim, {out.nfe} evaluations")
    assert float(err.mean()) < 3e-5 and float(err.max()) < 2e-4
    assert out.nfe <= 100


@pytest.mark.parametrize("path", [P.VP(), P.EDM(), P.Linear()], ids=["vp", "edm", "linear"])
def test_trig_velocity_and_its_divergence_stay_bounded_at_both_ends(path):
    """The integrand in theta has no singular part: |v| stays O(1) and div_w v vanishes like theta at the
    data end and like cos(theta) at the noise end (in lam or t it grows like e^{-lam} or 1/sigma)."""
    den = GMM8.denoiser(path)
    w = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def div_at(theta):
        ww = w.clone().requires_grad_(True)
        v = trig_velocity(den, ww, torch.full((3,), theta, dtype=torch.float64), None)
        assert torch.isfinite(v).all() and float(v.detach().abs().max()) < 10.0
        return exact_divergence(v, ww)

    for near in (0.0, math.pi / 2):  # div(near +- 1e-4) = div(near +- 1e-3) / 10: vanishes linearly
        sign = 1.0 if near == 0.0 else -1.0
        a, b = div_at(near + sign * 1e-4), div_at(near + sign * 1e-3)
        assert float(b.abs().min()) > 0.0
        assert torch.allclose(a * 10.0, b, rtol=0.02, atol=0.0), (near, a, b)


def test_default_prior_is_the_noise_gaussian():
    path = P.VP()
    x = data_at_tmin(GMM8, path, 4, torch.Generator().manual_seed(2))
    den = GMM8.denoiser(path)
    a = log_likelihood(den, x)
    s = float(path.sigma(path.t_max))
    expect = -0.5 * ((a.x_T**2).sum(1) / s**2 + 8 * math.log(2 * math.pi * s**2))
    assert torch.allclose(a.prior_logp, expect)
    # the mismatch with the exact marginal prior is small on VP (alpha(1) ~ 6.6e-3)
    b = log_likelihood(den, x, prior=exact_prior(GMM8, path))
    assert float((a.logp - b.logp).abs().max()) / 8 < 1e-2


def test_image_shaped_input_matches_flat():
    path = P.EDM()
    x = data_at_tmin(GMM8, path, 3, torch.Generator().manual_seed(5))
    den = GMM8.denoiser(path)
    flat = log_likelihood(den, x, rtol=1e-6, atol=1e-6)
    img = log_likelihood(den, x.reshape(3, 2, 2, 2), rtol=1e-6, atol=1e-6)
    assert torch.allclose(flat.logp, img.logp, rtol=0, atol=1e-9)
    assert img.x_T.shape == (3, 2, 2, 2)


def test_exact_divergence_any_shape():
    w = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(z):
        return torch.tanh(z.reshape(z.shape[0], -1) @ w).reshape(z.shape)

    z = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    div = exact_divergence(f(z), z)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], z[b].detach())
        assert torch.allclose(div[b], torch.diagonal(jac.reshape(12, 12)).sum())


def test_fixed_grid_rk4_converges():
    path = P.Linear()
    x = data_at_tmin(GMM8, path, 4, torch.Generator().manual_seed(6))
    den = GMM8.denoiser(path)
    exact = GMM8.log_prob(x, path.t_min, path)
    errs = []
    for n in (20, 80):
        out = log_likelihood(den, x, grid=pfode.grid(path, n), prior=exact_prior(GMM8, path))
        assert out.nfe == 4 * n
        errs.append(float((out.logp - exact).abs().mean()) / 8)
    print("rk4 errors at 20 / 80 steps:", errs)
    assert errs[1] < errs[0] / 20 and errs[1] < 1e-4
    heun = log_likelihood(den, x, grid=pfode.grid(path, 40), solver="heun", prior=exact_prior(GMM8, path))
    assert heun.nfe == 80 and float((heun.logp - exact).abs().mean()) / 8 < 1e-2


def _hutchinson_runs(den, x, grid, probes, seeds, noise="rademacher"):
    outs = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(100 + s)
        outs.append(
            log_likelihood(
                den, x, grid=grid, divergence="hutchinson", probes=probes, noise=noise, generator=g
            )
        )
    return outs


def test_hutchinson_is_unbiased_and_error_falls_like_inverse_sqrt_probes():
    path = P.VP()
    x = data_at_tmin(GMM8, path, 3, torch.Generator().manual_seed(7))
    den = GMM8.denoiser(path)
    grid = pfode.grid(path, 8)
    exact = log_likelihood(den, x, grid=grid).logp  # same steps: the estimate differs only by the probes
    for noise in ("rademacher", "gaussian"):
        runs = _hutchinson_runs(den, x, grid, 4, 16, noise)
        est = torch.stack([r.logp for r in runs])  # [seeds, B]
        mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
        z = ((mean - exact) / se).abs()
        print(f"{noise}: |mean - exact| / stderr = {z.tolist()}")
        assert bool((z < 3.0).all())
        # the reported stderr matches the spread over seeds
        assert 0.5 < float(torch.stack([r.stderr for r in runs]).mean() / est.std(0).mean()) < 2.0
    rms = {}
    for k in (1, 16):
        est = torch.stack([r.logp for r in _hutchinson_runs(den, x, grid, k, 12)])
        rms[k] = float(((est - exact) ** 2).mean().sqrt())
    ratio = rms[1] / rms[16]
    print(f"RMS error with 1 probe {rms[1]:.3g}, 16 probes {rms[16]:.3g}: ratio {ratio:.2f} (expect ~4)")
    assert 2.5 < ratio < 6.5


def test_hutchinson_with_dopri5_single_probe_has_nan_stderr():
    path = P.Linear()
    x = data_at_tmin(GMM8, path, 2, torch.Generator().manual_seed(8))
    out = log_likelihood(
        GMM8.denoiser(path), x, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    assert out.stderr is not None and bool(torch.isnan(out.stderr).all())
    exact = GMM8.log_prob(x, path.t_min, path)
    assert float((out.logp - exact).abs().max()) < 5.0


def _discrete_log_prob(gm: GaussianMixture, path, t, c, delta):
    """Exact log P(bin) of the model density p(v) = alpha^d p_t(alpha v) over the bins ``c +- delta``."""
    s2 = float(path.s(t)) ** 2
    sd = (gm.variances + s2).sqrt()  # [K, d]: v ~ N(mu, var + s^2) per component
    nrm = torch.distributions.Normal(gm.means[None], sd[None])
    hi = nrm.cdf(c[:, None] + delta)
    lo = nrm.cdf(c[:, None] - delta)
    return torch.logsumexp(torch.log(gm.weights)[None] + torch.log(hi - lo).sum(-1), dim=1)


def _tn_uniform_kl(tau: float) -> float:
    """KL(truncated normal on [-tau, tau] || uniform on the same interval), per dimension, in nats."""
    z = math.erf(tau / math.sqrt(2))
    phi = math.exp(-0.5 * tau * tau) / math.sqrt(2 * math.pi)
    ent = math.log(math.sqrt(2 * math.pi) * z) + 0.5 - tau * phi / z
    return math.log(2 * tau) - ent


def test_bits_per_dim_bounds_the_discrete_likelihood():
    # a smooth density: the bin's conditional is ~uniform, so uniform dequantization is tight and the
    # truncated normal loses exactly KL(TN || U) per dimension
    gm = GaussianMixture(
        torch.tensor([0.4, 0.6]),
        torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.5, 0.0]]),
        torch.tensor([[0.04, 0.09, 0.05], [0.06, 0.03, 0.08]]),
    )
    path = P.VP()
    den = gm.denoiser(path)
    gen = torch.Generator().manual_seed(9)
    v = gm.sample(3, generator=gen).clamp(-1, 1)
    k = torch.round((v + 1) * 127.5).to(torch.uint8)
    c = k.to(torch.float64) / 127.5 - 1
    kl_bits = _tn_uniform_kl(3.0) / math.log(2)
    for deq, expected_gap in (("uniform", 0.0), ("truncated-normal", kl_bits)):
        out = bits_per_dim(
            den,
            k,
            dequantization=deq,
            samples=12 if deq != "uniform" else 6,
            dtype=torch.float64,
            generator=gen,
            prior=exact_prior(gm, path),
            rtol=1e-6,
            atol=1e-6,
        )
        exact = _discrete_log_prob(gm, path, out.t_eval, c, 1 / 255)
        gap = out.bpd + exact / (3 * math.log(2))
        print(f"{deq}: bpd {out.bpd.tolist()}, gap to the exact discrete bpd {gap.tolist()}")
        assert bool((gap > -3 * out.stderr - 1e-4).all())  # a bound (up to Monte-Carlo error)
        assert bool(((gap - expected_gap).abs() < 4 * out.stderr + 0.05).all())


def test_truncated_normal_dequantization_is_tight_on_discrete_data():
    # data that sit exactly on the 8-bit grid (tiny variances): the model's density around a value at
    # t_e is the truncated-normal noise itself, so that bound is tight; uniform dequantization at t_min is not
    path = P.VP()
    ks = torch.tensor([[40, 200], [128, 10], [90, 91]])
    centers = ks.to(torch.float64) / 127.5 - 1
    gm = GaussianMixture(torch.full((3,), 1 / 3), centers, torch.full((3, 2), 1e-12))
    den = gm.denoiser(path)
    gen = torch.Generator().manual_seed(10)
    k = ks[[0, 2]].to(torch.uint8)
    tn = bits_per_dim(den, k, samples=2, dtype=torch.float64, generator=gen, prior=exact_prior(gm, path))
    un = bits_per_dim(
        den,
        k,
        dequantization="uniform",
        samples=2,
        dtype=torch.float64,
        generator=gen,
        prior=exact_prior(gm, path),
    )
    best = -math.log(1 / 3) / (2 * math.log(2))  # -log2 P(k) / d with P(k) = 1/3
    print(f"truncated-normal {tn.bpd.tolist()}, uniform {un.bpd.tolist()}, exact {best:.4f} bits/dim")
    assert bool(((tn.bpd - best).abs() < 0.01).all())
    assert bool((un.bpd > tn.bpd + 0.3).all())


def test_bad_input():
    path = P.VP()
    den = GMM8.denoiser(path)
    x = data_at_tmin(GMM8, path, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="probes"):
        log_likelihood(den, x, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(den, x, divergence="trace")
    with pytest.raises(ValueError, match="noise"):
        log_likelihood(den, x, divergence="hutchinson", noise="uniform")
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(den, x, grid=pfode.grid(path, 10, t_end=0.01))
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(den, x, grid=pfode.grid(path, 10, t_start=0.5))
    with pytest.raises(TypeError, match="x"):
        log_likelihood(den, torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        log_likelihood(den, torch.zeros(2, 5, dtype=torch.float64))  # the target has d = 8
    mlp = torch.nn.Linear(8, 8).double()
    net_den = pfode.Denoiser(lambda z, t: mlp(z), path)
    with pytest.raises(ValueError, match="x"):
        log_likelihood(net_den, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="solver"):
        log_likelihood(den, x, solver="dpm++2m")
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(den, x, solver="rk4")
    with pytest.raises(TypeError, match="x_uint8"):
        bits_per_dim(den, x)
