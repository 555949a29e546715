"""DPMSolverMultistepInverseScheduler (DPM-Solver++ inversion), one fused launch per step."""

from __future__ import annotations

import diffusers

from ..solvers.scheduling import dpm_solver_inverse as core
from ._base import conform
from .dpm_solver import DPMSolverStep


@conform
class DPMSolverMultistepInverseScheduler(DPMSolverStep, core.DPMSolverMultistepInverseScheduler,
                                         diffusers.DPMSolverMultistepInverseScheduler):
    """Drop-in for ``diffusers.DPMSolverMultistepInverseScheduler``: multistep DPM-Solver(++) up the
    noise levels, for editing (invert an image's latent, then sample back from it); the stochastic
    variants are refused (their noise variance is negative going up)."""
