"""A tuned few-step sampler as plain data: :class:`Recipe`, saved as versioned JSON (never pickle).

A recipe holds

* ``times``: the decreasing path times ``t_0 > ... > t_N`` of its solver steps;
* ``rules``: one update rule per step (family, order, prediction space, corrector);
* ``skip``: an optional analytic first segment from ``t_start`` to ``t_0`` (:class:`GaussianSkip`, no
  evaluation), else ``t_start = t_0``;
* ``stats``: DPM-Solver-v3's empirical model statistics, for the ``dpm-v3`` family;
* ``denoise``: finish with the denoising evaluation ``x0_hat(x_N)``;
* ``fingerprint``: the path (its JSON description) and the sample shape it was tuned for, checked on use;
* ``meta``: nfe, tuning-set sizes, seed, train and held-out error, the untuned baseline, pfode version.

It goes wherever a grid goes: ``pfode.sample(den, x_T, recipe)``, ``pfode.Sampler(den, recipe=recipe)``,
the diffusers scheduler and the command line (``pfode sample --recipe r.json``). Its ``nfe`` is exact:
one evaluation per step plus the final denoising evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import torch

from ..io import atomic_write_json
from ..paths import Path
from ..paths import from_spec as path_from_spec
from ..solvers.usf import USF, Rule
from .skip import GaussianSkip

__all__ = ["Recipe", "RecipeError", "SCHEMA", "VERSION", "FAMILIES", "path_fingerprint"]

SCHEMA = "pfode.recipe"
VERSION = 1
FAMILIES = ("usf", "dpm-v3")


class RecipeError(ValueError):
    """A recipe file or object is malformed, or does not fit the model it is used with."""


def path_fingerprint(path: Path) -> str:
    """SHA-256 (16 hex digits) of the path's canonical JSON description."""
    return _fingerprint_of(path.spec())


