"""HeunDiscreteScheduler: Heun's 2nd-order method (Karras et al. 2022), diffusers-compatible."""

from __future__ import annotations

from typing import Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import heun as core
from ._base import FusedStep, SigmaInputScale, conform, ve_x0_coeffs, x0_from_coeffs


@conform
class HeunDiscreteScheduler(SigmaInputScale, FusedStep, core.HeunDiscreteScheduler, diffusers.HeunDiscreteScheduler):
    """Drop-in for ``diffusers.HeunDiscreteScheduler``: two model evaluations per step (order = 2),
    each followed by one fused update. The predictor writes the corrector's base (its input plus half
    its Euler step) to history, so the corrector reads that and the sample it is given, as diffusers
    does. The predictor's ``pred_original_sample`` is one extra elementwise pass; the corrector's is
    the D its launch writes to history (a view valid until the next step, as Euler's)."""

    _exposes = True  # every D gets a history slot: the corrector's D is its x0

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, return_dict: bool = True):
        self._ensure_step_index(timestep)
        if self._run_begin is None:
            self._first_order = True
        cfg = self.config
        i, first = self._step_index, self._first_order
        # both stages read the model at sigmas[i] (the corrector's level is the predictor's target)
        a, b = ve_x0_coeffs(cfg.prediction_type, self._sig[i])
        x0 = override = None
        if first or cfg.clip_sample:
            x0 = x0_from_coeffs(a, b, sample, model_output)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
            # the row then reads its converted output directly: the predictor's is the corrector's base
            k = (self._sig[i + 1] - self._sig[i]) / (2.0 * self._sig[i]) if first else 0.0
            override = torch.lerp(x0, sample, 1.0 + k) if first else x0
        prev, d = self._fused_step(model_output, sample, model_override=override)
        if x0 is None:  # the corrector's D is a sample + b model_output, diffusers' pred_original_sample
            x0 = d if d is not None else x0_from_coeffs(a, b, sample, model_output)
        self._first_order = not first
        return self._output(return_dict, prev, pred_original_sample=x0)
