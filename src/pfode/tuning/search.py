"""``pfode.tune``: fit a few-step sampler to one model against a teacher solve of the same ODE.

The objective is the distance of the recipe's endpoints to the teacher's on a tuning set of noises (mean
over samples of the per-sample RMSE, in the space of ``features`` when given). The search space:

* ``times``: the step locations, parameterized monotonically in ``lam = log(alpha/sigma)`` (a softmax of
  free logits gives the increments, so every candidate is strictly decreasing in ``t`` and inside the
  ends) and fitted to the teacher's endpoints by L-BFGS through the whole sampler (LD3's objective, with
  finite-difference gradients, so any network works, differentiable or not), from the best of the
  standard spacings;
* ``solvers``: each step's rule (order 1-3, data or noise space, corrector on or off; the unified sampling
  framework's search space) by coordinate descent over the steps, alternating with the times;
* ``skip``: an analytic first segment (the closed-form PF-ODE of a Gaussian with the data's moments) from
  ``t_start`` to a tuned ``t_skip`` at no evaluation; the moments come from ``skip_data`` or, by default,
  from the teacher's own endpoints (the model's samples);
* ``family="dpm-v3"``: DPM-Solver-v3 steps with the model's empirical statistics, their orders searched.

Every call reports the error on a held-out set of noises, and the recipe stores both figures together
with the best untuned pfode solver at the same budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_finite_float, check_int
from ..predictions import check_denoiser
from ..solvers.usf import Rule
from .recipe import Recipe, RecipeError
from .skip import GaussianSkip

__all__ = ["tune", "TuneError", "BASELINE_SOLVERS"]

#: untuned solvers (times every spacing) the recipe is compared with
BASELINE_SOLVERS = ("dpm++2m", "dpm++3m", "unipc", "deis", "ipndm")
_SPACINGS = ("logsnr", "karras", "uniform", "quadratic")
#: relative improvement a per-step rule change must bring on the tuning set to be taken (against overfitting)
_MARGIN = 0.005
#: step families :func:`tune` searches; ``"auto"`` runs the usf search, then dpm-v3 steps from its times
FAMILIES = ("usf", "dpm-v3", "auto")
_RULES = tuple(Rule(k, sp, c) for k in (1, 2, 3) for sp in ("x0", "eps") for c in (False, True))


class TuneError(ValueError):
    """A tuning request that cannot be met (names the argument)."""


class _Spent(Exception):
    """The search budget of sampler runs is spent."""


def _rmse(x: torch.Tensor, ref: torch.Tensor, features) -> float:
    a, b = (features(x), features(ref)) if features is not None else (x, ref)
    d = (a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1)).to(torch.float64)
    e = d.pow(2).mean(1).sqrt().mean()
    return float(e) if bool(torch.isfinite(e)) else math.inf


class _Problem:
    """The model, the tuning and held-out noises, the teacher's endpoints and the counted objective."""

    def __init__(self, den, x_train, x_held, ref_train, ref_held, t_start, t_end, features, cond, budget, bar):
        self.den, self.path = den, den.path
        self.x, self.xh, self.ref, self.refh = x_train, x_held, ref_train, ref_held
        self.t_start, self.t_end = t_start, t_end
        self.features, self.cond = features, cond
        self.lo, self.hi = (float(v) for v in self.path.lam(torch.tensor([t_start, t_end], dtype=torch.float64)))
        self.evals = 0
        self.budget = budget
        self.bar = bar
        self.shape = tuple(x_train.shape[1:])

    def budget_left(self) -> int:
        return self.budget - self.evals

    def times_of(self, lams) -> tuple[float, ...]:
        t = self.path.t_of_lam(torch.as_tensor(np.asarray(lams), dtype=torch.float64)).tolist()
        return tuple(t)

    def recipe(self, lams, rules, skip: GaussianSkip | None, family="usf", stats=None) -> Recipe:
        times = self.times_of(lams)
        return Recipe(
            times=times,
            rules=tuple(rules),
            path=self.path.spec(),
            shape=self.shape,
            t_start=self.t_start if skip is not None else None,
            skip=skip,
            family=family,
            stats=stats,
        )

    def error(self, recipe: Recipe, held: bool = False, force: bool = False) -> float:
        from ..sample import Sampler

        if not force and self.evals >= self.budget:
            raise _Spent
        self.evals += 1
        if self.bar is not None:
            self.bar.update(1)
        x, ref = (self.xh, self.refh) if held else (self.x, self.ref)
        try:
            out = Sampler(self.den, recipe=recipe)(x, cond=self.cond, check_finite=False)
        except (ValueError, RecipeError):
            return math.inf
        return _rmse(out, ref, self.features)


