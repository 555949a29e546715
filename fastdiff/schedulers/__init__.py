"""diffusers-compatible schedulers whose every step is one fused `fastdiff.ops.sampler_update` launch.

``pipe.scheduler = fastdiff.schedulers.X.from_config(pipe.scheduler.config)`` swaps one in. Each
class is its core from fastdiff.solvers.scheduling (configuration, ``set_timesteps``, the
coefficient table) plus the fused ``step`` (fastdiff/schedulers/_base.py).
"""

from ..solvers.scheduling import Config
from ._base import FusedStep, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .edm_euler import EDMEulerScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

__all__ = [
    "Config",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FusedStep",
    "HeunDiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
]
