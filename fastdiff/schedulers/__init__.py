"""diffusers-compatible schedulers whose every step is one fused `fastdiff.ops.sampler_update` launch.

``pipe.scheduler = fastdiff.schedulers.X.from_config(pipe.scheduler.config)`` swaps one in. Each
class is its core from fastdiff.solvers.scheduling (configuration, ``set_timesteps``, the
coefficient table) plus the fused ``step`` (fastdiff/schedulers/_base.py), under the same-named
diffusers class: ``isinstance(s, diffusers.DDIMScheduler)``, ``save_pretrained`` / ``from_pretrained``,
``compatibles`` and every other method are diffusers' own. Needs diffusers (``pip install
"fastdiff[diffusers]"``); fastdiff.sample and fastdiff.samplers do not.
"""

try:
    import diffusers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess that hides diffusers
    raise ImportError('fastdiff.schedulers needs diffusers: pip install "fastdiff[diffusers]" '
                      "(fastdiff.sample and fastdiff.samplers work without it)") from e

from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401
# (SchedulerMixin here: diffusers' pipeline loader looks it up in the module model_index.json names)

from ._base import FusedStep
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

__all__ = [
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMDPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FusedStep",
    "HeunDiscreteScheduler",
    "IPNDMScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SASolverScheduler",
    "SchedulerOutput",
    "TCDScheduler",
    "UniPCMultistepScheduler",
]