@dataclass(eq=False)
class Recipe:
    """A complete few-step sampler (see the module docs). Build one with :func:`pfode.tune`."""

    times: tuple[float, ...]
    rules: tuple[Rule, ...]
    path: dict
    shape: tuple[int, ...]
    t_start: float | None = None
    skip: GaussianSkip | None = None
    family: str = "usf"
    stats: object | None = None
    denoise: bool = True
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.times = tuple(float(t) for t in self.times)
        self.rules = tuple(r if isinstance(r, Rule) else Rule.from_dict(r) for r in self.rules)
        self.shape = tuple(int(v) for v in self.shape)
        if len(self.times) < 2:
            raise RecipeError(f"times must hold at least 2 times, got {len(self.times)}")
        if not all(math.isfinite(t) for t in self.times) or any(b >= a for a, b in zip(self.times, self.times[1:])):
            raise RecipeError(f"times must be finite and strictly decreasing, got {list(self.times)}")
        if len(self.rules) != len(self.times) - 1:
            raise RecipeError(
                f"rules has {len(self.rules)} entries; {len(self.times)} times make {len(self.times) - 1} steps"
            )
        if self.family not in FAMILIES:
            raise RecipeError(f"family={self.family!r} is unknown; valid: {', '.join(FAMILIES)}")
        if self.family == "dpm-v3":
            if self.stats is None:
                raise RecipeError("family 'dpm-v3' needs its empirical model statistics (stats)")
            if any(r.space != "x0" or r.corrector or r.order > 3 for r in self.rules):
                raise RecipeError("dpm-v3 steps take an order (1-3) only: space 'x0', corrector off")
        if self.t_start is None:
            if self.skip is not None:
                raise RecipeError("a recipe with an analytic segment needs t_start (where it begins)")
            self.t_start = self.times[0]
        self.t_start = float(self.t_start)
        if self.skip is None and self.t_start != self.times[0]:
            raise RecipeError(
                f"t_start={self.t_start!r} differs from times[0]={self.times[0]!r} without an analytic segment"
            )
        if self.skip is not None:
            if not self.t_start > self.times[0]:
                raise RecipeError(
                    f"the analytic segment must run from t_start={self.t_start!r} down to times[0]={self.times[0]!r}"
                )
            if tuple(self.skip.shape) != self.shape:
                raise RecipeError(f"skip was fitted on shape {self.skip.shape}, the recipe is for {self.shape}")

    # -- what it costs and how it runs ------------------------------------------------------
    @property
    def nfe(self) -> int:
        """Network evaluations of one run: one per step, plus the final denoising evaluation."""
        return len(self.rules) + (1 if self.denoise else 0)

    @property
    def steps(self) -> int:
        return len(self.rules)

    def solver(self):
        """The solver object that runs the recipe's steps."""
        if self.family == "dpm-v3":
            from ..solvers.v3 import DPMSolverV3

            return DPMSolverV3(stats=self.stats, orders=[r.order for r in self.rules])
        return USF(rules=self.rules)

    def grid(self) -> torch.Tensor:
        return torch.tensor(self.times, dtype=torch.float64)

    def check(self, path: Path, x: torch.Tensor | None = None) -> None:
        """Refuse a path or a sample shape the recipe was not tuned for (:class:`RecipeError`)."""
        if path_fingerprint(path) != _fingerprint_of(self.path):
            raise RecipeError(
                f"this recipe was tuned for the path {self.path}, not {path.spec()}; tune one for this model"
            )
        if x is not None:
            self.check_shape(x)

    def check_shape(self, x: torch.Tensor) -> None:
        """Refuse a sample shape the recipe was not tuned for (cheap: the per-call check of a prepared sampler)."""
        if tuple(x.shape[1:]) != self.shape:
            raise RecipeError(f"this recipe was tuned for samples of shape {list(self.shape)}, got {list(x.shape[1:])}")

    def start(self, x_T: torch.Tensor, path: Path) -> torch.Tensor:
        """The state at ``times[0]``: ``x_T`` itself, or its image under the analytic segment."""
        if self.skip is None:
            return x_T
        return self.skip.flow(x_T, path, self.t_start, self.times[0])

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "family": self.family,
            "t_start": self.t_start,
            "times": list(self.times),
            "steps": [{"family": self.family, **r.to_dict()} for r in self.rules],
            "denoise": self.denoise,
            "skip": None if self.skip is None else self.skip.spec(),
            "stats": None if self.stats is None else self.stats.spec(),
            "fingerprint": {"path": self.path, "path_sha256": _fingerprint_of(self.path), "shape": list(self.shape)},
            "meta": self.meta,
        }

    def save(self, file) -> FsPath:
        """Write the recipe as JSON (atomically: nothing is left behind on failure)."""
        return atomic_write_json(file, self.to_dict())

    @classmethod
    def from_dict(cls, d) -> Recipe:
        """Validate and build a recipe from its JSON dict; a wrong field raises :class:`RecipeError` naming it."""
        if not isinstance(d, dict):
            raise RecipeError(f"a recipe must be a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise RecipeError(f"schema={d.get('schema')!r}: not a pfode recipe (expected {SCHEMA!r})")
        if d.get("version") != VERSION:
            raise RecipeError(f"version={d.get('version')!r} is not supported (this pfode reads version {VERSION})")
        need = {
            "schema",
            "version",
            "family",
            "t_start",
            "times",
            "steps",
            "denoise",
            "skip",
            "stats",
            "fingerprint",
            "meta",
        }
        missing, extra = need - set(d), set(d) - need
        if missing or extra:
            raise RecipeError(f"recipe fields: missing {sorted(missing)}, unknown {sorted(extra)}")
        _typed(d, "family", str)
        _typed(d, "t_start", (int, float))
        _typed(d, "times", list)
        _typed(d, "steps", list)
        _typed(d, "denoise", bool)
        _typed(d, "meta", dict)
        _typed(d, "fingerprint", dict)
        for k, t in enumerate(d["times"]):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise RecipeError(f"times[{k}] must be a number, got {t!r}")
        fam = d["family"]
        rules = []
        for k, st in enumerate(d["steps"]):
            if not isinstance(st, dict):
                raise RecipeError(f"steps[{k}] must be an object, got {type(st).__name__}")
            st = dict(st)
            if st.pop("family", fam) != fam:
                raise RecipeError(
                    f"steps[{k}].family differs from the recipe's family {fam!r} (mixing is not supported)"
                )
            try:
                rules.append(Rule.from_dict(st))
            except (TypeError, ValueError) as e:
                raise RecipeError(f"steps[{k}]: {e}") from None
        fp = d["fingerprint"]
        if set(fp) != {"path", "path_sha256", "shape"}:
            raise RecipeError(f"fingerprint must have the fields path, path_sha256, shape; got {sorted(fp)}")
        _typed(fp, "path", dict, "fingerprint.")
        _typed(fp, "shape", list, "fingerprint.")
        if _fingerprint_of(fp["path"]) != fp["path_sha256"]:
            raise RecipeError("fingerprint.path_sha256 does not match fingerprint.path (the file was altered)")
        try:
            path_from_spec(fp["path"])
        except (TypeError, ValueError) as e:
            raise RecipeError(f"fingerprint.path: {e}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in fp["shape"]):
            raise RecipeError(f"fingerprint.shape must be a list of positive integers, got {fp['shape']!r}")
        try:
            skip = None if d["skip"] is None else GaussianSkip.from_spec(d["skip"])
        except (TypeError, ValueError) as e:
            raise RecipeError(f"skip: {e}") from None
        stats = None
        if d["stats"] is not None:
            from ..solvers.v3 import EMS

            try:
                stats = EMS.from_spec(d["stats"])
            except (TypeError, ValueError) as e:
                raise RecipeError(f"stats: {e}") from None
        return cls(
            times=tuple(d["times"]),
            rules=tuple(rules),
            path=fp["path"],
            shape=tuple(fp["shape"]),
            t_start=d["t_start"],
            skip=skip,
            family=fam,
            stats=stats,
            denoise=d["denoise"],
            meta=d["meta"],
        )

    @classmethod
    def load(cls, file) -> Recipe:
        """Read a recipe written by :meth:`save`; a malformed file raises :class:`RecipeError`."""
        try:
            text = FsPath(file).read_text()
        except OSError as e:
            raise RecipeError(f"cannot read recipe {str(file)!r}: {e.strerror or e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"recipe {str(file)!r} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def summary(self) -> str:
        """One line: steps, nfe, analytic segment, family."""
        skip = f", analytic segment t={self.t_start:.4g} -> {self.times[0]:.4g}" if self.skip is not None else ""
        return f"Recipe({self.family}, nfe={self.nfe}, {self.steps} steps{skip})"

    def __repr__(self):
        return self.summary()


def _fingerprint_of(spec: dict) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _typed(d: dict, key: str, types, prefix: str = "") -> None:
    v = d[key]
    bad = isinstance(v, bool) and types is not bool and bool not in (types if isinstance(types, tuple) else (types,))
    if bad or not isinstance(v, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise RecipeError(f"{prefix}{key} must be of type {want}, got {type(v).__name__}")
