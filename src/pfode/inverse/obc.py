"""Optimal-boundary-condition sampling: search the ODE's starting point ``x_T`` once, reuse it for every measurement.

Ma, Yang, Yang, Fu & Liu, "Solving Diffusion ODEs with Optimal Boundary Conditions for Better Image
Super-Resolution" (ICLR 2024, arXiv:2305.15357). A conditional diffusion ODE is a deterministic map
``x_0 = h(x_T, y)`` from its boundary condition (the starting state at ``t_max``) and the measurement; different
``x_T`` give results of different quality. The paper shows that an approximately optimal ``x_T`` -- the one whose
solution has (nearly) the highest probability density -- is shared across measurements, and finds it by Monte Carlo:
draw candidate boundary conditions, solve the ODE from each for every low/high-resolution pair of a small reference set
``R``, keep the candidate with the least average error to the high-resolution references (they use LPIPS), and use
that one ``x_T`` for every new measurement ("plug and play", no training).

Here:

* the conditional ODE ``h(x_T, y)`` is the unconditional model's probability-flow ODE made to agree with ``y``: by
  default the DDIM step with ``x0_hat`` projected on the measurements, ``x0 <- x0 + A^T (A A^T + noise^2 I)^{-1}
  (y - A x0)`` (through the operator's SVD; a gradient step on ``||A(x0) - y||^2 / 2`` for a nonlinear operator),
  which is deterministic and needs no gradient through the network; or ``inner=`` any registered
  :mod:`pfode.inverse` method that is deterministic given ``x_T`` (``"flowchef"``, ...);
* what is searched: ``candidates`` boundary conditions ``x_T ~ sigma(t_max) N(0, I)`` (one shared ``x_T`` of one
  sample's shape), scored by the mean squared error (or ``metric``) of ``h(x_T, A x_ref + noise)`` to ``x_ref`` over
  the reference set ``reference [R, *shape]``;
* without a reference set the model supplies one: ``n_reference`` samples of the unconditional model (PF-ODE,
  ``nfe`` evaluations) stand in for the high-resolution references -- the paper's criterion with the prior's own
  draws;
* :func:`find_boundary` runs the search alone (reuse its ``x_T`` with ``boundary=``). The search cost is reported in
  ``info["search_nfe"]`` (network evaluations in all, over all candidates and references) and is not part of the
  per-sample ``nfe``, which counts the solve from the chosen boundary (``nfe`` evaluations).
"""

from __future__ import annotations

import torch

from .._checks import check_int
from .base import METHODS, Evaluations, register
from .flowchef import coefficients, data_grad, grid_times
from .operators import Operator

__all__ = ["obc", "find_boundary", "projected_ode"]


