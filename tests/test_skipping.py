"""SADA step skipping: skips where the criterion holds, counts only real calls, never-skip equals the plain run."""

from __future__ import annotations

import math
import re

import pytest
import torch

import pfode
from pfode import analytic, paths
from pfode.skipping import SADA

D = 4
PATH = paths.EDM()


def _target():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(D, generator=g, dtype=torch.float64), a @ a.T / D + 0.05 * torch.eye(D))


TARGET = _target()
X_T = 80.0 * torch.randn(16, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _counting_denoiser(times: list):
    def net(x, t):
        times.append(float(t[0]))
        return TARGET.x0_eps(x, t, PATH)[0]

    return pfode.Denoiser(net, PATH, prediction="x0")


def _rms(v):
    return float(v.pow(2).mean().sqrt())


def test_stable_trajectory_skips_and_stays_close():
    """DDIM, 50 steps: the late trajectory is stable, evaluations are replaced there, the error to the exact
    flow barely moves, and the calls saved are exactly the steps reported."""
    times: list = []
    den = _counting_denoiser(times)
    exact = TARGET.flow_map(X_T, PATH.t_max, 0.0, PATH)
    base = pfode.sample(den, X_T, nfe=50, solver="ddim", return_info=True)
    times.clear()
    out = pfode.sample(den, X_T, nfe=50, solver="ddim", skip="sada", return_info=True)
    skipped = out.info["skipped"]
    assert skipped and out.nfe == len(times) == 50 - len(skipped)
    grid = out.times
    assert not {grid[k] for k in skipped} & set(times)  # no call at a skipped step's time
    lo, hi = SADA().window(50)
    assert all(lo <= k < hi for k in skipped)
    # skipped exactly where the criterion read at most the threshold, at most 4 in a row
    assert all(out.info["stability"][k] <= 0.0 for k in skipped)
    assert [k for k, c in out.info["stability"].items() if c <= 0.0] == skipped
    assert _rms(out.x - exact) < 1.1 * _rms(base.x - exact)
    assert _rms(out.x - base.x) < 0.1 * _rms(base.x - exact)


def test_never_skipping_is_the_plain_solver_exactly():
    den = TARGET.denoiser(PATH)
    for solver in ("dpm++2m", "evodiff", "euler"):
        # the unfolded steps (a callback runs them), which step skipping drives
        plain = pfode.sample(den, X_T, nfe=20, solver=solver, return_info=True, callback=lambda info: None)
        out = pfode.Sampler(den, nfe=20, solver=solver, skip=SADA(threshold=-math.inf))(X_T, return_info=True)
        assert torch.equal(out.x, plain.x) and out.nfe == plain.nfe == 20 and out.info["skipped"] == []


def test_skipping_always_where_allowed_obeys_the_window_and_run_length():
    den = TARGET.denoiser(PATH)
    pol = SADA(threshold=1.0, max_consecutive=2, start=0.25, end=0.75)
    out = pfode.sample(den, X_T, nfe=40, solver="dpm++2m", skip=pol, return_info=True)
    # every allowed step from the first with three gradients (k = 10) up to 30, two skips then a call
    assert out.info["skipped"] == [k for k in range(10, 30) if (k - 10) % 3 != 2]
    assert out.nfe == 40 - len(out.info["skipped"]) and bool(torch.isfinite(out.x).all())


def test_sampler_and_sample_agree():
    den = TARGET.denoiser(PATH)
    a = pfode.sample(den, X_T, nfe=30, solver="dpm++2m", skip="sada", return_info=True)
    b = pfode.Sampler(den, nfe=30, solver="dpm++2m", skip="sada")(X_T, return_info=True)
    assert torch.equal(a.x, b.x) and a.info["skipped"] == b.info["skipped"] and a.nfe == b.nfe


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": 2.0}, "threshold"),
        ({"max_consecutive": 0}, "max_consecutive"),
        ({"start": -0.1}, "start"),
        ({"end": 1.5}, "end"),
        ({"start": 0.6, "end": 0.5}, "start"),
    ],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SADA(**kwargs)


def test_unsupported_combinations_name_solver_and_option():
    den = TARGET.denoiser(PATH)
    with pytest.raises(ValueError, match="skip='bogus'"):
        pfode.sample(den, X_T, nfe=10, skip="bogus")
    with pytest.raises(TypeError, match="skip"):
        pfode.sample(den, X_T, nfe=10, skip=3)
    for solver in ("heun", "dpm++2s", "ddpm"):
        with pytest.raises(ValueError, match=rf"skip='sada'.*{re.escape(solver)}"):
            pfode.Sampler(den, nfe=11, solver=solver, skip="sada")
    with pytest.raises(ValueError, match="skip.*gradient='discrete'"):
        pfode.sample(den, X_T, nfe=10, skip="sada", gradient="discrete")
