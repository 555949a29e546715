"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler (DPM-Solver-2), one fused launch per
model evaluation."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import kdpm2 as core
from ._base import FusedStep, SigmaInputScale, conform
from ._two_stage import TwoStageStep


class _KDPM2Step(TwoStageStep):
    """The drop-in step both classes share. The first stage writes the sample it is given to history
    and reads its model output through the row's z input; the second reads that sample back, so it
    steps from exactly what diffusers stores in ``self.sample``. The first stage's ``pred_original_sample``
    is one extra elementwise pass; the second's is the D its launch writes to history (its x0 at
    sigma_mid; a view valid until the next step, as Euler's)."""

    _STEP_KEY = ("stored",)
    _exposes = True  # every D gets a history slot: the second stage's D is its x0

    def _kdpm2_step(self, model_output: Tensor, timestep, sample: Tensor, generator: Optional[torch.Generator], return_dict: bool):
        first = self._start_stage(timestep)
        k = self._step_index
        if first:
            x0 = self._stage_x0(k, first, sample, model_output)
            prev, _ = self._fused_step(model_output, sample, key=self._STEP_KEY, z_input=model_output)
            self.sample = sample
        else:
            prev, x0 = self._fused_step(model_output, sample, key=self._STEP_KEY, generator=generator,
                                        noise_dtype=model_output.dtype)
            if x0 is None:
                x0 = self._stage_x0(k, first, sample, model_output)
            self.sample = None
        return self._output(return_dict, prev, pred_original_sample=x0)


@conform
class KDPM2DiscreteScheduler(_KDPM2Step, SigmaInputScale, FusedStep, core.KDPM2DiscreteScheduler, diffusers.KDPM2DiscreteScheduler):
    """Drop-in for ``diffusers.KDPM2DiscreteScheduler``: two model evaluations per step (order = 2),
    each one fused update."""

    def _input_level(self) -> tuple[Tensor, int]:
        i = self.step_index
        return (self.sigmas, i) if self.state_in_first_order else (self.sigmas_interpol, i)

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, return_dict: bool = True):
        return self._kdpm2_step(model_output, timestep, sample, None, return_dict)


@conform
class KDPM2AncestralDiscreteScheduler(_KDPM2Step, SigmaInputScale, FusedStep, core.KDPM2AncestralDiscreteScheduler,
                                      diffusers.KDPM2AncestralDiscreteScheduler):
    """Drop-in for ``diffusers.KDPM2AncestralDiscreteScheduler``; the second stage's noise is drawn
    with ``generator`` where diffusers draws it (after the second model evaluation), so seeded runs match."""

    def _input_level(self) -> tuple[Tensor, int]:
        i = self.step_index
        return (self.sigmas, i) if self.state_in_first_order else (self.sigmas_interpol, i - 1)

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        return self._kdpm2_step(model_output, timestep, sample, generator, return_dict)
