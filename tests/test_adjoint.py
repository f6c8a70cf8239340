"""Gradients through the sampler: direct backpropagation and the adjoint methods."""

from __future__ import annotations

import pytest
import torch

import pfode
from pfode import paths as P
from pfode.adjoint import adjoint_sample
from pfode.analytic import GaussianMixture


class MLP(torch.nn.Module):
    """A small conditional eps-network: input x, time and a 2-d conditioning vector."""

    def __init__(self, d: int, hidden: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = torch.nn.Linear(d + 3, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, d)

    def forward(self, x, t, c=None):
        if c is None:
            c = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        h = torch.tanh(self.l1(torch.cat([x, t[:, None].to(x.dtype), c], 1)))
        return self.l3(torch.tanh(self.l2(h)))


def loss_fn(x):
    return (x**2).sum() + torch.sin(3 * x[:, 0]).sum()


def grads(fn, den, x_T, cond, net):
    x = x_T.clone().requires_grad_(True)
    c = cond.clone().requires_grad_(True)
    if net is not None:
        net.zero_grad()
    loss_fn(fn(den, x, {"c": c})).backward()
    flat = [x.grad.flatten()] + ([] if c.grad is None else [c.grad.flatten()])
    if net is not None:
        flat += [p.grad.flatten() for p in net.parameters()]
    return x.grad, torch.cat(flat)


def rel(a, b):
    return float((a - b).norm() / b.norm())


D = 4
PATH = P.VP()
NET = MLP(D).double()
DEN = pfode.Denoiser(NET, PATH, prediction="eps")
X_T = torch.randn(6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
COND = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "unipc", "heun", "dpm3", "dopri5"])
def test_direct_backprop_through_sample_matches_finite_differences(solver):
    den = pfode.Denoiser(MLP(2, 8).double(), PATH, prediction="eps")
    grid = pfode.grid(PATH, 8) if solver != "dopri5" else pfode.grid(PATH, 1)
    x_T = torch.randn(
        2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda x: pfode.sample(den, x, grid, solver), (x_T,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "solver", ["ddim", "dpm++2m", "dpm++3m", "unipc", "deis", "heun", "dpm3", "dpm++2s", "rk4"]
)
def test_discrete_adjoint_equals_direct_backprop(solver):
    grid = pfode.grid(PATH, 20)
    _, direct = grads(lambda d, x, c: pfode.sample(d, x, grid, solver, cond=c), DEN, X_T, COND, NET)
    _, adj = grads(lambda d, x, c: adjoint_sample(d, x, grid, solver, cond=c), DEN, X_T, COND, NET)
    err = rel(adj, direct)
    print(f"{solver}, 20 steps: discrete adjoint vs direct backprop, relative difference {err:.1e}")
    assert err < 1e-10


def test_discrete_adjoint_on_the_analytic_target_and_without_denoising():
    gm = GaussianMixture.random(D, 3, generator=torch.Generator().manual_seed(4))
    den = gm.denoiser(P.EDM())
    grid = pfode.grid(den.path, 25, "karras")
    for denoise in (True, False):

        def direct(d, x, c, denoise=denoise):
            return pfode.sample(d, x, grid, "dpm++2m", denoise=denoise)

        def adj(d, x, c, denoise=denoise):
            return adjoint_sample(d, x, grid, "dpm++2m", denoise=denoise)

        x_T = X_T * 80.0
        gd, _ = grads(direct, den, x_T, COND, None)
        ga, _ = grads(adj, den, x_T, COND, None)
        assert rel(ga, gd) < 1e-10


def test_continuous_adjoint_converges_to_direct_backprop():
    errs = {}
    for n in (25, 100):
        grid = pfode.grid(PATH, n)
        _, direct = grads(
            lambda d, x, c, g=grid: pfode.sample(d, x, g, "dpm++2m", cond=c), DEN, X_T, COND, NET
        )
        _, adj = grads(
            lambda d, x, c, g=grid: adjoint_sample(d, x, g, "dpm++2m", cond=c, method="continuous"),
            DEN,
            X_T,
            COND,
            NET,
        )
        errs[n] = rel(adj, direct)
    print(f"continuous adjoint (dpm++2m) vs direct backprop: {errs}")
    assert errs[100] < 2e-3 and errs[100] < errs[25] / 8  # second order
    gm = GaussianMixture.random(D, 3, generator=torch.Generator().manual_seed(5))
    den = gm.denoiser(PATH)
    grid = pfode.grid(PATH, 100)
    gd, _ = grads(lambda d, x, c: pfode.sample(d, x, grid, "dpm++2m"), den, X_T, COND, None)
    ga, _ = grads(
        lambda d, x, c: adjoint_sample(d, x, grid, "dpm++2m", method="continuous"), den, X_T, COND, None
    )
    print(f"analytic target, 100 steps: relative difference {rel(ga, gd):.1e}")
    assert rel(ga, gd) < 5e-3


def test_gradcheck_tiny_float64():
    net = MLP(2, 6, seed=7).double()
    den = pfode.Denoiser(net, PATH, prediction="v")
    grid = pfode.grid(PATH, 5)
    x_T = torch.randn(
        2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64, requires_grad=True
    )
    c = torch.randn(2, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64, requires_grad=True)
    w = net.l3.weight

    def f(x, cc, ww):
        return adjoint_sample(den, x, grid, "dpm++2m", cond={"c": cc}, params=[w])

    assert torch.autograd.gradcheck(f, (x_T, c, w), eps=1e-6, atol=1e-6)


def test_bad_input():
    grid = pfode.grid(PATH, 5)
    with pytest.raises(ValueError, match="ddim, dpm\\+\\+2m"):
        adjoint_sample(DEN, X_T, grid, "heun", method="continuous")
    for solver in ("ddpm", "dopri5"):
        with pytest.raises(ValueError, match="supports fixed-step deterministic solvers"):
            adjoint_sample(DEN, X_T, grid, solver)
    with pytest.raises(ValueError, match="method"):
        adjoint_sample(DEN, X_T, grid, method="checkpoint")
