"""DDIMInverseScheduler (DDIM inversion), one fused launch per step."""

from __future__ import annotations

import math
from typing import Union

import diffusers
from torch import Tensor

from ..solvers.inversion import noise_estimate
from ..solvers.rows import x0_conversion
from ..solvers.scheduling import ddim_inverse as core
from ._base import FusedStep, affine_pass, conform, x0_from_coeffs


@conform
class DDIMInverseScheduler(FusedStep, core.DDIMInverseScheduler, diffusers.DDIMInverseScheduler):
    """Drop-in for ``diffusers.DDIMInverseScheduler``. ``pred_original_sample`` is a view valid until
    the next step. With ``clip_sample`` (the default) the clipped x0 is recombined with the unclipped
    noise estimate, which is not linear: that step is computed in plain PyTorch, as diffusers does;
    so is a step at a timestep off the schedule (diffusers reads any value)."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        self._check_timed()
        try:
            self._ensure_step_index(timestep)
        except NotImplementedError:
            # a timestep off this schedule: diffusers' step reads any value, so take it in plain PyTorch
            return self._plain_step(model_output, sample, *self._levels_at(int(timestep)), return_dict)
        begin = self._start_run()
        i = self._step_index - begin
        src, dst = self._abar_pairs(begin)
        if self.config.clip_sample:
            self._step_index += 1
            return self._plain_step(model_output, sample, src[i], dst[i], return_dict)
        prev, d = self._fused_step(model_output, sample)
        a, b = x0_conversion(self.config.prediction_type, math.sqrt(src[i]), math.sqrt(1.0 - src[i]))
        x0 = d if b != 0.0 else sample * a  # at a noise-free level D is the noise estimate and x0 = x / alpha
        return self._output(return_dict, prev, pred_original_sample=x0)

    def _levels_at(self, t: int) -> tuple[float, float]:
        cfg = self.config
        s = min(t - cfg.num_train_timesteps // self.num_inference_steps, cfg.num_train_timesteps - 1)
        return float(self.alphas_cumprod[s]) if s >= 0 else float(self.initial_alpha_cumprod), float(self.alphas_cumprod[t])

    def _plain_step(self, model_output: Tensor, sample: Tensor, ab: float, ab_next: float, return_dict: bool):
        """The step outside the fused table: x0 (clipped if configured, which is not linear) and the
        unclipped noise estimate, read at level ``ab`` and recombined at ``ab_next``."""
        pt = self.config.prediction_type
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        a, b = x0_conversion(pt, alpha, sigma)
        ea, eb = noise_estimate(pt, alpha, sigma)
        affine = affine_pass(self)
        # an epsilon model's output is the noise estimate: two one-pass launches and the clamp
        fused = (ea, eb) == (0.0, 1.0) and affine.usable(sample, model_output)
        x0 = affine(sample, model_output, a, b) if fused else x0_from_coeffs(a, b, sample, model_output)
        if self.config.clip_sample:
            x0 = x0.clamp_(-self.config.clip_sample_range, self.config.clip_sample_range)  # x0 is a new tensor
        if fused:
            prev = affine(x0, model_output, math.sqrt(ab_next), math.sqrt(1.0 - ab_next))
        else:
            eps = x0_from_coeffs(ea, eb, sample, model_output)
            prev = math.sqrt(ab_next) * x0 + math.sqrt(1.0 - ab_next) * eps
        return self._output(return_dict, prev, pred_original_sample=x0)