def _project(operator: Operator, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x0`` moved to agree with ``y``: the Tikhonov-regularised pseudo-inverse of ``A`` (``noise^2`` as the
    regulariser) for a linear operator, one unit gradient step otherwise."""
    if not operator.linear:
        return x0 - data_grad(operator, x0, y)
    u, s, v = operator.svd()
    lam = operator.noise**2
    keep = s > 1e-12 * float(s.max())
    gain = torch.where(keep, s / (s * s + lam), torch.zeros_like(s))
    r = (y - operator.forward(x0)).double()
    corr = ((r @ u) * gain) @ v.T
    return x0 + corr.reshape(x0.shape).to(x0.dtype)


def projected_ode(ev, y, operator, *, nfe, x_T, generator=None, spacing: str = "logsnr"):
    """The deterministic measurement-consistent PF-ODE ``h(x_T, y)``: DDIM steps with ``x0_hat`` projected on the
    measurements (null-space projection, as in DDNM, Wang et al. 2023), ``nfe`` evaluations; returns the final
    projected ``x0_hat`` and ``{}``."""
    path = ev.path
    ts = grid_times(path, nfe, spacing)
    alphas, sigmas, _ = coefficients(path, ts)
    x = x_T
    x0 = x
    for k, t in enumerate(ts):
        x0, eps = ev.pair(x, t)
        x0 = _project(operator, x0, y)
        if k + 1 < len(ts):
            x = alphas[k + 1] * x0 + sigmas[k + 1] * eps
    return x0, {}


def _inner(name):
    if name == "projection":
        return projected_ode
    if name == "obc" or name not in METHODS:
        from .base import available

        valid = [n for n in available() if n != "obc"]
        raise ValueError(f"inner={name!r} is not a method to search with; valid: projection, {', '.join(valid)}")
    return METHODS[name][0]


def _mse(x, ref):
    return ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)


def find_boundary(
    den,
    operator: Operator,
    reference: torch.Tensor | None = None,
    *,
    candidates: int = 16,
    nfe: int = 20,
    inner: str = "projection",
    metric=None,
    n_reference: int = 16,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    inner_options: dict | None = None,
):
    """Search the approximately optimal boundary condition ``x_T`` of the conditional ODE (Ma et al., ICLR 2024).

    Args:
        den: a :class:`pfode.Denoiser`.
        operator: the measurement (its ``noise`` is drawn into the reference measurements).
        reference: high-quality references ``[R, *shape]``; ``None`` draws ``n_reference`` samples of the model.
        candidates: boundary conditions to try (``>= 1``).
        nfe: evaluations of each conditional ODE solve.
        inner: ``"projection"`` (see :func:`projected_ode`) or a registered deterministic method name.
        metric: ``metric(x_hat [R, ...], reference [R, ...]) -> [R]`` errors (default mean squared error).
        generator: seeds the candidates, the reference measurements and model references.
        cond: network conditioning; inner_options: options of the ``inner`` method.
    Returns:
        ``(x_T [1, *shape], info)`` with ``scores`` (the mean error of every candidate, ``[C]``), ``best`` (its index),
        ``search_nfe`` (network evaluations spent, per sample summed over candidates and references).
    """
    from ..predictions import Denoiser

    if not isinstance(den, Denoiser):
        raise TypeError(f"den must be a pfode.Denoiser, got {type(den).__name__}")
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a pfode.inverse operator, got {type(operator).__name__}")
    candidates = check_int("candidates", candidates, 1)
    nfe = check_int("nfe", nfe, 1)
    fn = _inner(inner)
    path = den.path
    sig = float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64)))
    search_nfe = 0
    if reference is None:
        from ..sample import sample

        n_reference = check_int("n_reference", n_reference, 1)
        z = sig * torch.randn((n_reference, *operator.shape), generator=generator, dtype=torch.float32)
        out = sample(den, z, nfe=max(nfe, 2), solver="ddim", return_info=True, cond=cond)
        reference, search_nfe = out.x.detach(), out.nfe * n_reference
    if not isinstance(reference, torch.Tensor) or tuple(reference.shape[1:]) != operator.shape:
        got = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise ValueError(f"reference must be a tensor [R, *{operator.shape}] of high-quality samples, got {got}")
    if not bool(torch.isfinite(reference).all()):
        raise ValueError("reference contains NaN or infinite values")
    r = reference.shape[0]
    y_ref = operator.measure(reference, generator=generator)
    xs = sig * torch.randn((candidates, *operator.shape), generator=generator, dtype=reference.dtype)
    xs = xs.to(reference.device)
    metric = metric or _mse
    scores = []
    for c in range(candidates):
        ev = Evaluations(den, cond)
        x_T = xs[c : c + 1].expand(r, *operator.shape).clone()
        x_hat, _ = fn(
            ev, y_ref, operator, nfe=nfe, x_T=x_T, generator=torch.Generator().manual_seed(0), **(inner_options or {})
        )
        scores.append(float(metric(x_hat.detach(), reference).mean()))
        search_nfe += ev.nfe * r
    scores = torch.tensor(scores, dtype=torch.float64)
    best = int(scores.argmin())
    return xs[best : best + 1], {"scores": scores, "best": best, "search_nfe": search_nfe, "reference_size": r}


def obc(
    ev,
    y,
    operator,
    *,
    nfe,
    x_T,
    generator=None,
    boundary: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    candidates: int = 16,
    inner: str = "projection",
    metric=None,
    n_reference: int = 16,
    search_nfe: int | None = None,
    inner_options: dict | None = None,
):
    """Optimal-boundary-condition sampling (Ma et al., ICLR 2024): solve the conditional ODE from the searched
    ``x_T`` (see the module docs); ``x_T`` of the contract is ignored unless ``candidates=1`` and no ``boundary``.

    Args (beyond the method contract of :mod:`pfode.inverse.base`):
        boundary: a boundary condition ``[1, *shape]`` from :func:`find_boundary` (skips the search).
        reference: references ``[R, *shape]`` for the search (``None``: ``n_reference`` model samples).
        candidates, metric, n_reference: as in :func:`find_boundary`; search_nfe: evaluations of each search
            solve (default ``nfe``).
        inner: ``"projection"`` or a registered deterministic method; inner_options: its options.
    Returns:
        ``x [B, *shape]`` and ``info`` with ``boundary`` (the ``x_T`` used) and the search's ``scores``, ``best``,
        ``search_nfe``.
    """
    fn = _inner(inner)
    info = {"inner": inner}
    if boundary is None:
        boundary, found = find_boundary(
            ev.den,
            operator,
            reference,
            candidates=candidates,
            nfe=search_nfe or nfe,
            inner=inner,
            metric=metric,
            n_reference=n_reference,
            generator=generator,
            cond=ev.cond,
            inner_options=inner_options,
        )
        info.update(found)
    elif not isinstance(boundary, torch.Tensor) or tuple(boundary.shape) not in ((1, *operator.shape), operator.shape):
        got = tuple(boundary.shape) if isinstance(boundary, torch.Tensor) else type(boundary).__name__
        raise ValueError(f"boundary must be a tensor [1, *{operator.shape}] (from find_boundary), got {got}")
    boundary = boundary.reshape(1, *operator.shape).to(x_T.device, x_T.dtype)
    info["boundary"] = boundary
    x, _ = fn(
        ev, y, operator, nfe=nfe, x_T=boundary.expand_as(x_T).clone(), generator=generator, **(inner_options or {})
    )
    return x, info


register(
    "obc",
    obc,
    "Ma et al. ICLR 2024, Solving Diffusion ODEs with Optimal Boundary Conditions for Better Image Super-Resolution",
    "any",
)