class _Times:
    """Monotone parameterization of ``lam_0 < ... < lam_N`` in ``[lo, hi]``: positions are cumulative sums of a
    softmax of ``N + 1`` logits (``N + 2`` with a free ``lam_0``); the last logit (the slack) is fixed at 0."""

    def __init__(self, lo: float, hi: float, steps: int, free_start: bool):
        self.lo, self.hi, self.n, self.free = lo, hi, steps, free_start

    @property
    def dim(self) -> int:
        return self.n + (1 if self.free else 0)

    def lams(self, z: np.ndarray) -> np.ndarray:
        e = np.exp(np.append(z, 0.0) - max(float(np.max(z)), 0.0))
        pos = np.cumsum(e / e.sum())[: self.dim]
        lam = self.lo + (self.hi - self.lo) * pos
        return lam if self.free else np.concatenate([[self.lo], lam])

    def logits(self, lams: np.ndarray, slack: float = 1e-3) -> np.ndarray:
        lam = np.asarray(lams, dtype=np.float64)
        pos = (lam - self.lo) / (self.hi - self.lo)
        if not self.free:
            pos = pos[1:]
        pos = np.clip(pos * (1.0 - slack), 0.0, 1.0)
        inc = np.diff(np.concatenate([[0.0], pos, [1.0]]))
        inc = np.maximum(inc, 1e-9)
        return np.log(inc[:-1]) - np.log(inc[-1])


def _minimize_times(
    pb: _Problem, par: _Times, z0: np.ndarray, make, iters: int, cap: int | None = None
) -> tuple[np.ndarray, float]:
    """L-BFGS-B on the logits with forward finite differences through the whole sampler (until ``iters`` or the
    budget runs out)."""
    from scipy.optimize import minimize

    cache: dict = {}
    start = pb.evals

    def f(z):
        key = tuple(np.round(z, 12))
        if key not in cache:
            if cap is not None and pb.evals - start >= cap:
                raise _Spent  # this round's share of the budget is spent
            cache[key] = pb.error(make(par.lams(z)))
        return cache[key]

    best = [z0.copy(), f(z0)]

    def fg(z):
        v = f(z)
        if v < best[1]:
            best[0], best[1] = z.copy(), v
        g = np.zeros_like(z)
        hstep = 1e-3
        for k in range(z.size):
            zp = z.copy()
            zp[k] += hstep
            fp = f(zp)
            g[k] = (fp - v) / hstep if math.isfinite(fp) else 0.0
        # the sampler error is smooth in the logits; work in log space for scale-free steps
        return (math.log(v) if v > 0 and math.isfinite(v) else 1e3), (g / v if v > 0 and math.isfinite(v) else g)

    if pb.budget_left() > 0 and z0.size:
        try:
            minimize(
                fg,
                z0,
                jac=True,
                method="L-BFGS-B",
                bounds=[(-12.0, 12.0)] * z0.size,
                options={"maxiter": iters, "maxfun": iters},
            )
        except _Spent:
            pass
    for key, v in cache.items():
        if v < best[1]:
            best[0], best[1] = np.array(key), v
    return best[0], best[1]


