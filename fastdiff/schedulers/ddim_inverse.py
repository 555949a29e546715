"""DDIMInverseScheduler (DDIM inversion), one fused launch per step."""

from __future__ import annotations

import math
from typing import Union

import diffusers
from torch import Tensor

from ..solvers.inversion import noise_estimate
from ..solvers.rows import x0_conversion
from ..solvers.scheduling import ddim_inverse as core
from ._base import FusedStep, conform, x0_from_coeffs


@conform
class DDIMInverseScheduler(FusedStep, core.DDIMInverseScheduler, diffusers.DDIMInverseScheduler):
    """Drop-in for ``diffusers.DDIMInverseScheduler``. ``pred_original_sample`` is a view valid until
    the next step. With ``clip_sample`` (the default) the clipped x0 is recombined with the unclipped
    noise estimate, which is not linear: that step is computed in plain PyTorch, as diffusers does."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        self._check_timed()
        self._ensure_step_index(timestep)
        begin = self._start_run()
        i = self._step_index - begin
        src, dst = self._abar_pairs(begin)
        alpha, sigma = math.sqrt(src[i]), math.sqrt(1.0 - src[i])
        a, b = x0_conversion(self.config.prediction_type, alpha, sigma)
        if self.config.clip_sample:
            x0 = x0_from_coeffs(a, b, sample, model_output).clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
            eps = x0_from_coeffs(*noise_estimate(self.config.prediction_type, alpha, sigma), sample, model_output)
            prev = math.sqrt(dst[i]) * x0 + math.sqrt(1.0 - dst[i]) * eps
            self._step_index += 1
            return self._output(return_dict, prev, pred_original_sample=x0)
        prev, d = self._fused_step(model_output, sample)
        x0 = d if b != 0.0 else sample * a  # at a noise-free level D is the noise estimate and x0 = x / alpha
        return self._output(return_dict, prev, pred_original_sample=x0)
