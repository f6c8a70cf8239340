"""Tuned sampling: recipes, the analytic segment and the search, against closed-form truth."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pfode
from pfode import analytic, paths
from pfode.solvers import USF, Rule
from pfode.tuning import GaussianSkip, Recipe, RecipeError, TuneError

D = 6


def _gaussian(d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.02 * torch.eye(d, dtype=torch.float64)
    return analytic.Gaussian(torch.randn(d, generator=g, dtype=torch.float64), cov)


@pytest.fixture(scope="module")
def gauss():
    return _gaussian()


@pytest.fixture(scope="module")
def tuned(gauss):
    """A small recipe tuned on the closed-form Gaussian (no analytic segment: it would make the target trivial)."""
    den = gauss.denoiser(paths.VPDiscrete.ddpm())
    r = pfode.tune(den, 4, shape=(D,), n=24, held_out=24, dtype=torch.float64, skip=False, budget=160, rounds=1)
    return den, r


def test_recipe_beats_the_untuned_grid_on_held_out_noise(tuned):
    den, r = tuned
    phases = [h["phase"] for h in r.meta["history"]]
    assert "times round 1" in phases and "rules round 1" in phases  # one round still sweeps the rules
    base = r.meta["untuned_best"]
    assert r.nfe == 4 and r.meta["nfe"] == 4
    assert math.isfinite(r.meta["held_out_error"]) and base["held_out_error"] > 1e-6
    assert r.meta["held_out_error"] < 0.7 * base["held_out_error"], (r.meta, base)
    # the figure is what sampling the held-out noise gives
    x = torch.randn(8, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = pfode.sample(den, x, r, return_info=True)
    assert out.nfe == r.nfe


def test_tuned_recipe_error_is_measured_against_the_closed_form(tuned, gauss):
    den, r = tuned
    path = den.path
    x = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    exact = gauss.flow_map(x, path.t_max, 1e-9, path)
    untuned = pfode.sample(
        den, x, nfe=4, solver=r.meta["untuned_best"]["solver"], spacing=r.meta["untuned_best"]["spacing"]
    )
    e_tuned = (pfode.sample(den, x, r) - exact).norm(dim=1).mean()
    e_untuned = (untuned - exact).norm(dim=1).mean()
    assert e_tuned < 0.7 * e_untuned, (e_tuned, e_untuned)


def test_save_load_round_trip(tuned, tmp_path):
    den, r = tuned
    f = r.save(tmp_path / "r.json")
    r2 = Recipe.load(f)
    assert r2.times == r.times and r2.rules == r.rules and r2.meta == json.loads(json.dumps(r.meta))
    x = torch.randn(5, D, dtype=torch.float64)
    assert torch.equal(pfode.sample(den, x, r), pfode.sample(den, x, r2))
    assert torch.equal(pfode.Sampler(den, recipe=r2)(x), pfode.sample(den, x, r2))
    d = json.loads(f.read_text())
    assert d["schema"] == "pfode.recipe" and d["version"] == 1
    assert [s["family"] for s in d["steps"]] == ["usf"] * r.steps


def test_analytic_segment_is_exact_on_a_gaussian(gauss):
    path = paths.VPCosine()
    skip = GaussianSkip.from_gaussian(gauss.mean, gauss.cov)
    x = torch.randn(16, D, dtype=torch.float64) * float(path.sigma(path.t_max))
    for t_to in (0.7, 0.3, 0.05):
        got = skip.flow(x, path, path.t_max, t_to)
        want = gauss.flow_map(x, path.t_max, t_to, path)
        assert torch.allclose(got, want, rtol=1e-11, atol=1e-11)
    # a recipe that skips to t_0 and then solves: the first segment costs nothing and is exact
    den = gauss.denoiser(path)
    r = Recipe(
        times=(0.3, 0.1, 0.02),
        rules=(Rule(1), Rule(2)),
        path=path.spec(),
        shape=(D,),
        t_start=path.t_max,
        skip=skip,
        denoise=False,
    )
    out = pfode.sample(den, x, r, return_trajectory=True)
    assert out.nfe == 2
    assert torch.allclose(out.trajectory[0], gauss.flow_map(x, path.t_max, 0.3, path), rtol=1e-11, atol=1e-11)


def test_low_rank_moments_are_exact_when_the_covariance_is_low_rank_plus_isotropic():
    g = torch.Generator().manual_seed(2)
    d, r = 12, 3
    u, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    cov = u @ torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)) @ u.T + 0.1 * torch.eye(
        d, dtype=torch.float64
    )
    target = analytic.Gaussian(torch.randn(d, generator=g, dtype=torch.float64), cov)
    skip = GaussianSkip(target.mean, u, torch.tensor([4.1, 2.1, 1.1], dtype=torch.float64), 0.1, (d,))
    path = paths.EDM()
    x = torch.randn(8, d, generator=g, dtype=torch.float64) * 80.0
    assert torch.allclose(skip.flow(x, path, 80.0, 0.5), target.flow_map(x, 80.0, 0.5, path), rtol=1e-10, atol=1e-10)
    # from samples: the moments converge to the truth
    est = GaussianSkip.from_samples(target.sample(20000, generator=g), rank=d)
    err = (est.flow(x, path, 80.0, 0.5) - target.flow_map(x, 80.0, 0.5, path)).norm() / x.norm() * 80
    assert err < 0.05
    # image-shaped samples keep their shape
    img = GaussianSkip.from_samples(torch.randn(40, 1, 2, 6, dtype=torch.float64), rank=5)
    assert img.flow(torch.randn(3, 1, 2, 6, dtype=torch.float64), path, 80.0, 1.0).shape == (3, 1, 2, 6)
    assert img.rank == 5 and img.rest > 0


def test_skip_spec_round_trip_is_bit_exact():
    s = GaussianSkip.from_samples(torch.randn(30, 5, dtype=torch.float64), rank=2)
    s2 = GaussianSkip.from_spec(json.loads(json.dumps(s.spec())))
    assert torch.equal(s.mean, s2.mean) and torch.equal(s.basis, s2.basis) and s.rest == s2.rest


def test_tune_with_the_analytic_segment_on_a_gaussian_is_near_exact(gauss):
    den = gauss.denoiser(paths.VPDiscrete.ddpm())
    r = pfode.tune(
        den,
        2,
        shape=(D,),
        n=16,
        held_out=8,
        dtype=torch.float64,
        solvers=False,
        budget=60,
        rounds=1,
        skip_data=gauss.sample(50000, generator=torch.Generator().manual_seed(0)),
    )
    assert r.skip is not None and r.nfe == 2
    assert r.meta["held_out_error"] < 0.02 * r.meta["untuned_best"]["held_out_error"]


def test_recipe_refuses_another_path_or_shape(tuned, gauss):
    den, r = tuned
    other = gauss.denoiser(paths.VP())
    with pytest.raises(RecipeError, match="tuned for the path"):
        pfode.sample(other, torch.randn(2, D, dtype=torch.float64), r)
    with pytest.raises(RecipeError, match="shape"):
        pfode.sample(den, torch.randn(2, D + 1, dtype=torch.float64), r)
    with pytest.raises(ValueError, match="nfe"):
        pfode.Sampler(den, nfe=5, recipe=r)


def test_tune_errors(gauss):
    den = gauss.denoiser(paths.VP())
    with pytest.raises(TuneError, match="nfe=1"):
        pfode.tune(den, 1, shape=(D,))
    with pytest.raises(TuneError, match="n=2"):
        pfode.tune(den, 4, shape=(D,), n=2)
    with pytest.raises(TuneError, match="held_out=1"):
        pfode.tune(den, 4, shape=(D,), held_out=1)
    with pytest.raises(TuneError, match="shape"):
        pfode.tune(den, 4)

    def bad(x, t):
        return torch.full_like(x, math.nan)

    with pytest.raises(TuneError, match="non-finite"):
        pfode.tune(
            pfode.Denoiser(bad, paths.VP(), prediction="x0"),
            4,
            shape=(D,),
            n=4,
            held_out=2,
            teacher="ddim",
            teacher_nfe=4,
        )


def _write(tmp_path, d):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    return f


def test_recipe_file_errors(tuned, tmp_path):
    _, r = tuned
    good = r.to_dict()
    cases = [
        ({**good, "schema": "other"}, "schema"),
        ({**good, "version": 99}, "version"),
        ({**good, "times": "0.5"}, "times must be of type list"),
        ({**good, "times": [1.0, "x"] + good["times"][2:]}, r"times\[1\]"),
        ({**good, "steps": [{"order": "2"}] * r.steps}, r"steps\[0\]"),
        ({**good, "steps": [{"order": 2, "space": "v", "corrector": False}] * r.steps}, r"steps\[0\].*space"),
        ({**good, "denoise": 1}, "denoise"),
        ({**good, "extra": 1}, "unknown"),
        ({**good, "fingerprint": {**good["fingerprint"], "path_sha256": "0" * 16}}, "altered"),
        ({**good, "times": good["times"][::-1]}, "decreasing"),
        ({**good, "skip": {"mean": 1}}, "skip"),
    ]
    for d, msg in cases:
        with pytest.raises(RecipeError, match=msg):
            Recipe.load(_write(tmp_path, d))
    (tmp_path / "nojson.json").write_text("{")
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.load(tmp_path / "nojson.json")


def test_usf_rules_cover_ddim_and_dpmpp():
    """Order 1 is DDIM exactly; a constant rule list equals the constant solver."""
    target = _gaussian()
    den = target.denoiser(paths.VP())
    x = torch.randn(4, D, dtype=torch.float64)
    a = pfode.sample(den, x, nfe=6, solver=USF(order=1))
    b = pfode.sample(den, x, nfe=6, solver="ddim")
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    rules = [Rule(1), Rule(2), Rule(2), Rule(3, "eps", True), Rule(1)]
    c = pfode.sample(den, x, nfe=6, solver=USF(rules=rules))
    assert torch.isfinite(c).all()
    with pytest.raises(ValueError, match="rules has 2 entries"):
        pfode.sample(den, x, nfe=6, solver=USF(rules=rules[:2]))
    with pytest.raises(ValueError, match="space"):
        Rule(2, "v")


def test_tune_for_a_feature_distance(gauss):
    """With a feature function the reported errors are distances between features (here two coordinates)."""
    den = gauss.denoiser(paths.VP())
    proj = torch.zeros(D, 2, dtype=torch.float64)
    proj[0, 0] = proj[1, 1] = 1.0
    n, held = 8, 4
    r = pfode.tune(den, 3, shape=(D,), n=n, held_out=held, dtype=torch.float64, skip=False, solvers=False,
                   budget=20, rounds=1, features=lambda x: x @ proj)
    # tune's tuning set and teacher, rebuilt: its train error is the feature distance, not the full one
    z = torch.randn((n + held, D), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = z[:n] * float(den.path.sigma(den.path.t_max))
    grid = torch.tensor([den.path.t_max, den.path.t_min], dtype=torch.float64)
    teacher = pfode.sample(den, x, grid, pfode.solvers.get("dopri5", rtol=1e-6, atol=1e-6))
    diff = pfode.sample(den, x, r) - teacher
    e_feat = float((diff @ proj).pow(2).mean(1).sqrt().mean())
    e_full = float(diff.pow(2).mean(1).sqrt().mean())
    assert r.meta["train_error"] == pytest.approx(e_feat, rel=1e-9)
    assert abs(e_feat - e_full) > 1e-3 * e_full