def _baseline(pb: _Problem, nfe: int) -> dict:
    """The best untuned pfode solver and spacing at ``nfe`` (chosen on the tuning set, reported on both)."""
    from ..grids import resolve
    from ..sample import Sampler
    from ..solvers.base import get

    best = None
    for name in BASELINE_SOLVERS:
        for sp in _SPACINGS:
            try:
                resolve(pb.path, get(name), None, nfe, spacing=sp, t_start=pb.t_start, t_end=pb.t_end)
                s = Sampler(pb.den, solver=name, nfe=nfe, spacing=sp, t_start=pb.t_start, t_end=pb.t_end)
                e = _rmse(s(pb.x, cond=pb.cond, check_finite=False), pb.ref, pb.features)
            except ValueError:
                continue
            if best is None or e < best[0]:
                best = (e, name, sp, s)
    if best is None:
        return {}
    e, name, sp, s = best
    eh = _rmse(s(pb.xh, cond=pb.cond, check_finite=False), pb.refh, pb.features)
    return {"solver": name, "spacing": sp, "train_error": e, "held_out_error": eh}


def tune(
    den,
    nfe: int,
    *,
    shape=None,
    n: int = 128,
    held_out: int = 64,
    seed: int = 0,
    teacher: str = "dopri5",
    teacher_nfe: int | None = None,
    teacher_tol: float = 1e-6,
    t_start: float | None = None,
    t_end: float | None = None,
    times: bool = True,
    solvers: bool = True,
    skip: bool = True,
    skip_data: torch.Tensor | None = None,
    skip_rank: int | None = None,
    skip_n: int = 1024,
    family: str = "usf",
    stats=None,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    x_T: torch.Tensor | None = None,
    budget: int = 1000,
    rounds: int = 2,
    progress: bool = False,
) -> Recipe:
    """Fit a ``nfe``-evaluation sampler to ``den`` (see the module docs); returns a :class:`Recipe`.

    Args:
        den: a :class:`pfode.Denoiser`.
        nfe: network evaluations of the recipe, the final denoising evaluation included (``>= 2``).
        shape: one sample's shape (e.g. ``(64,)`` or ``(1, 8, 8)``); or give ``x_T``.
        n, held_out: sizes of the tuning set and of the separate held-out set of noises
            ``x_T = sigma(t_start) z``, ``z ~ N(0, I)`` drawn with ``seed``.
        teacher: ``"dopri5"`` (adaptive, ``rtol = atol = teacher_tol``) or a fixed-step solver name run with
            ``teacher_nfe`` evaluations (default 200).
        t_start, t_end: integration ends (default the path's ``t_max`` and ``t_min``); the recipe's last
            time lies in ``[t_end, t_start)`` and its final denoising step ends at zero noise.
        times, solvers, skip: the search parts (each can be switched off; ``family="dpm-v3"`` searches orders).
        skip_data: data samples ``[m, *shape]`` for the analytic segment's moments (default: ``skip_n`` samples
            of the model itself, drawn from fresh noises with ``unipc`` at 20 NFE); ``skip_rank``: rank of its
            covariance (default ``min(d, m // 2)``).
        family: ``"usf"`` (per-step rules), ``"dpm-v3"`` (DPM-Solver-v3 steps with per-step orders; ``stats`` or
            estimated here with :func:`pfode.solvers.estimate_stats`, which differentiates the network), or
            ``"auto"``: the usf search on three quarters of the budget, then dpm-v3 steps refined from its times on
            the rest; the recipe with the lower tuning-set error is kept.
        features: ``f(x) -> tensor [B, ...]``: tune for the distance in this feature space instead.
        cond: conditioning passed to the network.
        dtype, device: of the noises (the model's dtype and device).
        x_T: the noises themselves ``[n + held_out, *shape]`` instead of drawing them.
        budget: the most sampler runs the search may spend (each costs ``nfe`` evaluations on the tuning set);
            the initial scans (standard spacings at up to six end times, the constant rules, seven ends of the
            analytic segment) and the final train and held-out evaluations always run and count towards it.
        rounds: alternations of the times and the per-step rules (a single round keeps budget for one sweep
            of the rules; with more, the rules are swept after each round of the times that leaves budget).
        progress: show a progress bar.
    """
    from ..grids import _bounds
    from ..sample import Sampler
    from ..solvers.base import get

    t0 = time.perf_counter()
    check_denoiser(den)
    check_int("nfe", nfe, 1)
    if nfe < 2:
        raise TuneError(
            f"nfe={nfe} is below what a recipe can reach: at least one step plus the final denoising step (nfe >= 2)"
        )
    check_int("n", n, 1)
    check_int("held_out", held_out, 1)
    if n < 4:
        raise TuneError(f"n={n}: the tuning set needs at least 4 noises")
    if held_out < 2:
        raise TuneError(f"held_out={held_out}: the held-out set needs at least 2 noises")
    check_int("budget", budget, 1)
    check_int("skip_n", skip_n, 2)
    check_int("rounds", rounds, 1)
    teacher_tol = check_finite_float("teacher_tol", teacher_tol, 0.0, strict=True)
    if family not in FAMILIES:
        raise TuneError(f"family={family!r} is unknown; valid: {', '.join(FAMILIES)}")
    path = den.path
    ts, te = _bounds(path, t_start, t_end)
    if float(path.sigma(te)) == 0.0 or float(path.alpha(ts)) == 0.0:
        raise TuneError(f"t_start={ts!r} and t_end={te!r} must lie strictly inside the path (0 < sigma, 0 < alpha)")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or x_T.dim() < 2 or x_T.shape[0] != n + held_out:
            raise TuneError(f"x_T must be a tensor [n + held_out = {n + held_out}, *shape]")
        if shape is not None and tuple(x_T.shape[1:]) != tuple(shape):
            raise TuneError(f"shape={tuple(shape)} disagrees with x_T's sample shape {tuple(x_T.shape[1:])}")
        noise = x_T
    else:
        if shape is None:
            raise TuneError("give shape= (one sample's shape) or x_T=")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn((n + held_out, *shape), generator=gen, dtype=torch.float64)
        noise = (float(path.sigma(ts)) * z).to(device=device, dtype=dtype)

    # -- the teacher ----------------------------------------------------------------------------
    if teacher == "dopri5":
        tsolver = get("dopri5", rtol=teacher_tol, atol=teacher_tol)
        tsamp = Sampler(den, torch.tensor([ts, te], dtype=torch.float64), tsolver)
        tdesc = {"solver": "dopri5", "rtol": teacher_tol, "atol": teacher_tol}
    else:
        tn = 200 if teacher_nfe is None else check_int("teacher_nfe", teacher_nfe, 2)
        tsamp = Sampler(den, solver=teacher, nfe=tn, t_start=ts, t_end=te)
        tdesc = {"solver": str(teacher), "nfe": tn}
    with torch.no_grad():
        ref = tsamp(noise, cond=cond, check_finite=False)
    if not bool(torch.isfinite(ref).all()):
        raise TuneError(
            f"the teacher ({tdesc['solver']}) returned non-finite endpoints; check the model and t_start/t_end"
        )
    x_tr, x_ho, r_tr, r_ho = noise[:n], noise[n:], ref[:n], ref[n:]

    steps = nfe - 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc=f"tune nfe={nfe}", unit="run", leave=False)
    pb = _Problem(den, x_tr, x_ho, r_tr, r_ho, ts, te, features, cond, budget, bar)

    gskip = None
    if skip:
        if skip_data is None:  # the model's own samples: a cheap solve of fresh noises (moments need many)
            gen2 = torch.Generator().manual_seed(seed + 1)
            z2 = torch.randn((skip_n, *noise.shape[1:]), generator=gen2, dtype=torch.float64)
            x2 = (float(path.sigma(ts)) * z2).to(device=noise.device, dtype=noise.dtype)
            cheap = Sampler(den, solver="unipc", nfe=20, spacing="logsnr", t_start=ts, t_end=te)
            with torch.no_grad():
                skip_data = torch.cat(
                    [cheap(x2[k : k + 512], cond=cond, check_finite=False) for k in range(0, skip_n, 512)]
                )
            if not bool(torch.isfinite(skip_data).all()):
                raise TuneError("the model's samples for the analytic segment's moments are not finite")
            skip_desc = {"moments": "model", "samples": skip_n, "sampler": "unipc, 20 NFE"}
        else:
            skip_desc = {"moments": "data", "samples": int(skip_data.shape[0])}
        if tuple(skip_data.shape[1:]) != tuple(noise.shape[1:]):
            raise TuneError(
                f"skip_data has sample shape {tuple(skip_data.shape[1:])}, the model's is {tuple(noise.shape[1:])}"
            )
        gskip = GaussianSkip.from_samples(skip_data, rank=skip_rank)
        skip_desc["rank"] = gskip.rank

    if family in ("dpm-v3", "auto") and stats is None:
        from ..solvers.v3 import estimate_stats

        stats = estimate_stats(
            den,
            t_start=ts,
            t_end=te,
            cond=cond,
            shape=tuple(noise.shape[1:]),
            dtype=noise.dtype,
            device=noise.device,
            generator=torch.Generator().manual_seed(seed + 2),
        )

    with torch.no_grad():
        if family == "auto":  # the usf search, then dpm-v3 steps from its times; the better on the tuning set
            pb.budget = (3 * budget) // 4
            recipe, train_err, history = _search(pb, steps, times, solvers, gskip, "usf", stats, rounds)
            pb.budget = budget
            start = pb.path.lam(recipe.grid()).numpy()
            v3, v3_err, v3_hist = _search(
                pb, steps, times, solvers, gskip if recipe.skip is not None else None, "dpm-v3", stats, 1, init=start
            )
            history += [{**h, "phase": "dpm-v3: " + h["phase"]} for h in v3_hist]
            history.append(
                {"phase": f"chosen: {'dpm-v3' if v3_err < train_err else 'usf'}", "train_error": min(v3_err, train_err)}
            )
            if v3_err < train_err:
                recipe, train_err = v3, v3_err
        else:
            recipe, train_err, history = _search(pb, steps, times, solvers, gskip, family, stats, rounds)
        held_err = pb.error(recipe, held=True, force=True)
        base = _baseline(pb, nfe)
    if bar is not None:
        bar.close()
    from .. import __version__

    recipe.meta = {
        "nfe": nfe,
        "n": n,
        "held_out": held_out,
        "seed": seed,
        "train_error": train_err,
        "held_out_error": held_err,
        "untuned_best": base,
        "teacher": tdesc,
        "t_end": te,
        "search": {"times": times, "solvers": solvers, "skip": skip_desc if skip else False, "family": family},
        "history": history,
        "sampler_runs": pb.evals,
        "seconds": time.perf_counter() - t0,
        "pfode_version": __version__,
    }
    return recipe


