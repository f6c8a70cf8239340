"""Distances between distributions and sample sets.

* :func:`w2_gaussian`: exact 2-Wasserstein distance between two Gaussians (Bures formula);
* :func:`sliced_w2`: sliced 2-Wasserstein distance between two sample sets;
* :func:`w2_samples`: exact W2 between two empirical measures (POT's ``emd2``; ``pip install POT``);
* :func:`mmd_rbf`: unbiased squared MMD with a Gaussian kernel;
* :func:`straightness`: trajectory straightness of Liu et al. (rectified flow).
"""

from __future__ import annotations

import torch

from ._checks import as_f64, check_int

__all__ = [
    "w2_gaussian",
    "sliced_w2",
    "w2_samples",
    "mmd_rbf",
    "straightness",
    "sqrtm_psd",
    "kinetic_energy",
    "fp_residual",
]


def kinetic_energy(model_or_target, path=None, **options):
    """Kinetic energy ``int E|u_t(x_t)|^2 dt`` of a path, time mapped to [0, 1] (Shaul et al., 2023): see
    :func:`pfode.kinetic.kinetic_energy` (closed form for a Gaussian, Monte Carlo for a mixture or a network)."""
    from .kinetic import kinetic_energy as _kinetic_energy  # kinetic imports analytic, which is heavier

    return _kinetic_energy(model_or_target, path, **options)


def fp_residual(model, path, x, t, **options):
    """Per-sample norm of the score Fokker-Planck residual (Lai et al., 2023; Deveney et al., 2023): see
    :func:`pfode.fokker_planck.fp_residual` (exact divergence on small samples, Hutchinson on large ones)."""
    from .fokker_planck import fp_residual as _fp_residual  # imports the training objectives

    return _fp_residual(model, path, x, t, **options)


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    e, q = torch.linalg.eigh(0.5 * (a + a.T))
    return (q * e.clamp_min(0).sqrt()) @ q.T


def _check_gaussian(name, m, s):
    m, s = as_f64(m), as_f64(s)
    if m.dim() != 1 or s.shape != (m.shape[0], m.shape[0]):
        raise ValueError(f"{name}: mean must be [d] and cov [d, d]; got {tuple(m.shape)} and {tuple(s.shape)}")
    if float(torch.linalg.eigvalsh(0.5 * (s + s.T)).min()) < -1e-10 * max(1.0, float(s.abs().max())):
        raise ValueError(f"{name}: covariance must be positive semi-definite")
    return m, s


def w2_gaussian(mean1, cov1, mean2, cov2) -> float:
    """``W2(N(m1, S1), N(m2, S2))``: ``sqrt(|m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2))``."""
    m1, s1 = _check_gaussian("first", mean1, cov1)
    m2, s2 = _check_gaussian("second", mean2, cov2)
    if m1.shape != m2.shape:
        raise ValueError(f"dimensions differ: {m1.shape[0]} and {m2.shape[0]}")
    r2 = sqrtm_psd(s2)
    cross = sqrtm_psd(r2 @ s1 @ r2)
    w2sq = float(((m1 - m2) ** 2).sum() + torch.trace(s1 + s2 - 2 * cross))
    return max(w2sq, 0.0) ** 0.5


def _flat2(x, y):
    x, y = as_f64(x), as_f64(y)
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets have different dimensions: {x.shape[1]} and {y.shape[1]}")
    return x, y


def sliced_w2(x, y, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced W2 between sample sets ``[N, ...]`` and ``[M, ...]`` (quantiles matched on random
    directions)."""
    check_int("projections", projections, 1)
    x, y = _flat2(x, y)
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta.to(x.device)).sort(0).values, (y @ theta.to(y.device)).sort(0).values
    n = min(px.shape[0], py.shape[0])
    q = torch.linspace(0, 1, n, dtype=torch.float64)
    ix = (q * (px.shape[0] - 1)).round().long()
    iy = (q * (py.shape[0] - 1)).round().long()
    return float(((px[ix] - py[iy]) ** 2).mean()) ** 0.5


def w2_samples(x, y) -> float:
    """Exact W2 between the empirical measures of two sample sets (uniform weights, POT ``emd2``)."""
    try:
        import ot
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("w2_samples needs POT: pip install 'pfode[bench]' (or pip install POT)") from e
    x, y = _flat2(x, y)
    cost = torch.cdist(x, y) ** 2
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    return float(ot.emd2(a.numpy(), b.numpy(), cost.cpu().numpy(), numItermax=10_000_000)) ** 0.5


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with kernel ``exp(-|a-b|^2 / (2 h^2))``; ``h`` defaults to the median distance."""
    x, y = _flat2(x, y)
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z) ** 2
    if bandwidth is None:
        bandwidth = float(d2[d2 > 0].median().sqrt()) if bool((d2 > 0).any()) else 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples in each set, got {n} and {m}")
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def straightness(trajectory: torch.Tensor, times) -> float:
    """Straightness of Liu et al. (2022): ``E int |(x_end - x_start)/(T) - dx/dt|^2 dt``, 0 for
    straight paths.

    ``trajectory`` is ``[S+1, B, ...]`` along ``times`` (``[S+1]``); derivatives are finite differences.
    """
    traj = as_f64(trajectory)
    t = as_f64(times).to(traj.device)
    if traj.dim() < 2:
        raise ValueError(
            f"trajectory must be [S+1, B, ...] (states along times, then the batch), got shape {tuple(traj.shape)}; "
            "for one sample use trajectory[:, None]"
        )
    if traj.shape[0] != t.shape[0] or t.shape[0] < 2:
        raise ValueError(f"trajectory has {traj.shape[0]} states but times has {t.shape[0]} (need >= 2, equal)")
    flat = traj.reshape(traj.shape[0], traj.shape[0] and traj.shape[1], -1)
    dt = t[1:] - t[:-1]
    vel = (flat[1:] - flat[:-1]) / dt[:, None, None]
    total = (flat[-1] - flat[0]) / (t[-1] - t[0])
    err = ((vel - total[None]) ** 2).sum(-1).mean(-1)  # [S]
    return float((err * dt.abs()).sum() / (t[-1] - t[0]).abs())
