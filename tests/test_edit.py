"""SDEdit, CODE and inversion-based editing on exact Gaussian-mixture denoisers."""

import pytest
import torch

from pfode import Denoiser, analytic, paths
from pfode.edit import code, invert_edit, sdedit
from pfode.invert import round_trip


@pytest.fixture(scope="module")
def gmm():
    return analytic.GaussianMixture.random(4, 3, std_range=(0.2, 0.5), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def path():
    return paths.get_path("vp")


def _conditional(gmm, path):
    """A class-conditional exact denoiser: ``label=k`` is component ``k`` alone, no label the whole mixture."""
    parts = [analytic.GaussianMixture(torch.ones(1), gmm.means[k : k + 1], gmm.variances[k : k + 1]) for k in range(3)]

    def net(x, t, label=None):
        target = gmm if label is None else parts[label]
        return target.x0_eps(x, t, path)[0]

    return Denoiser(net, path, prediction="x0")


def test_sdedit_forgets_the_guide_at_t_max_and_returns_it_at_t_min(gmm, path):
    den = gmm.denoiser(path)
    g = torch.Generator().manual_seed(1)
    a, b = gmm.sample(16, generator=g), gmm.sample(16, generator=g)
    ea = sdedit(den, a, path.t_max, nfe=20, generator=torch.Generator().manual_seed(2))
    eb = sdedit(den, b, path.t_max, nfe=20, generator=torch.Generator().manual_seed(2))
    assert float((ea.x - eb.x).abs().max()) < 0.05 * float((a - b).abs().max())
    near = sdedit(den, a, path.t_min, generator=g)
    assert near.nfe == 1 and float((near.x - a).abs().max()) < 0.05
    # faithfulness decreases with t0
    dist = [
        float((sdedit(den, a, t0, nfe=12, generator=torch.Generator().manual_seed(3)).x - a).norm())
        for t0 in (0.05, 0.3, 0.7)
    ]
    assert dist[0] < dist[1] < dist[2], dist


def test_code_round_trip_clipping_and_correction(gmm, path):
    den = gmm.denoiser(path)
    g = torch.Generator().manual_seed(4)
    clean = gmm.sample(64, generator=g)
    # no correction, no clipping: ODE inversion to t0 and decoding along the same grid: pfode's DDIM round trip
    plain = code(den, clean, 0.4, nfe=40, steps=0)
    rt = round_trip(den, clean, nfe=40, t_start=0.4)
    assert float((plain.x - rt.x_rec).abs().max()) < 1e-12 and plain.nfe == 80
    assert float((plain.x - clean).abs().amax(1).median()) < 0.05
    # a corrupted guide: Langevin correction at t0 brings it closer to the data than the guide is
    guide = clean + 0.6 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    fixed = code(den, guide, 0.1, nfe=20, steps=10, step_size=0.1, generator=torch.Generator().manual_seed(5))
    assert float((fixed.x - clean).norm()) < 0.9 * float((guide - clean).norm())
    # ... and the Langevin correction raises the likelihood beyond what the ODE round trip alone gives
    unfixed = code(den, guide, 0.1, nfe=20, steps=0)

    def log_p(x):
        return float(gmm.log_prob(x, path.t_min, path).mean())

    assert log_p(fixed.x) > log_p(unfixed.x) + 1.0 and log_p(unfixed.x) > log_p(guide)
    # confidence-based clipping: outliers in the guide are clipped into [alpha lo - eta sigma, alpha hi + eta sigma]
    bad = clean.clone()
    bad[:, 0] = 25.0
    clipped = code(den, bad, 0.3, nfe=10, steps=0, eta=3.0, value_range=(-4.0, 4.0))
    lo, hi = clipped.info["bounds"]
    assert clipped.info["clipped"] > 0.2
    assert float(clipped.info["corrected"].max()) <= hi and float(clipped.info["corrected"].min()) >= lo
    assert float(clipped.x[:, 0].abs().max()) < 10.0


def test_invert_edit_is_exact_with_one_condition_and_moves_to_another(gmm, path):
    den = _conditional(gmm, path)
    x = gmm.sample(32, generator=torch.Generator().manual_seed(6))
    same = invert_edit(den, x, cond_source={"label": 0}, cond_target={"label": 0}, nfe=10)
    assert float((same.x - x).abs().max()) < 1e-8
    moved = invert_edit(den, x, cond_source=None, cond_target={"label": 2}, nfe=10, method="bdia", gamma=0.9)
    mean2 = gmm.means[2]
    assert float((moved.x - mean2).norm(dim=1).mean()) < 0.5 * float((x - mean2).norm(dim=1).mean())
    plain = invert_edit(den, x, nfe=20, method="plain")  # approximate: most come back, a few may switch mode
    assert float((plain.x - round_trip(den, x, nfe=20).x_rec).abs().max()) < 1e-12 and plain.nfe == 40


def test_bad_edit_arguments_are_named(gmm, path):
    den = gmm.denoiser(path)
    x = gmm.sample(2)
    with pytest.raises(ValueError, match="t0"):
        sdedit(den, x, 2.0)
    with pytest.raises(ValueError, match="value_range"):
        code(den, x, 0.5, value_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="method"):
        invert_edit(den, x, method="nope")
    with pytest.raises(TypeError):
        sdedit(den, x.numpy(), 0.5)