def _end_candidates(pb: _Problem) -> list[float]:
    """Last grid times to start from: ``t_end``, the path's ``t_min`` and noise levels ``s = sigma/alpha`` 10,
    100, ... times ``s(t_end)`` (each well below ``s(t_start)``)."""
    path = pb.path
    s_end, s_start = float(path.s(pb.t_end)), float(path.s(pb.t_start))
    out = [pb.t_end]
    if pb.t_end < path.t_min < pb.t_start:
        out.append(float(path.t_min))
    s = s_end
    for _ in range(5):
        s *= 10.0
        if s > 0.05 * s_start:
            break
        out.append(float(path.t_of_s(torch.tensor(s, dtype=torch.float64))))
    return out


def _search(pb: _Problem, steps: int, do_times: bool, do_rules: bool, gskip, family, stats, rounds, init=None):
    """Alternate the times and the per-step rules; return the best recipe, its train error and a history.

    ``init``: the times (as ``lam``) of an earlier search to start from, instead of scanning the standard
    spacings and the analytic segment's end."""
    from ..grids import grid

    history = []
    rules = [Rule(2, "x0", False)] * steps
    if family == "dpm-v3":
        rules = [Rule(2)] * steps
        options = tuple(Rule(k) for k in (1, 2, 3))
    else:
        options = _RULES

    def make(lams, rs=None, with_skip=True):
        return pb.recipe(lams, rs or rules, gskip if with_skip else None, family, stats)

    if init is not None:
        return _rounds(
            pb,
            steps,
            do_times,
            do_rules,
            make,
            options,
            rules,
            np.asarray(init),
            gskip is not None,
            math.inf,
            rounds,
            history,
        )
    # initial times: the best standard spacing, ending at t_end or at one of a few larger noise levels
    best_lams, best = None, math.inf
    for t_last in _end_candidates(pb):
        for sp in _SPACINGS:
            try:
                g = grid(pb.path, steps, sp, t_start=pb.t_start, t_end=t_last)
            except ValueError:
                continue
            lams = pb.path.lam(g).numpy()
            e = pb.error(make(lams, with_skip=False), force=True)
            if e < best:
                best_lams, best = lams, e
    history.append({"phase": "best standard spacing", "train_error": best})
    if do_rules:  # the best constant rule on that grid
        for r in options:
            e = pb.error(make(best_lams, [r] * steps, with_skip=False), force=True)
            if e < best:
                best, rules = e, [r] * steps
        history.append({"phase": "best constant rule", "train_error": best})

    use_skip = gskip is not None
    lams = best_lams
    if use_skip:  # scan the analytic segment's end on a grid of starting points, rescaling the steps
        cand = []
        for frac in (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
            lam0 = pb.lo + frac * (best_lams[-1] - pb.lo)
            ls = lam0 + (best_lams - pb.lo) * (best_lams[-1] - lam0) / (best_lams[-1] - pb.lo)
            if frac == 0.0:
                ls = ls.copy()
                ls[0] = pb.lo + 1e-6 * (pb.hi - pb.lo)
            cand.append((pb.error(make(ls), force=True), ls))
        e, lams = min(cand, key=lambda c: c[0])
        best = e
        history.append({"phase": "analytic segment scan", "train_error": best})
    return _rounds(pb, steps, do_times, do_rules, make, options, rules, lams, use_skip, best, rounds, history)


def _rounds(pb, steps, do_times, do_rules, make, options, rules, lams, use_skip, best, rounds, history):
    """Alternating rounds: the times by L-BFGS, then a coordinate sweep over the per-step rules."""
    par = _Times(pb.lo, pb.hi, steps, free_start=use_skip)
    z = par.logits(lams)
    for rnd in range(rounds):
        if do_times and pb.budget_left() > 0:
            reserve = 0
            if rnd + 1 < rounds:  # a soft share: L-BFGS may run past it, within the whole budget
                share = pb.budget_left() // 2
            else:  # the last round; a single round keeps one sweep of the rules (a hard share)
                reserve = steps * len(options) if do_rules and rounds == 1 else 0
                share = max(pb.budget_left() - reserve, par.dim + 1)
            iters = max(3, min(60, share // (par.dim + 1)))
            z, e = _minimize_times(pb, par, z, lambda ls, rs=rules: make(ls, rs), iters, cap=share if reserve else None)
            best = min(best, e)
            history.append({"phase": f"times round {rnd + 1}", "train_error": e})
        if do_rules and pb.budget_left() > 0:
            lams = par.lams(z)
            cur = pb.error(make(lams), force=True)
            try:
                for i in range(steps):
                    for r in options:
                        if r == rules[i] or r.order > i + 1:
                            continue
                        trial = rules[:i] + [r] + rules[i + 1 :]
                        e = pb.error(make(lams, trial))
                        if e < cur * (1.0 - _MARGIN):
                            cur, rules = e, trial
            except _Spent:
                pass
            best = cur
            history.append({"phase": f"rules round {rnd + 1}", "train_error": cur})
        if not do_times:
            break
    final = make(par.lams(z), rules)
    err = pb.error(final, force=True)
    return final, err, history
