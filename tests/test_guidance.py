"""Guidance wrappers: classifier-free guidance, dynamic thresholding, classifier guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pfode
from pfode import paths as P
from pfode.analytic import Gaussian
from pfode.guidance import cfg, classifier_guidance, dynamic_thresholding, threshold_x0
from pfode.predictions import Coeffs, from_x0_eps

D = 3
MU = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
S = 0.25  # conditional N(MU, S I), unconditional N(0, I)
UNCOND = Gaussian(torch.zeros(D), torch.eye(D, dtype=torch.float64))
COND = Gaussian(MU, S * torch.eye(D, dtype=torch.float64))


def two_class_net(path, prediction, calls=None):
    """Label y = 1: the conditional Gaussian, y = 0: the unconditional one; output of type ``prediction``."""

    def net(x, t, y):
        if calls is not None:
            calls.append(x.shape[0])
        yy = y.reshape(-1, 1).to(x.dtype)
        c = Coeffs.at(path, t, like=x)
        outs = []
        for target in (UNCOND, COND):
            x0, eps = target.x0_eps(x, t, path)
            outs.append(from_x0_eps(prediction, x0, eps, c))
        return (yy * outs[1] + (1 - yy) * outs[0]).to(x.dtype)

    return pfode.Denoiser(net, path, prediction=prediction)


def guided_affine_map(path, w, t_start, t_end):
    """The guided PF-ODE is affine and isotropic: x(t_end) = A x(t_start) + b, from a scalar ODE in lam."""
    mu = MU.numpy()

    def f(lam, z):
        a2 = 1.0 / (1.0 + math.exp(-2.0 * lam))  # alpha^2 / (alpha^2 + sigma^2) of the equivalent VP path
        s2 = 1.0 - a2
        al = math.sqrt(a2)
        # in y = x / alpha: x0_u = a2 y (data N(0, I)), x0_c = mu + a2 S / (a2 S + s2) (y - mu)
        kc = a2 * S / (a2 * S + s2)
        k = (1 - w) * a2 + w * kc
        c = w * (mu - kc * mu)
        del al
        return np.concatenate([[(k - 1) * z[0]], (k - 1) * z[1:] + c])

    l0, l1 = float(path.lam(t_start)), float(path.lam(t_end))
    sol = solve_ivp(f, (l0, l1), np.concatenate([[1.0], np.zeros(D)]), rtol=1e-12, atol=1e-12)
    a0, a1 = float(path.alpha(t_start)), float(path.alpha(t_end))
    return a1 * sol.y[0, -1] / a0, torch.tensor(a1 * sol.y[1:, -1])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "velocity", "score"])
def test_cfg_is_the_same_guidance_for_every_prediction_type(prediction):
    path = P.VP()
    w = 2.5
    den = cfg(two_class_net(path, prediction), w, {"y": torch.zeros(1)})
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = 0.3
    x0, eps = den(x, t, y=torch.ones(5))
    x0_u, eps_u = UNCOND.x0_eps(x, t, path)
    x0_c, eps_c = COND.x0_eps(x, t, path)
    assert torch.allclose(x0, x0_u + w * (x0_c - x0_u), atol=1e-10)
    assert torch.allclose(eps, eps_u + w * (eps_c - eps_u), atol=1e-10)


@pytest.mark.parametrize("path", [P.VP(), P.EDM(), P.Linear()], ids=["vp", "edm", "linear"])
def test_cfg_samples_the_guided_gaussian(path):
    w = 2.0
    calls = []
    den = cfg(two_class_net(path, "eps", calls), w, {"y": torch.zeros(1)})
    grid = pfode.grid(path, 60)
    # the guided flow is affine: recover A and b from three solver runs and compare with the scalar ODE
    xs = torch.tensor([[0.0] * D, [1.0] * D, [-2.0, 0.5, 3.0]], dtype=torch.float64)
    out = pfode.sample(den, xs, grid, "dpm++3m", denoise=False, cond={"y": torch.ones(3)})
    assert all(c == 6 for c in calls)  # conditional + unconditional in one batched call
    a_exact, b_exact = guided_affine_map(path, w, path.t_max, path.t_min)
    assert torch.allclose(out[0], b_exact, rtol=2e-3, atol=2e-3)
    assert torch.allclose(out[1] - out[0], torch.full((D,), a_exact, dtype=torch.float64), rtol=2e-3)
    # and the sample mean / covariance of the guided law
    n = 3000
    x_T = torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = x_T * math.sqrt(float(path.sigma(path.t_max)) ** 2 + float(path.alpha(path.t_max)) ** 2)
    x = pfode.sample(den, x_T, grid, "dpm++2m", denoise=False, cond={"y": torch.ones(n)})
    var_T = float(path.sigma(path.t_max)) ** 2 + float(path.alpha(path.t_max)) ** 2
    mean, cov = x.mean(0), torch.cov(x.T)
    se = math.sqrt(a_exact**2 * var_T / n)
    assert torch.allclose(mean, b_exact, atol=5 * se + 2e-3)
    assert torch.allclose(
        cov, torch.eye(D, dtype=torch.float64) * a_exact**2 * var_T, atol=0.1 * a_exact**2 * var_T
    )


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "unipc", "heun", "dpm3", "deis", "dopri5"])
def test_guided_denoisers_work_with_every_solver(solver):
    path = P.VP()
    den = dynamic_thresholding(cfg(two_class_net(path, "v"), 1.5, {"y": torch.zeros(1)}), 0.99, bound=4.0)
    x_T = torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = pfode.grid(path, 30) if solver != "dopri5" else pfode.grid(path, 1)
    x = pfode.sample(den, x_T, grid, solver, cond={"y": torch.ones(8)})
    ref = pfode.sample(den, x_T, pfode.grid(path, 200), "dpm++3m", cond={"y": torch.ones(8)})
    assert float((x - ref).abs().max()) < 0.15


def test_cfg_unbatched_and_special_scales():
    path = P.EDM()
    base = two_class_net(path, "x0")
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = {"y": torch.ones(4)}
    a = cfg(base, 3.0, {"y": torch.zeros(4)})(x, 2.0, **y)[0]
    b = cfg(base, 3.0, lambda c: {"y": torch.zeros_like(c["y"])}, batched=False)(x, 2.0, **y)[0]
    assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(cfg(base, 1.0, {"y": torch.zeros(1)})(x, 2.0, **y)[0], base(x, 2.0, **y)[0])
    assert torch.allclose(
        cfg(base, 0.0, {"y": torch.zeros(4)})(x, 2.0, **y)[0], base(x, 2.0, y=torch.zeros(4))[0]
    )


def test_thresholding_never_changes_values_inside_the_range():
    gen = torch.Generator().manual_seed(4)
    inside = torch.rand(6, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    for rescale in (True, False):
        assert torch.equal(threshold_x0(inside, 0.995, rescale=rescale), inside)
    wide = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64) * 2
    clipped = threshold_x0(wide, 0.9, rescale=False)
    q = torch.quantile(wide.reshape(6, -1).abs(), 0.9, dim=1).clamp(min=1.0)
    keep = wide.abs() <= q[:, None, None, None]
    assert torch.equal(clipped[keep], wide[keep])  # only values beyond s are touched
    assert bool((clipped.abs() <= q[:, None, None, None]).all())
    scaled = threshold_x0(wide, 0.9)
    assert bool((scaled.abs() <= 1.0 + 1e-12).all())
    capped = threshold_x0(wide, 0.9, max_value=1.0)  # static clipping
    assert torch.equal(capped, wide.clamp(-1, 1))
    # float16: the quantile is computed in float32 (torch.quantile has no half kernel on CPU)
    half = threshold_x0(wide.half(), 0.9)
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), threshold_x0(wide.float(), 0.9).half().float(), atol=2e-3)


def test_thresholding_wrapper_leaves_in_range_predictions_alone():
    path = P.VP()
    base = two_class_net(path, "eps")
    den = dynamic_thresholding(base, 0.995, bound=10.0)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for t in (0.05, 0.5, 0.95):
        assert torch.allclose(
            den(x, t, y=torch.ones(5))[0], base(x, t, y=torch.ones(5))[0], rtol=0, atol=1e-12
        )


def test_classifier_guidance_with_the_bayes_classifier_gives_the_conditional_model():
    path = P.Linear()
    base = two_class_net(path, "velocity")

    def log_p_y(x, t, y):  # log p(y=1 | x_t) up to a constant: log p_c,t(x) - log p_u,t(x)
        return COND.log_prob(x, t, path) - UNCOND.log_prob(x, t, path)

    den = classifier_guidance(base, log_p_y, 1.0)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    zeros = torch.zeros(5)
    for t in (0.1, 0.5, 0.9):
        assert torch.allclose(den(x, t, y=zeros)[0], COND.x0_eps(x, t, path)[0], atol=1e-9)
    x_T = torch.randn(2000, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = pfode.sample(den, x_T, pfode.grid(path, 30), "dpm++2m", cond={"y": torch.zeros(2000)})
    assert torch.allclose(out.mean(0), MU, atol=0.05)
    assert torch.allclose(out.var(0), torch.full((D,), S, dtype=torch.float64), rtol=0.1)


def test_bad_input():
    den = two_class_net(P.VP(), "eps")
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            cfg(den, bad)
        with pytest.raises(ValueError, match="scale"):
            classifier_guidance(den, lambda x, t, **c: x.sum(1), bad)
    with pytest.raises(TypeError, match="scale"):
        cfg(den, "7")
    with pytest.raises(ValueError, match="percentile"):
        dynamic_thresholding(den, 1.5)
    with pytest.raises(TypeError, match="denoiser"):
        cfg(lambda x, t: x, 2.0)
