"""Solvers of the probability-flow ODE (and reverse SDEs) for every path and prediction type.

``available()`` lists the registered names, ``get(name, **options)`` builds one, and solver
objects can be passed to :func:`pfode.sample` directly. Each solver states ``order``,
``evals_per_step`` and ``paper``.
"""

from . import ancestral, dpm_adaptive, edm  # noqa: F401  (k-diffusion's samplers, registered on import)
from .adaflow import AdaFlow, exact_velocity_variance, tweedie_velocity_variance  # noqa: F401  (registers "adaflow")
from .adaptive import Dopri5
from .base import AdaptiveSolver, Point, Solver, SolverBase, Step, Table, available, describe, get, register
from .correctors import LML, Corrected, Corrector, DenoisingMCMC, Langevin, correct, density_noise_classifier  # noqa: F401
from .evodiff import EVODiff  # noqa: F401  (registers "evodiff")
from .exponential import DDIM, DEIS, IPNDM, DPMSolver, DPMSolverPP2S, DPMSolverPPMultistep, UniPC, phi
from .momentum import GHVB, HeavyBall, heavy_ball  # noqa: F401  (registers dpm++2m-hb, unipc-hb, ipndm-hb, ghvb)
from .rk import RK, RK4, Euler, Heun, Midpoint
from .stochastic import DPMSolverPP2MSDE, EulerMaruyama
from .usf import USF, Rule
from .v3 import EMS, DPMSolverV3, estimate_stats

__all__ = [
    "available",
    "get",
    "describe",
    "register",
    "Solver",
    "SolverBase",
    "AdaptiveSolver",
    "Step",
    "Table",
    "Point",
    "DDIM",
    "DPMSolver",
    "DPMSolverPP2S",
    "DPMSolverPPMultistep",
    "UniPC",
    "DEIS",
    "IPNDM",
    "RK",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "Dopri5",
    "EulerMaruyama",
    "DPMSolverPP2MSDE",
    "phi",
    "USF",
    "Rule",
    "DPMSolverV3",
    "EMS",
    "estimate_stats",
]
