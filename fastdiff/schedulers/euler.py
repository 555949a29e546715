"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler, diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import euler as core
from ._base import FusedStep, SigmaInputScale, conform


@conform
class EulerDiscreteScheduler(SigmaInputScale, FusedStep, core.EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler):
    """Drop-in for ``diffusers.EulerDiscreteScheduler`` (churn options are step() arguments, as there;
    each distinct setting gets its own table, built once). ``pred_original_sample`` is a view valid
    until the next step; with churn it omits the churn noise diffusers adds to it.
    """

    _flags_scaling = True

    def step(
        self,
        model_output: Tensor,
        timestep: Union[float, Tensor],
        sample: Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        self._check_float_timestep(timestep)
        self._ensure_step_index(timestep)
        key = (float(s_churn), float(s_tmin), float(s_tmax), float(s_noise))
        prev, x0 = self._fused_step(model_output, sample, key=key, generator=generator, noise_dtype=model_output.dtype)
        return self._output(return_dict, prev, pred_original_sample=x0)


@conform
class EulerAncestralDiscreteScheduler(SigmaInputScale, FusedStep, core.EulerAncestralDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler):
    """Drop-in for ``diffusers.EulerAncestralDiscreteScheduler`` (also takes prediction_type="sample")."""

    _flags_scaling = True

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._check_float_timestep(timestep)
        self._ensure_step_index(timestep)
        prev, x0 = self._fused_step(model_output, sample, generator=generator, noise_dtype=model_output.dtype)
        return self._output(return_dict, prev, pred_original_sample=x0)
