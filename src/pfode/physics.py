"""Probability flows of non-equilibrium steady states: entropy production and probability current from a score.

Following Boffi & Vanden-Eijnden, "Deep learning probability flows and entropy production rates in active
matter" (PNAS 2024, arXiv:2309.12991): for an overdamped diffusion

    dx = b(x) dt + sqrt(2) B dW,        D = B B^T  (symmetric positive definite),

the Fokker-Planck equation reads ``d_t p = -div(p v)`` with the *probability-flow velocity*

    v(x) = b(x) - D grad log p(x),

so a model of the score ``grad log p`` (e.g. one learned by denoising score matching) together with the known
drift gives the stationary probability current ``j = v p`` and the entropy production rate

    Pi = E_p[ v^T D^{-1} v ] = int j^T D^{-1} j / p dx   (>= 0, = 0 exactly when j = 0, i.e. detailed balance).

The per-sample terms ``v(x)^T D^{-1} v(x)`` are the local contributions the paper decomposes.

Exactly solvable test system (:class:`OrnsteinUhlenbeck`): ``b(x) = -A x`` with ``A`` stable. Its stationary law is
``N(0, S)`` with ``A S + S A^T = 2 D`` (continuous Lyapunov equation). Writing ``Q = A S - D`` (antisymmetric by the
Lyapunov equation), ``A = (D + Q) S^{-1}``, and

    score(x) = -S^{-1} x,     v(x) = -Q S^{-1} x,
    Pi = tr(S^{-1} Q^T D^{-1} Q) = tr(A^T D^{-1} A S) - tr(A).

The second form follows from ``E[b^T D^{-1} b] - 2 E[b . s] + E[s^T D s]`` with ``E[b . s] = -E[div b] = tr A``,
``E[s^T D s] = tr(D S^{-1})`` and stationarity ``E[v . s] = 0`` (which gives ``tr(D S^{-1}) = tr A``). ``Q = 0``
(``A = D H`` with ``H`` symmetric, ``S = H^{-1}``) is the reversible case: no current, ``Pi = 0``.

Error of a score model. Stationarity means ``E_p[v . grad g] = 0`` for every test function ``g``. So when a
score model errs by a gradient, ``score_hat = score + grad g`` (as for any model of a log-density, and for the
smoothed score of :func:`score_from_denoiser`), the estimated rate is biased upward by exactly

    Pi_hat - Pi = E_p[grad g^T D grad g] >= 0,

second order in the score error: reading the score at noise level ``s`` costs ``O(s^2)`` in the score but only
``O(s^4)`` in ``Pi``. The current ``j_hat / p - j / p = -D grad g`` stays first order.

Everything is float64; states are ``[B, d]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

from ._checks import as_f64, check_finite_float, check_int
from .predictions import Denoiser

__all__ = [
    "OrnsteinUhlenbeck",
    "solve_lyapunov",
    "current_velocity",
    "probability_current",
    "entropy_production_rate",
    "score_from_denoiser",
]

_LOG_2PI = math.log(2 * math.pi)


# --- argument checks ----------------------------------------------------------------------------
def _square(name: str, m) -> torch.Tensor:
    if not isinstance(m, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a [d, d] matrix (tensor, array or nested list), got {type(m).__name__}")
    m = as_f64(torch.as_tensor(m)).detach().cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{name} must be a square [d, d] matrix, got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} must be finite")
    return m


def _diffusion(D, d: int | None = None) -> torch.Tensor:
    """``D`` as an SPD ``[d, d]`` float64 matrix (a positive number means ``D I``)."""
    if isinstance(D, (int, float)) and not isinstance(D, bool):
        if d is None:
            raise ValueError("D given as a number needs the dimension (pass a [d, d] matrix)")
        c = check_finite_float("D", D, 0.0, strict=True)
        return c * torch.eye(d, dtype=torch.float64)
    D = _square("D", D)
    if d is not None and D.shape[0] != d:
        raise ValueError(f"D has shape {tuple(D.shape)} but the states have d={d} features")
    if not torch.allclose(D, D.T, rtol=1e-10, atol=1e-12 * float(D.abs().max())):
        raise ValueError("D must be symmetric (a diffusion matrix B B^T)")
    lo = float(torch.linalg.eigvalsh(D).min())
    if lo <= 0:
        raise ValueError(f"D must be positive definite; its smallest eigenvalue is {lo:.3g}")
    return D


def _states(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of states [B, d], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape [B, d] with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _field(name: str, fn: Callable, x: torch.Tensor) -> torch.Tensor:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable x [B, d] -> [B, d], got {type(fn).__name__}")
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name}(x) must return a tensor shaped like x {tuple(x.shape)}, got {shape}")
    return out.to(torch.float64)


def solve_lyapunov(A, C) -> torch.Tensor:
    """The solution ``S`` of ``A S + S A^T = C`` (float64 ``[d, d]``; Bartels-Stewart via SciPy).

    Unique when no two eigenvalues of ``A`` sum to zero (always when ``A`` is stable); ``S`` is symmetrised
    when ``C`` is symmetric.
    """
    A, C = _square("A", A), _square("C", C)
    if A.shape != C.shape:
        raise ValueError(f"A {tuple(A.shape)} and C {tuple(C.shape)} must have the same shape")
    S = torch.from_numpy(scipy.linalg.solve_continuous_lyapunov(A.numpy(), C.numpy())).to(torch.float64)
    if torch.allclose(C, C.T):
        S = 0.5 * (S + S.T)
    return S


# --- the exactly solvable system ----------------------------------------------------------------
class OrnsteinUhlenbeck:
    """Linear (Ornstein-Uhlenbeck) diffusion ``dx = -A x dt + sqrt(2) B dW`` with ``D = B B^T``.

    Stationary law ``N(0, S)`` with ``A S + S A^T = 2 D``; exact score, probability-flow velocity, current and
    entropy production rate (module docstring). Out of equilibrium (``Q = A S - D != 0``) whenever ``A`` is not
    of the form ``D H`` with ``H`` symmetric.

    Args:
        A: ``[d, d]`` drift matrix, stable (every eigenvalue has a positive real part).
        D: ``[d, d]`` symmetric positive definite diffusion matrix, or a positive number ``c`` for ``c I``.

    Attributes:
        cov (``S``), precision (``S^{-1}``), circulation (``Q = A S - D``, antisymmetric), chol_D (``B``), d.
    """

    def __init__(self, A, D):
        A = _square("A", A)
        D = _diffusion(D, A.shape[0])
        ev = torch.linalg.eigvals(A)
        if float(ev.real.min()) <= 0:
            raise ValueError(
                f"A must be stable (every eigenvalue with a positive real part, so that dx = -A x dt + ... has a "
                f"stationary law); its eigenvalue with the smallest real part is {complex(ev[ev.real.argmin()]):.3g}"
            )
        self.A, self.D, self.d = A, D, A.shape[0]
        self.cov = solve_lyapunov(A, 2.0 * D)
        self.precision = torch.linalg.inv(self.cov)
        self.precision = 0.5 * (self.precision + self.precision.T)
        self.circulation = A @ self.cov - D
        self.chol_D = torch.linalg.cholesky(D)
        self._chol_S = torch.linalg.cholesky(self.cov)
        self._D_inv = torch.linalg.inv(D)

    @classmethod
    def driven(cls, cov, D, Q) -> OrnsteinUhlenbeck:
        """The OU process with stationary covariance ``cov``, diffusion ``D`` and circulation ``Q`` (antisymmetric):
        ``A = (D + Q) cov^{-1}``. Every stable OU process has this form; ``Q = 0`` is the reversible one."""
        cov, Q = _square("cov", cov), _square("Q", Q)
        D = _diffusion(D, cov.shape[0])
        if Q.shape != cov.shape:
            raise ValueError(f"Q {tuple(Q.shape)} must have the shape of cov {tuple(cov.shape)}")
        if not torch.allclose(Q, -Q.T, rtol=0, atol=1e-12 * (1.0 + float(Q.abs().max()))):
            raise ValueError("Q must be antisymmetric (Q^T = -Q)")
        if not torch.allclose(cov, cov.T) or float(torch.linalg.eigvalsh(cov).min()) <= 0:
            raise ValueError("cov must be symmetric positive definite")
        return cls((D + Q) @ torch.linalg.inv(cov), D)

    @classmethod
    def random(
        cls, d: int, drive: float = 1.0, cond: float = 4.0, generator: torch.Generator | None = None
    ) -> OrnsteinUhlenbeck:
        """A random driven OU process: random rotations, ``cov`` and ``D`` with eigenvalues log-spaced on
        ``[1/sqrt(cond), sqrt(cond)]``, circulation ``Q = drive (G - G^T) / sqrt(2 d)`` with ``G`` standard normal."""
        check_int("d", d, 1)
        drive = check_finite_float("drive", drive, 0.0)
        cond = check_finite_float("cond", cond, 1.0)

        def spd():
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
            lam = cond ** torch.linspace(-0.5, 0.5, d, dtype=torch.float64)
            return (q * lam) @ q.T

        cov, D = spd(), spd()
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        return cls.driven(cov, D, drive * (g - g.T) / math.sqrt(2 * d))

    # -- fields ------------------------------------------------------------------------------
    def drift(self, x: torch.Tensor) -> torch.Tensor:
        """``b(x) = -A x`` for ``x`` ``[B, d]`` (float64)."""
        return -as_f64(_states(x)) @ self.A.T.to(x.device)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact stationary score ``-S^{-1} x`` ``[B, d]``."""
        return -as_f64(_states(x)) @ self.precision.to(x.device)

    def smoothed_score(self, x: torch.Tensor, s: float) -> torch.Tensor:
        """Score of ``x0 + s eps`` (``x0`` stationary, ``eps ~ N(0, I)``): ``-(S + s^2 I)^{-1} x`` ``[B, d]``.

        This is what :func:`score_from_denoiser` returns for an exact denoiser read at ``s = sigma / alpha``.
        """
        s = check_finite_float("s", s, 0.0)
        m = torch.linalg.inv(self.cov + s * s * torch.eye(self.d, dtype=torch.float64))
        return -as_f64(_states(x)) @ m.to(x.device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Stationary log-density ``[B]``."""
        x = as_f64(_states(x))
        z = torch.linalg.solve_triangular(self._chol_S.to(x.device), x.T, upper=False)
        logdet = 2.0 * torch.log(torch.diagonal(self._chol_S)).sum()
        return -0.5 * ((z * z).sum(0) + logdet + self.d * _LOG_2PI)

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """Exact probability-flow velocity ``v = b - D grad log p = -Q S^{-1} x`` ``[B, d]``."""
        x = as_f64(_states(x))
        return self.drift(x) - self.score(x) @ self.D.to(x.device)

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """Exact stationary probability current ``j = v p`` ``[B, d]`` (divergence-free)."""
        return self.velocity(x) * torch.exp(self.log_prob(x))[:, None]

    def entropy_production_rate(self, precision=None) -> float:
        """Exact ``Pi = tr(A^T D^{-1} A S) - tr(A) = E_p[v^T D^{-1} v]``.

        With ``precision = P`` (``[d, d]``) it is instead the closed form of the estimator
        ``E_p[v_P^T D^{-1} v_P]`` that uses the linear score model ``-P x`` in place of the true score
        (``v_P = -(A - D P) x``): ``tr((A - D P)^T D^{-1} (A - D P) S)`` -- e.g. ``P = (S + s^2 I)^{-1}`` for
        the small-noise bias of :func:`score_from_denoiser`.
        """
        if precision is None:
            return float(torch.trace(self.A.T @ self._D_inv @ self.A @ self.cov) - torch.trace(self.A))
        P = _square("precision", precision)
        if P.shape != self.A.shape:
            raise ValueError(f"precision must have shape {tuple(self.A.shape)}, got {tuple(P.shape)}")
        M = self.A - self.D @ P
        return float(torch.trace(M.T @ self._D_inv @ M @ self.cov))

    def entropy_production_rate_circulation(self) -> float:
        """The same ``Pi`` from the circulation: ``tr(S^{-1} Q^T D^{-1} Q)`` (a check of the first form)."""
        Q = self.circulation
        return float(torch.trace(self.precision @ Q.T @ self._D_inv @ Q))

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact stationary samples ``[n, d]`` (float64)."""
        check_int("n", n, 1)
        return torch.randn(n, self.d, generator=generator, dtype=torch.float64) @ self._chol_S.T

    def simulate(
        self,
        x0: torch.Tensor,
        dt: float,
        n_steps: int,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> torch.Tensor:
        """Euler-Maruyama: ``x <- x - A x dt + sqrt(2 dt) B z``, ``n_steps`` times from ``x0`` ``[B, d]``.

        Returns the end state ``[B, d]`` or, with ``return_trajectory``, ``[n_steps + 1, B, d]`` (float64). The
        chain's own stationary covariance is :meth:`em_cov` (``S + O(dt)``).
        """
        x = as_f64(_states(x0)).clone()
        if x.shape[1] != self.d:
            raise ValueError(f"x0 has {x.shape[1]} features, the system has d={self.d}")
        dt = check_finite_float("dt", dt, 0.0, strict=True)
        check_int("n_steps", n_steps, 0)
        step = (torch.eye(self.d, dtype=torch.float64) - dt * self.A).T.to(x.device)
        noise = (math.sqrt(2.0 * dt) * self.chol_D.T).to(x.device)
        traj = [x] if return_trajectory else None
        for _ in range(n_steps):
            z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
            x = x @ step + z @ noise
            if return_trajectory:
                traj.append(x)
        return torch.stack(traj) if return_trajectory else x

    def em_cov(self, dt: float) -> torch.Tensor:
        """Stationary covariance of the Euler-Maruyama chain with step ``dt``: the solution of the discrete
        Lyapunov equation ``C = (I - A dt) C (I - A dt)^T + 2 D dt`` (``ValueError`` if the chain is unstable)."""
        dt = check_finite_float("dt", dt, 0.0, strict=True)
        F = torch.eye(self.d, dtype=torch.float64) - dt * self.A
        if float(torch.linalg.eigvals(F).abs().max()) >= 1:
            raise ValueError(f"dt={dt!r} is too large: the Euler-Maruyama chain is unstable for this A")
        C = scipy.linalg.solve_discrete_lyapunov(F.numpy(), (2.0 * dt * self.D).numpy())
        C = torch.from_numpy(C).to(torch.float64)
        return 0.5 * (C + C.T)

    @property
    def reversible(self) -> bool:
        """Whether detailed balance holds (``Q = A S - D`` vanishes to round-off)."""
        scale = float(self.D.abs().max())
        return bool(self.circulation.abs().max() <= 1e-10 * scale)

    def __repr__(self):
        return f"OrnsteinUhlenbeck(d={self.d}, Pi={self.entropy_production_rate():.4g})"


# --- estimators from any score ------------------------------------------------------------------
def current_velocity(score_fn: Callable, drift_fn: Callable, D, x: torch.Tensor) -> torch.Tensor:
    """Probability-flow velocity ``v(x) = b(x) - D score(x)`` (Boffi & Vanden-Eijnden, 2023), ``[B, d]`` float64.

    Args:
        score_fn: ``x [B, d] -> grad log p(x) [B, d]`` (exact or learned, e.g. :func:`score_from_denoiser`).
        drift_fn: ``x [B, d] -> b(x) [B, d]``.
        D: ``[d, d]`` symmetric positive definite diffusion matrix or a positive number (``D I``).
        x: ``[B, d]`` states.
    """
    x = _states(x)
    D = _diffusion(D, x.shape[1]).to(x.device)
    return _field("drift_fn", drift_fn, x) - _field("score_fn", score_fn, x) @ D


def probability_current(score_fn: Callable, drift_fn: Callable, D, x: torch.Tensor, density=None) -> torch.Tensor:
    """Stationary probability current ``j = v p`` at ``x`` from a score model (``[B, d]``, float64).

    A score determines ``v = b - D grad log p`` but not ``p`` itself, so without ``density`` this returns the
    current per unit probability ``j / p = v`` (:func:`current_velocity`) -- what enters averages over stationary
    samples, ``E_p[g . v] = int g . j``. Give ``density`` (a ``[B]`` tensor of ``p(x)`` or a callable
    ``x -> p(x) [B]``) to get ``j`` itself. Arguments as :func:`current_velocity`.
    """
    v = current_velocity(score_fn, drift_fn, D, x)
    if density is None:
        return v
    p = density(x) if callable(density) else density
    if not isinstance(p, torch.Tensor) or p.shape != (x.shape[0],):
        raise ValueError(f"density must be a [B] = ({x.shape[0]},) tensor or a callable returning one")
    return v * as_f64(p).to(v.device)[:, None]


def entropy_production_rate(
    score_fn: Callable, drift_fn: Callable, D, x: torch.Tensor, per_sample: bool = False
) -> torch.Tensor:
    """Monte-Carlo entropy production rate ``Pi = E_p[v^T D^{-1} v]`` over stationary samples ``x`` ``[B, d]``.

    Boffi & Vanden-Eijnden (2023): with ``v = b - D score`` from any score model. Returns the mean (0-dim float64
    tensor) or, with ``per_sample``, the local terms ``v(x)^T D^{-1} v(x)`` ``[B]``. Arguments as
    :func:`current_velocity`.
    """
    x = _states(x)
    D = _diffusion(D, x.shape[1]).to(x.device)
    v = current_velocity(score_fn, drift_fn, D, x)
    local = (v * torch.linalg.solve(D, v.T).T).sum(1)
    return local if per_sample else local.mean()


def score_from_denoiser(den: Denoiser, t: float | None = None, dtype: torch.dtype | None = None) -> Callable:
    """The data score read from a denoiser at a small time: ``x -> (x0_hat(alpha x, t) - x) / s^2 = -eps_hat / s``.

    ``x_t / alpha = x0 + s eps`` with ``s = sigma(t) / alpha(t)``, so Tweedie's formula applied at ``x_t = alpha x``
    gives the score of ``p_s = p_data * N(0, s^2 I)`` at ``x`` -- the data score up to a bias ``O(s^2)`` that
    vanishes as ``t -> t_lo`` (``p_s = p + s^2 Lap(p) / 2 + ...``). For Gaussian data ``N(m, S)`` it is exactly
    ``-(S + s^2 I)^{-1} (x - m)`` (:meth:`OrnsteinUhlenbeck.smoothed_score`). Evaluating at ``alpha x`` (not ``x``)
    removes the ``O(1 - alpha)`` rescaling bias of VP-type paths. A learned ``eps_hat`` error ``e`` becomes a score
    error ``e / s``: too small a ``t`` trades the bias for noise.

    Args:
        den: a :class:`pfode.Denoiser` (trained, or exact from :mod:`pfode.analytic`).
        t: path time to read at (default ``den.path.t_min``); must give ``sigma > 0``.
        dtype: dtype to call the network in (e.g. ``torch.float32`` for a float32 network); default: ``x``'s.

    Returns:
        ``score(x)``: ``[B, d] -> [B, d]`` in float64, with attributes ``t`` and ``s``.
    """
    if not isinstance(den, Denoiser):
        raise TypeError(f"den must be a pfode.Denoiser, got {type(den).__name__}")
    path = den.path
    t = path.t_min if t is None else check_finite_float("t", t)
    if not path.t_lo <= t <= path.t_hi:
        raise ValueError(f"t={t!r} lies outside the path's range [{path.t_lo}, {path.t_hi}] of {path!r}")
    alpha, sigma = float(path.alpha(t)), float(path.sigma(t))
    if not (sigma > 0 and alpha > 0):
        raise ValueError(f"t={t!r}: need sigma(t) > 0 and alpha(t) > 0, got sigma={sigma!r}, alpha={alpha!r}")
    s = sigma / alpha

    def score(x: torch.Tensor) -> torch.Tensor:
        x = _states(x)
        xin = (alpha * x).to(dtype) if dtype is not None else alpha * x
        _, eps = den(xin, t)
        return -as_f64(eps) / s

    score.t, score.s = t, s
    return score
