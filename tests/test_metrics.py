"""Tests of :mod:`pfode.metrics` against closed forms and direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfode.metrics import mmd_rbf, sliced_w2, sqrtm_psd, straightness, w2_gaussian, w2_samples

SETTINGS = settings(max_examples=40, deadline=None)

real = st.floats(-10.0, 10.0)
std = st.floats(0.01, 10.0)


def _rot(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


# ---------------------------------------------------------------------------------------------
# w2_gaussian
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(m1=real, m2=real, s1=std, s2=std)
def test_w2_gaussian_one_dimensional_closed_form(m1, m2, s1, s2):
    got = w2_gaussian([m1], [[s1 * s1]], [m2], [[s2 * s2]])
    want = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-6)


@SETTINGS
@given(
    d=st.integers(1, 5),
    seed=st.integers(0, 1000),
    scale=st.floats(0.1, 5.0),
)
def test_w2_gaussian_commuting_covariances(d, seed, scale):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.standard_normal(d) * scale, rng.standard_normal(d) * scale
    l1, l2 = rng.uniform(0.05, 3.0, d), rng.uniform(0.05, 3.0, d)
    want = math.sqrt(((m1 - m2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum())
    # diagonal
    assert w2_gaussian(m1, np.diag(l1), m2, np.diag(l2)) == pytest.approx(want, rel=1e-9, abs=1e-7)
    # commuting: the same rotation of both diagonals
    q = _rot(d, seed)
    got = w2_gaussian(m1, q @ np.diag(l1) @ q.T, m2, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_w2_gaussian_general_matches_scipy_bures(seed):
    rng = np.random.default_rng(seed)
    d = 4
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    r1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(r1 @ s2 @ r1).real
    want = math.sqrt(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))
    assert w2_gaussian(m1, s1, m2, s2) == pytest.approx(want, rel=1e-9)
    assert w2_gaussian(m2, s2, m1, s1) == pytest.approx(want, rel=1e-9)
    assert w2_gaussian(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-6)


def test_w2_gaussian_accepts_singular_covariance():
    # point mass vs N(0, 1) in 1-D: W2 = 1
    assert w2_gaussian([0.0], [[0.0]], [0.0], [[1.0]]) == pytest.approx(1.0, rel=1e-12)


def test_w2_gaussian_bad_input():
    with pytest.raises(ValueError, match="positive semi-definite"):
        w2_gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], np.eye(2))
    with pytest.raises(ValueError, match="second"):
        w2_gaussian([0.0, 0.0], np.eye(2), [0.0, 0.0], np.eye(3))
    with pytest.raises(ValueError, match="dimensions differ"):
        w2_gaussian([0.0, 0.0], np.eye(2), [0.0], np.eye(1))


def test_sqrtm_psd():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 3))
    m = torch.tensor(a @ a.T)  # rank 3, PSD
    r = sqrtm_psd(m)
    torch.testing.assert_close(r, r.T)
    torch.testing.assert_close(r @ r, m, rtol=1e-10, atol=1e-10)
    assert float(torch.linalg.eigvalsh(r).min()) > -1e-7


# ---------------------------------------------------------------------------------------------
# sample-based distances
# ---------------------------------------------------------------------------------------------


def _normal(n, d, seed, shift=0.0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + shift


def test_sliced_w2_same_vs_shifted():
    x, y = _normal(3000, 3, 0), _normal(3000, 3, 1)
    g = torch.Generator().manual_seed(2)
    same = sliced_w2(x, y, generator=g)
    assert same < 0.1
    delta = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    shifted = sliced_w2(x, y + delta, projections=2000, generator=torch.Generator().manual_seed(3))
    # projections differ by theta . delta: sliced W2 ~ |delta| / sqrt(d) for directions uniform on the sphere
    assert shifted == pytest.approx(2.0 / math.sqrt(3), rel=0.08)
    assert shifted > 5 * same


@SETTINGS
@given(n=st.integers(2, 60), seed=st.integers(0, 10_000))
def test_sliced_w2_one_dimensional_is_sorted_matching(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n), rng.standard_normal(n) * 2 + 1
    want = math.sqrt(((np.sort(x) - np.sort(y)) ** 2).mean())
    assert sliced_w2(x[:, None], y[:, None], projections=3) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_sliced_w2_shapes_and_bad_input():
    x = _normal(50, 12, 0).reshape(50, 3, 4)
    assert sliced_w2(x, x) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        sliced_w2(_normal(10, 3, 0), _normal(10, 2, 1))
    with pytest.raises(ValueError, match="projections"):
        sliced_w2(x, x, projections=0)


def test_w2_samples_one_dimensional_is_sorted_matching():
    pytest.importorskip("ot")
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(40), rng.standard_normal(40) + 0.5
    want = math.sqrt(((np.sort(x) - np.sort(y)) ** 2).mean())
    assert w2_samples(x[:, None], y[:, None]) == pytest.approx(want, rel=1e-8)
    # a permutation of the same points is at distance 0; a translation at |shift|
    pts = _normal(30, 2, 5)
    assert w2_samples(
        pts, pts[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    ) == pytest.approx(0.0, abs=1e-7)
    assert w2_samples(pts, pts + torch.tensor([3.0, 4.0], dtype=torch.float64)) == pytest.approx(
        5.0, rel=1e-8
    )


def _mmd_direct(x: np.ndarray, y: np.ndarray, h: float) -> float:
    def k(a, b):
        return math.exp(-((a - b) ** 2).sum() / (2 * h * h))

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_mmd_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((12, 2)), rng.standard_normal((9, 2)) + 0.7
    assert mmd_rbf(x, y, bandwidth=0.8) == pytest.approx(_mmd_direct(x, y, 0.8), rel=1e-12, abs=1e-14)
    # default bandwidth: median pairwise distance of the pooled set (diagonal excluded)
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    h = float(torch.tensor(d[d > 0]).median())
    assert mmd_rbf(x, y) == pytest.approx(_mmd_direct(x, y, h), rel=1e-10, abs=1e-14)


def test_mmd_same_vs_shifted():
    x, y = _normal(600, 2, 7), _normal(600, 2, 8)
    same = mmd_rbf(x, y)
    shifted = mmd_rbf(x, y + 1.0)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 10 * abs(same)
    assert mmd_rbf(x, y + 2.0) > shifted


# ---------------------------------------------------------------------------------------------
# straightness
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 30))
def test_straightness_zero_for_straight_line(seed, steps):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 5.0, steps + 1))[::-1].copy()  # decreasing, non-uniform
    if np.any(np.diff(t) == 0):
        return
    start, end = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 3))
    u = (t - t[0]) / (t[-1] - t[0])
    traj = start[None] + u[:, None, None, None] * (end - start)[None]
    assert straightness(torch.tensor(traj), t) == pytest.approx(0.0, abs=1e-20 + 1e-12)


def test_straightness_of_quarter_circle():
    """x(t) = (cos t, sin t) on [0, pi/2]: (1/T) int |chord/T - x'|^2 dt = 1 - 8/pi^2."""
    t = np.linspace(0.0, math.pi / 2, 4001)
    traj = np.stack([np.cos(t), np.sin(t)], axis=-1)[:, None, :]
    assert straightness(torch.tensor(traj), torch.tensor(t)) == pytest.approx(1 - 8 / math.pi**2, rel=1e-6)
    # same value integrated backwards in time
    assert straightness(torch.tensor(traj[::-1].copy()), torch.tensor(t[::-1].copy())) == pytest.approx(
        1 - 8 / math.pi**2, rel=1e-6
    )


def test_straightness_bad_input():
    with pytest.raises(ValueError, match="trajectory"):
        straightness(torch.zeros(5, 2, 3), torch.linspace(1, 0, 4))
    with pytest.raises(ValueError, match="trajectory"):
        straightness(torch.zeros(1, 2, 3), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\[S\+1, B, \.\.\.\].*trajectory\[:, None\]"):
        straightness(torch.zeros(5), torch.linspace(1, 0, 5))


def test_mmd_needs_two_samples_per_set():
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 samples in each set, got 1 and 4"):
        mmd_rbf(x[:1], x)
    with pytest.raises(ValueError, match="got 4 and 1"):
        mmd_rbf(x, x[:1])
    assert math.isfinite(mmd_rbf(x[:2], x[2:]))
