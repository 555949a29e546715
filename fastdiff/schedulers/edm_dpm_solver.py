"""EDMDPMSolverMultistepScheduler (DPM-Solver++ in the EDM parameterisation; Playground v2.5), one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import edm_dpm_solver as core
from ._base import EDMInputScale, FusedStep, conform, threshold_sample


@conform
class EDMDPMSolverMultistepScheduler(EDMInputScale, FusedStep, core.EDMDPMSolverMultistepScheduler, diffusers.EDMDPMSolverMultistepScheduler):
    """Drop-in for ``diffusers.EDMDPMSolverMultistepScheduler``: orders 1-3, midpoint / heun, ODE and
    SDE; earlier data predictions live in the fused step's history ring (order - 1 slots)."""

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._ensure_step_index(timestep)
        cfg = self.config
        override = None
        if cfg.thresholding:  # the thresholded denoised sample replaces the model's (not linear: computed here)
            x0 = self._x0_from_table(sample, model_output)
            override = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        prev, _ = self._fused_step(model_output, sample, generator=generator, noise_dtype=model_output.dtype,
                                   model_override=override)
        return self._output(return_dict, prev)
