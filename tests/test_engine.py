"""The integration engine: PF-ODE forms in every variable, tableaux, the adaptive loop and step programs."""

from __future__ import annotations

import math

import pytest
import torch

from pfode import analytic, engine, paths
from pfode.engine import DOPRI5, EULER, HEUN, MIDPOINT, PFODE, RK4, IController, PIController, drive, rk_stages
from pfode.solvers.adaptive import batch_view, rms_norm

D = 3


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), a @ a.T / D + 0.1 * torch.eye(D))


def _solve(ode: PFODE, x: torch.Tensor, t0: float, t1: float, control="sample"):
    """The PF-ODE of ``ode`` from path time t0 to t1 with dopri5 at tight tolerances; returns (x, info)."""
    b = x.shape[0]
    u = x * ode.scale(t0)
    (u,), info = engine.solve_adaptive(
        lambda s, v: [ode.velocity(s[0], v)[0]],
        [u],
        ode.v_of_t(t0),
        ode.v_of_t(t1),
        error_norm=rms_norm(b, 1e-11, 1e-11),
        h0=torch.full((b,), 1e-3, dtype=torch.float64),
        views=[batch_view(u)],
        control=control,
    )
    return u / ode.scale(t1), info


@pytest.mark.parametrize("variable", engine.VARIABLES)
@pytest.mark.parametrize("make_path,prediction", [(paths.VP, "eps"), (paths.EDM, "x0"), (paths.Linear, "velocity")])
def test_every_variable_solves_the_same_flow(gaussian, variable, make_path, prediction):
    """Each form (state, velocity, time map) integrates to the closed-form Gaussian flow map."""
    path = make_path()
    den = gaussian.denoiser(path)
    if prediction != "eps":  # the same exact denoiser re-expressed as another prediction type
        from pfode.predictions import Coeffs, Denoiser, from_x0_eps

        den = Denoiser(
            lambda x, t: from_x0_eps(prediction, *gaussian.x0_eps(x, t, path), Coeffs.at(path, t, like=x)),
            path,
            prediction,
        )
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0, t1 = path.t_max, float(path.t_of_s(torch.tensor(0.3, dtype=torch.float64)))
    x = x * float(path.sigma(t0))
    out, _ = _solve(PFODE(den, variable), x, t0, t1)
    ref = gaussian.flow_map(x, t0, t1, path)
    assert float((out - ref).abs().max()) < 1e-7 * (1 + float(ref.abs().max()))


def test_velocity_returns_the_denoiser(gaussian):
    path = paths.VP()
    den = gaussian.denoiser(path)
    x = torch.randn(4, D, dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    x0_ref, _ = den(x, t)
    for variable in engine.VARIABLES:
        ode = PFODE(den, variable)
        v = {"t": t, "lam": path.lam(t), "s": path.s(t), "theta": torch.atan(path.s(t))}[variable]
        u = x * ode.scale(0.4)
        torch.testing.assert_close(ode.velocity(u, v)[1], x0_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ode.denoise(u, t), x0_ref, rtol=1e-10, atol=1e-10)
        assert abs(float(ode.t_of(torch.tensor(ode.v_of_t(0.4), dtype=torch.float64))) - 0.4) < 1e-12


def test_unknown_variable():
    with pytest.raises(ValueError, match="variable='x'.*lam, s, t, theta"):
        PFODE(analytic.Gaussian(torch.zeros(1), torch.eye(1)).denoiser(paths.VP()), "x")


@pytest.mark.parametrize("tab", [EULER, HEUN, MIDPOINT, RK4, DOPRI5], ids=lambda t: t.name)
def test_tableau_order_conditions(tab):
    """Butcher's order conditions up to the declared order (four at most), and consistent nodes."""
    c, b = tab.c, tab.b
    a = [list(r) + [0.0] * (tab.stages - len(r)) for r in tab.a]
    for i in range(tab.stages):
        assert abs(sum(a[i]) - c[i]) < 1e-14
    conds = [sum(b) - 1.0]
    if tab.order >= 2:
        conds.append(sum(bi * ci for bi, ci in zip(b, c)) - 1 / 2)
    if tab.order >= 3:
        conds.append(sum(bi * ci**2 for bi, ci in zip(b, c)) - 1 / 3)
        conds.append(sum(b[i] * a[i][j] * c[j] for i in range(tab.stages) for j in range(tab.stages)) - 1 / 6)
    if tab.order >= 4:
        conds.append(sum(bi * ci**3 for bi, ci in zip(b, c)) - 1 / 4)
    assert max(abs(v) for v in conds) < 1e-14
    if tab.e is not None:
        assert abs(sum(tab.e)) < 1e-14


@pytest.mark.parametrize("tab", [EULER, HEUN, MIDPOINT, RK4], ids=lambda t: t.name)
def test_rk_stages_converge_at_the_tableau_order(tab):
    """``rk_stages`` driven on u' = cos(v) u: global error slope matches the tableau's order."""

    def solve(n):
        u, h = [torch.ones(1, dtype=torch.float64)], 1.0 / n
        for k in range(n):
            v = k * h
            u, _ = drive(rk_stages(tab, u, [h]), lambda ui, i, v=v: [math.cos(v + tab.c[i] * h) * ui[0]])
        return float(u[0])

    exact = math.exp(math.sin(1.0))
    e1, e2 = abs(solve(40) - exact), abs(solve(80) - exact)
    assert abs(math.log2(e1 / e2) - tab.order) < 0.2


def test_drive_answers_requests_in_order():
    def program(x):
        a = yield "first", x
        b = yield "second", a + 1
        return a + b

    seen = []
    assert drive(program(1), lambda v, k: seen.append((k, v)) or 10 * v) == 10 + 110
    assert seen == [("first", 1), ("second", 11)]


def test_batch_control_shares_one_step_size(gaussian):
    path = paths.EDM()
    den = gaussian.denoiser(path)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80.0
    x[3:] *= 0.01
    _, per_sample = _solve(PFODE(den, "lam"), x, 80.0, 0.5)
    _, batch = _solve(PFODE(den, "lam"), x, 80.0, 0.5, control="batch")
    assert len(set(per_sample["accepted_steps"].tolist())) > 1
    assert len(set(batch["accepted_steps"].tolist())) == 1


@pytest.mark.parametrize("controller", [IController(), PIController()], ids=["I", "PI"])
def test_controllers_shrink_after_rejection(controller):
    b = 4
    h = torch.full((b,), 0.1, dtype=torch.float64)
    err = torch.tensor([0.01, 0.5, 2.0, 50.0], dtype=torch.float64)
    ok = err <= 1.0
    new, _ = controller.update(h, err, ok, 5, controller.start(b, "cpu"))
    assert bool((new[~ok] < h[~ok]).all()) and bool((new[ok] >= h[ok] * 0.99).all())
    assert bool(new[0] > new[1])  # a smaller error grows the step more


def test_adaptive_needs_an_embedded_tableau():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="no embedded error estimate"):
        engine.solve_adaptive(
            lambda u, v: u, [x], 0.0, 1.0, error_norm=None, h0=torch.ones(1), views=[lambda h: h], tab=RK4
        )
