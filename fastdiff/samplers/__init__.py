"""Samplers built on the fused `sampler_update` op: sampler classes planned into device tables
(``sampler``), the sampling loop ``fastdiff.sample`` (``loop``), CUDA-graph replay (``graph``) and
inpainting (``inpaint``). The solver math lives one layer down, in fastdiff.solvers; its public
helpers are re-exported here."""

from ..solvers import Program, ProgramBuilder, ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod
from .api import sample
from .plan import Plan
from .sampler import (
    DDIM,
    DDIMInversion,
    DDPM,
    DPM2,
    DPMPPSDE,
    TCD,
    DPM2Ancestral,
    LCM,
    LMS,
    NAMED,
    PNDM,
    DPMSolverPP,
    EDMEuler,
    Euler,
    EulerAncestral,
    FlowMatchEuler,
    Heun,
    Sampler,
    UniPC,
    make_sampler,
)
from .sampler import DEIS, IPNDM, DPMSolverPPInversion, DPMSolverSinglestep, EDMDPMSolverPP

__all__ = [
    "DDIM",
    "DDIMInversion",
    "DDPM",
    "DPM2",
    "DPM2Ancestral",
    "DPMPPSDE",
    "DPMSolverPP",
    "EDMEuler",
    "Euler",
    "EulerAncestral",
    "FlowMatchEuler",
    "Heun",
    "IPNDM",
    "LCM",
    "LMS",
    "NAMED",
    "PNDM",
    "Plan",
    "Program",
    "ProgramBuilder",
    "Sampler",
    "TCD",
    "UniPC",
    "ddim_table",
    "dpmpp_2m_table",
    "make_sampler",
    "DEIS",
    "DPMSolverPPInversion",
    "DPMSolverSinglestep",
    "EDMDPMSolverPP",
    "sample",
    "scaled_linear_alphas_cumprod",
]
