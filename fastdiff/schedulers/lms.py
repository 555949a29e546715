"""LMSDiscreteScheduler (linear multistep, k-diffusion's sample_lms), one fused launch per step."""

from __future__ import annotations

import warnings
from typing import Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import lms as core
from ._base import FusedStep, SigmaInputScale, conform


@conform
class LMSDiscreteScheduler(SigmaInputScale, FusedStep, core.LMSDiscreteScheduler, diffusers.LMSDiscreteScheduler):
    """Drop-in for ``diffusers.LMSDiscreteScheduler``: the derivative history lives in the fused
    update's history buffer, so a step of any order is one launch; ``pred_original_sample`` is
    formed from this step's derivative (x - sigma d, one more elementwise pass)."""

    _flags_scaling = True

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, order: int = 4,
             return_dict: bool = True):
        if not self.is_scale_input_called:
            warnings.warn("The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                          "See `StableDiffusionPipeline` for a usage example.")
        self._ensure_step_index(timestep)
        sigma = self._sig[self._step_index]
        prev, derivative = self._fused_step(model_output, sample, key=(int(order),))
        return self._output(return_dict, prev, pred_original_sample=torch.add(sample, derivative, alpha=-sigma))
