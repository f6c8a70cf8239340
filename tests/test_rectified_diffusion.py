"""Tests of Rectified Diffusion (:class:`pfode.train.distill.RectifiedDiffusion`) against closed-form truth.

For a Gaussian target the teacher's exact PF-ODE pair map ``z -> x0 = F(z)`` is affine
(:meth:`pfode.analytic.Gaussian.flow_map`), so the paired noise ``e = z - x0 / s_T`` and ``x0`` are affinely
related: ``x0 = c + M e``. The exact minimiser of denoising score matching on the pairs is then
``eps*(x, t) = (alpha_t M + sigma_t I)^-1 (x - alpha_t c)`` (the pair is a deterministic function of ``x_t``), and
its PF-ODE follows ``x_t = alpha_t x0 + sigma_t e`` -- DDIM is exact in any number of steps.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

import pfode
from pfode import metrics
from pfode.analytic import Gaussian
from pfode.nets import MLP
from pfode.paths import Linear, VPCosine, get_path
from pfode.predictions import Coeffs, Denoiser, from_x0_eps
from pfode.train import Trainer, generate_reflow_pairs
from pfode.train.config import check_config
from pfode.train.distill import RectifiedDiffusion, ddim_sample, paired_noise, uniform_times
from pfode.train.losses import get_objective

TARGET = Gaussian(torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([[2.0, 0.6], [0.6, 0.5]]))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pair_map(path, t_start=None, t_end=None, target=TARGET):
    """``(f0, R)`` with ``F(z) = f0 + R z`` the exact flow map from ``sigma(T) z`` at ``T`` to ``t_end``."""
    T = path.t_max if t_start is None else t_start
    t_end = path.t_min if t_end is None else t_end
    d = target.d
    z = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    out = target.flow_map(float(path.sigma(T)) * z, T, t_end, path)
    return out[0], (out[1:] - out[0]).T


def exact_pairs(path, n, seed=0, t_start=None):
    """``(x0, z)``: ``n`` exact teacher pairs (float64)."""
    f0, R = pair_map(path, t_start)
    z = torch.randn(n, TARGET.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return f0 + z @ R.T, z


def paired_affine(path, s_start, t_start=None):
    """``(c, M)`` with ``x0 = c + M e`` for the paired noise ``e = z - x0 / s_start``."""
    f0, R = pair_map(path, t_start)
    eye = torch.eye(TARGET.d, dtype=torch.float64)
    if math.isinf(s_start):
        return f0, R
    M = R @ torch.linalg.inv(eye - R / s_start)
    return f0 + M @ f0 / s_start, M


def rectified_net(path, prediction, s_start, t_start=None):
    """The exact minimiser of DSM on the pairs, as a network of the given prediction type."""
    c, M = paired_affine(path, s_start, t_start)
    eye = torch.eye(TARGET.d, dtype=torch.float64)

    def net(x, t):
        cf = Coeffs.at(path, t, like=x.double())
        e = torch.stack(
            [torch.linalg.solve(a * M + s * eye, xi - a * c) for a, s, xi in zip(cf.alpha[:, 0], cf.sigma[:, 0], x)]
        )
        x0 = c + e @ M.T
        return from_x0_eps(prediction, x0, e, cf).to(x.dtype)

    return net


def teacher_net(path, prediction):
    """The teacher's own exact field (the Gaussian's denoiser), as a network of the given prediction type."""

    def net(x, t):
        x0, eps = TARGET.x0_eps(x.double(), t, path)
        return from_x0_eps(prediction, x0, eps, Coeffs.at(path, t, like=x.double())).to(x.dtype)

    return net


@pytest.mark.parametrize("path_name", ["linear", "cosine"])
def test_teacher_pairs_are_the_exact_flow_map(path_name):
    path = get_path(path_name)
    with tempfile.TemporaryDirectory() as d:
        store = generate_reflow_pairs(
            TARGET.denoiser(path), 64, d, 2, solver="dpm++3m", nfe=100, progress=False, dtype=torch.float64,
            denoise=False, seed=3,
        )  # fmt: skip
        x0, z = store.load()
    T = store.index["t_start"]
    assert T == path.t_max
    exact = TARGET.flow_map(float(path.sigma(T)) * z, T, path.t_min, path)
    assert float((x0 - exact).abs().max()) < 1e-3
    f0, R = pair_map(path)
    assert torch.allclose(f0 + z @ R.T, exact, atol=1e-12)  # the pair map is affine (the helper below)


CASES = [("cosine", "eps", "snr"), ("linear", "velocity", "native"), ("vp", "x0", "uniform"), ("edm", "eps", "edm")]


@pytest.mark.parametrize("path_name, prediction, weighting", CASES)
def test_exact_rectified_field_minimises_dsm_on_the_pairs(path_name, prediction, weighting):
    path = get_path(path_name)
    obj = RectifiedDiffusion(path, prediction, weighting=weighting, coupling="paired")
    x0, z = exact_pairs(path, 256)
    prep = obj.prepare((x0, z), torch.Generator().manual_seed(0))
    assert torch.allclose(prep["eps"], paired_noise(x0, z, obj.s_start))
    net = rectified_net(path, prediction, obj.s_start)
    best, per = obj.loss(net, prep)
    ref = float(obj.loss(lambda x, t: torch.zeros_like(x), prep)[0])
    assert float(best) < 1e-16 * max(1.0, ref) and float(per.max()) < 1e-12 * max(1.0, ref)
    # the teacher's own field is not the minimiser: its trajectories are curved in (y, s)
    assert float(obj.loss(teacher_net(path, prediction), prep)[0]) > 1e-4 * ref
    # any perturbation of the minimiser raises the loss
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        d = 0.01 * torch.randn(2, generator=g, dtype=torch.float64)
        assert float(obj.loss(lambda x, t, d=d: net(x, t) + d, prep)[0]) > float(best) + 1e-8 * ref


@pytest.mark.parametrize("path_name, prediction", [("cosine", "eps"), ("linear", "velocity"), ("vp", "v")])
@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_few_step_ddim_of_the_rectified_field_is_the_pair_map(path_name, prediction, nfe):
    path = get_path(path_name)
    obj = RectifiedDiffusion(path, prediction, coupling="paired")
    net = rectified_net(path, prediction, obj.s_start)
    x0, z = exact_pairs(path, 64, seed=5)
    out = obj.sample(net, z, nfe=nfe)
    assert float((out - x0).abs().max()) < 1e-9
    # the teacher's own field needs many steps: one DDIM step misses by far
    if nfe == 1:
        miss = ddim_sample(Denoiser(teacher_net(path, prediction), path, prediction), z, uniform_times(path, 1))
        assert float((miss - x0).abs().max()) > 0.05


@pytest.mark.parametrize(
    "path, prediction", [(Linear(t_max=1.0), "velocity"), (VPCosine(t_max=1.0), "v"), (Linear(), "x0")]
)
@pytest.mark.parametrize("nfe", [1, 3])
def test_few_step_rectified_sampler_draws_the_target_law(path, prediction, nfe):
    """From pure noise (``alpha(T) = 0``: the teacher's start is the exact marginal) the pushforward of
    ``N(0, I)`` by the few-step sampler of the exact rectified field is the target's marginal at ``t_min``;
    with ``alpha(T) > 0`` (``Linear()``) it is the teacher's law, off by the start's approximation."""
    obj = RectifiedDiffusion(path, prediction, coupling="paired")
    net = rectified_net(path, prediction, obj.s_start)
    basis = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])
    img = obj.sample(net, basis, nfe=nfe)  # the sampler is affine in z: mean and covariance of its law
    J = (img[1:] - img[0]).T
    a, s = float(path.alpha(path.t_min)), float(path.sigma(path.t_min))
    w2 = metrics.w2_gaussian(img[0], J @ J.T, a * TARGET.mean, a * a * TARGET.cov + s * s * torch.eye(2))
    if float(path.alpha(path.t_max)) == 0.0:
        assert w2 < 1e-7
    else:
        f0, R = pair_map(path)
        assert metrics.w2_gaussian(img[0], J @ J.T, f0, R @ R.T) < 1e-7 < w2


@pytest.mark.parametrize("path_name", ["cosine", "linear"])
def test_rectified_ode_moves_along_the_coupling(path_name):
    """Any solver of the rectified field's PF-ODE stays on ``alpha_t x0 + sigma_t e``: the marginal at every
    time is the law of the coupling's interpolation, and at ``t_min`` the target's."""
    path = get_path(path_name)
    obj = RectifiedDiffusion(path, "eps", coupling="paired")
    den = Denoiser(rectified_net(path, "eps", obj.s_start), path, "eps")
    x0, z = exact_pairs(path, 32, seed=9)
    e = paired_noise(x0, z, obj.s_start)
    x_T = float(path.sigma(path.t_max)) * z
    for t_mid in (0.7, 0.3):
        x = pfode.sample(den, x_T, solver="dpm++2m", nfe=6, t_end=t_mid, denoise=False)
        assert float((x - (float(path.alpha(t_mid)) * x0 + float(path.sigma(t_mid)) * e)).abs().max()) < 1e-8


def test_rectified_diffusion_needs_pairs():
    with pytest.raises(ValueError, match="paired coupling"):
        RectifiedDiffusion("cosine", "eps", coupling="independent")
    obj = RectifiedDiffusion("cosine", "eps")
    with pytest.raises(ValueError, match="no paired noise"):
        obj.prepare(torch.randn(8, 2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pair"):
        Trainer(MLP((2,), width=8, depth=1), obj, torch.randn(16, 2), {"batch_size": 8})
    with pytest.raises(ValueError, match="t_start"):
        RectifiedDiffusion("cosine", "eps", t_start=float("nan"))


def test_rectified_diffusion_config_is_strict():
    cfg = {
        "data": {"name": "reflow-pairs", "path": "pairs"},
        "model": {"name": "mlp", "width": 16, "depth": 1},
        "objective": {"name": "rectified-diffusion", "path": "cosine", "prediction": "eps", "coupling": "reflow"},
    }
    check_config(cfg)
    obj = get_objective(**{k: v for k, v in cfg["objective"].items()})
    assert isinstance(obj, RectifiedDiffusion) and obj.spec()["name"] == "rectified-diffusion"
    bad = {**cfg, "objective": {**cfg["objective"], "distance": "l2"}}
    with pytest.raises(ValueError, match="objective.distance"):
        check_config(bad)
