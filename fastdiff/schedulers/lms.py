"""LMSDiscreteScheduler (linear multistep, k-diffusion's sample_lms), one fused launch per step."""

from __future__ import annotations

import warnings
from typing import Union

import torch
from torch import Tensor

from ..solvers.scheduling import lms as core
from ._base import FusedStep, SchedulerOutput


class LMSDiscreteScheduler(FusedStep, core.LMSDiscreteScheduler):
    """Drop-in for ``diffusers.LMSDiscreteScheduler``: the derivative history lives in the fused
    update's history buffer, so a step of any order is one launch; ``pred_original_sample`` is
    formed from this step's derivative (x - sigma d, one more elementwise pass)."""

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, order: int = 4,
             return_dict: bool = True):
        if not self.is_scale_input_called:
            warnings.warn("The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                          "See `StableDiffusionPipeline` for a usage example.")
        self._ensure_step_index(timestep)
        sigma = self._sig[self._step_index]
        prev, derivative = self._fused_step(model_output, sample, key=(int(order),))
        x0 = torch.add(sample, derivative, alpha=-sigma)
        return SchedulerOutput(prev, pred_original_sample=x0) if return_dict else (prev, x0)
