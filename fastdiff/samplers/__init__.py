"""Samplers built on the fused `sampler_update` op: noise schedules, coefficient tables, the
sampling loop (`fastdiff.sample`) and sampler classes."""

from .coefficients import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod
from .loop import sample
from .program import Program, ProgramBuilder
from .sampler import (
    DDIM,
    DDPM,
    LCM,
    NAMED,
    DPMSolverPP,
    Euler,
    EulerAncestral,
    FlowMatchEuler,
    Heun,
    Plan,
    Sampler,
    UniPC,
    make_sampler,
)

__all__ = [
    "DDIM",
    "DDPM",
    "DPMSolverPP",
    "Euler",
    "EulerAncestral",
    "FlowMatchEuler",
    "Heun",
    "LCM",
    "NAMED",
    "Plan",
    "Program",
    "ProgramBuilder",
    "Sampler",
    "UniPC",
    "ddim_table",
    "dpmpp_2m_table",
    "make_sampler",
    "sample",
    "scaled_linear_alphas_cumprod",
]
