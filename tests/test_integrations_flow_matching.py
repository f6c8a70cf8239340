"""pfode against facebookresearch/flow_matching's own ODE solver on a small random velocity network.

On the flow-matching grid (data at tau = 1, i.e. pfode's Linear path from t = 1 to t = 0) pfode's steppers in path
time take every step in full, the last one included, so they equal flow_matching's Euler and midpoint samplers to
round-off (before, pfode replaced the last step with a jump to x0_hat).
"""

from __future__ import annotations

import pytest
import torch

import pfode
from pfode.integrations import flow_matching as fmi

solver_mod = pytest.importorskip("flow_matching.solver")
utils = pytest.importorskip("flow_matching.utils")


@pytest.fixture(scope="module")
def velocity():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    net.requires_grad_(False)

    def model(x, t):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return net(torch.cat([x, t[:, None].to(x.dtype)], 1))

    return model


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("steps", [4, 10])
def test_fixed_step_samplers_equal_flow_matching(velocity, method, steps):
    class Wrapped(utils.ModelWrapper):
        def forward(self, x, t, **extras):
            return velocity(x, t)

    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = solver_mod.ODESolver(velocity_model=Wrapped(torch.nn.Identity())).sample(
        x_init=x0, step_size=1.0 / steps, method=method, time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64)
    )
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    sampler = pfode.Sampler(fmi.denoiser(velocity), grid, pfode.solvers.get(method, variable="t"))
    out = sampler(x0)
    assert sampler.nfe == steps * (1 if method == "euler" else 2)
    assert float((ref - x0).abs().max()) > 0.1  # the flow moves the points: the comparison is not vacuous
    assert float((out - ref).abs().max()) < 1e-12
