"""DEISMultistepScheduler (DEIS, log-rho multistep), one fused launch per step."""

from __future__ import annotations

from typing import Union

import diffusers
from torch import Tensor

from ..solvers.scheduling import deis as core
from ._base import conform
from .dpm_solver import DPMSolverStep


@conform
class DEISMultistepScheduler(DPMSolverStep, core.DEISMultistepScheduler, diffusers.DEISMultistepScheduler):
    """Drop-in for ``diffusers.DEISMultistepScheduler``: orders 1-3; earlier noise predictions live in
    the fused step's history ring (order - 1 slots)."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        self._ensure_step_index(timestep)
        override = self._thresholded(model_output, sample) if self.config.thresholding else None
        prev, _ = self._fused_step(model_output, sample, model_override=override)
        return self._output(return_dict, prev)

    def _data_is_x0(self) -> bool:
        return False  # DEIS integrates the noise prediction (a thresholded x0 is converted back to it)
