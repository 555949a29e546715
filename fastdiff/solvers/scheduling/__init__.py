"""The diffusers-free cores of fastdiff's schedulers: configuration, ``set_timesteps`` and the
coefficient program of each, named after the diffusers class they reproduce.

fastdiff.samplers plans with them; fastdiff.schedulers puts each under the same-named diffusers
class and adds the fused ``step``. A new scheduler is a core here (its schedule and its
``methods`` derivation) plus a ``step`` there.
"""

from ._base import Config, ScheduleCore
from .ddim import DDIMScheduler
from .ddim_inverse import DDIMInverseScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpm_sde import DPMSolverSDEScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .dpm_solver_inverse import DPMSolverMultistepInverseScheduler
from .dpm_singlestep import DPMSolverSinglestepScheduler
from .edm_dpm_solver import EDMDPMSolverMultistepScheduler
from .edm_euler import EDMEulerScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .ipndm import IPNDMScheduler
from .kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .sa_solver import SASolverScheduler
from .tcd import TCDScheduler
from .unipc import UniPCMultistepScheduler

#: every core, by the diffusers class name it reproduces
CORES: dict[str, type] = {c.__name__: c for c in (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler, UniPCMultistepScheduler,
    PNDMScheduler, LMSDiscreteScheduler, EDMEulerScheduler, DDIMInverseScheduler, IPNDMScheduler,
    SASolverScheduler,
    DPMSolverMultistepInverseScheduler, EDMDPMSolverMultistepScheduler, DEISMultistepScheduler,
    DPMSolverSinglestepScheduler,
    KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler, TCDScheduler, DPMSolverSDEScheduler)}

__all__ = ["CORES", "Config", "ScheduleCore", *CORES]
