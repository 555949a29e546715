"""TCDScheduler (trajectory consistency distillation), one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import tcd as core
from ._base import FusedStep, conform


@conform
class TCDScheduler(FusedStep, core.TCDScheduler, diffusers.TCDScheduler):
    """Drop-in for ``diffusers.TCDScheduler``; ``pred_noised_sample`` is a view valid until the next step."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, eta: float = 0.3,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._ensure_step_index(timestep)
        assert 0 <= eta <= 1.0, "gamma must be less than or equal to 1.0"
        prev, noised = self._fused_step(model_output, sample, key=(float(eta),), generator=generator, noise_dtype=sample.dtype)
        return self._output(return_dict, prev, pred_noised_sample=noised)
