"""IPNDMScheduler (improved PNDM), one fused launch per step."""

from __future__ import annotations

from typing import Union

import diffusers
from torch import Tensor

from ..solvers.scheduling import ipndm as core
from ._base import FusedStep, conform


@conform
class IPNDMScheduler(FusedStep, core.IPNDMScheduler, diffusers.IPNDMScheduler):
    """Drop-in for ``diffusers.IPNDMScheduler``."""

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, return_dict: bool = True):
        self._check_timed()
        self._ensure_step_index(timestep)
        if self._run_begin is None:  # a new pass: it continues from the estimates made since set_timesteps
            self._pass_key = self._begin_pass()
        prev, _ = self._fused_step(model_output, sample, key=self._pass_key)
        self._estimates += 1
        return self._output(return_dict, prev)
