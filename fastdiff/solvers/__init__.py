"""The bottom layer of fastdiff's sampling: noise schedules (``schedules``), each solver's update
written as linear algebra on symbols (``methods``), the row compiler that turns it into a
`fastdiff.ops.sampler_update` coefficient table (``program``), the row layout and prediction-type
conversions (``rows``, mirrored in csrc/sampler_row.h), direct table helpers (``coefficients``) and
the diffusers-free scheduler cores (``scheduling``).

Nothing here imports fastdiff.samplers, fastdiff.schedulers or diffusers.
"""

from . import methods, program, rows, schedules
from .coefficients import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod
from .program import Lin, Program, ProgramBuilder

__all__ = ["Lin", "Program", "ProgramBuilder", "ddim_table", "dpmpp_2m_table", "methods", "program", "rows",
           "scaled_linear_alphas_cumprod", "schedules"]
