"""EDMEulerScheduler (Karras et al. 2022), one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import edm_euler as core
from ._base import EDMInputScale, FusedStep, conform


@conform
class EDMEulerScheduler(EDMInputScale, FusedStep, core.EDMEulerScheduler, diffusers.EDMEulerScheduler):
    """Drop-in for ``diffusers.EDMEulerScheduler``; ``pred_original_sample`` is a view valid until the
    next step (with churn it omits the churn noise's c_skip share that diffusers' includes)."""

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
        pred_original_sample: Optional[Tensor] = None,
    ):
        self._check_float_timestep(timestep)
        if pred_original_sample is not None and s_churn > 0:
            raise NotImplementedError("fastdiff: EDMEulerScheduler.step with both s_churn and a given pred_original_sample")
        self._ensure_step_index(timestep)
        key = (float(s_churn), float(s_tmin), float(s_tmax), float(s_noise))
        prev, x0 = self._fused_step(model_output, sample, key=key, generator=generator, noise_dtype=model_output.dtype,
                                    model_override=pred_original_sample)
        if pred_original_sample is not None:
            x0 = pred_original_sample
        return self._output(return_dict, prev, pred_original_sample=x0)
