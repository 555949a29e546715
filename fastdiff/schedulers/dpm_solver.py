"""DPMSolverMultistepScheduler: DPM-Solver++ / DPM-Solver multistep (Lu et al. 2022), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import dpm_solver as core
from ._base import FusedStep, conform


class DPMSolverStep(FusedStep):
    """The fused step of the multistep DPM-Solver schedulers (forward and inverse)."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, variance_noise: Optional[Tensor] = None, return_dict: bool = True):
        self._ensure_step_index(timestep)
        cfg = self.config
        if cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        override = self._thresholded(model_output, sample) if cfg.thresholding else None
        prev, _ = self._fused_step(model_output, sample, generator=generator, noise=variance_noise, noise_dtype=torch.float32,
                                   model_override=override)
        return self._output(return_dict, prev)

    def _thresholded(self, model_output: Tensor, sample: Tensor) -> Tensor:
        x0, alpha, sigma = self._thresholded_x0(model_output, sample)
        if self._data_is_x0():
            return x0
        return (sample - alpha * x0) / sigma


@conform
class DPMSolverMultistepScheduler(DPMSolverStep, core.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler):
    """Drop-in for ``diffusers.DPMSolverMultistepScheduler``: orders 1-3, midpoint / heun second-order
    forms, ODE and SDE variants, Karras / exponential / beta / Lu-lambda / flow sigmas.

    Earlier data predictions live in a history ring inside the fused step (order - 1 slots).
    """
