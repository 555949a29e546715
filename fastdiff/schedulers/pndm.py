"""PNDMScheduler (Liu et al. 2022; PLMS as Stable Diffusion ships it), one fused launch per evaluation."""

from __future__ import annotations

from typing import Union

import diffusers
from torch import Tensor

from ..solvers.scheduling import pndm as core
from ._base import FusedStep, conform


@conform
class PNDMScheduler(FusedStep, core.PNDMScheduler, diffusers.PNDMScheduler):
    """Drop-in for ``diffusers.PNDMScheduler``; ``step`` is one fused launch whether diffusers would
    take a PRK stage or a PLMS step (``step_prk`` / ``step_plms`` are the same fused step)."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        self._ensure_step_index(timestep)
        prev, _ = self._fused_step(model_output, sample)
        return self._output(return_dict, prev)

    def step_prk(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        return self.step(model_output, timestep, sample, return_dict)

    def step_plms(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        return self.step(model_output, timestep, sample, return_dict)
