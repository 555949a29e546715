"""HeunDiscreteScheduler: Heun's 2nd-order method (Karras et al. 2022), diffusers-compatible."""

from __future__ import annotations

from typing import Union

import diffusers
import torch
from torch import Tensor

from ..solvers import methods
from ..solvers.scheduling import heun as core
from ._base import FusedStep, conform, x0_from_coeffs


@conform
class HeunDiscreteScheduler(FusedStep, core.HeunDiscreteScheduler, diffusers.HeunDiscreteScheduler):
    """Drop-in for ``diffusers.HeunDiscreteScheduler``: two model evaluations per step (order = 2),
    each followed by one fused update. The corrector's start state is not stored: it is recovered
    from the midpoint state and the first evaluation's x0 inside the coefficient row."""

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, return_dict: bool = True):
        self._ensure_step_index(timestep)
        if self._run_begin is None:
            self._first_order = True
        override = None
        cfg = self.config
        if cfg.clip_sample:
            i = self._step_index
            # both stages read the model at sigmas[i] (the second stage's level is the midpoint's)
            a, b = methods.ve_conversion(cfg.prediction_type, self._sig[i])
            override = x0_from_coeffs(a, b, sample, model_output).clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        prev, x0 = self._fused_step(model_output, sample, model_override=override)
        if override is not None:
            x0 = override
        self._first_order = not self._first_order
        return self._output(return_dict, prev, pred_original_sample=x0)
