"""diffusers-compatible schedulers whose every step is one fused `fastdiff.ops.sampler_update` launch.

``pipe.scheduler = fastdiff.schedulers.X.from_config(pipe.scheduler.config)`` swaps one in; the
classes take diffusers' configs and arguments and give diffusers' results (float32, to ~1e-5 over
a whole run), without importing diffusers.
"""

from ._base import Config, FusedScheduler, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .lcm import LCMScheduler
from .unipc import UniPCMultistepScheduler

__all__ = [
    "Config",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FusedScheduler",
    "HeunDiscreteScheduler",
    "LCMScheduler",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
]
