"""DDIMScheduler (Song et al. 2021), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

import math
from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import ddim as core
from ._base import FusedStep, conform, clip_x0


@conform
class DDIMScheduler(FusedStep, core.DDIMScheduler, diffusers.DDIMScheduler):
    """Drop-in for ``diffusers.DDIMScheduler``.

    As in diffusers, step i goes from ``t`` to ``t - num_train_timesteps // num_inference_steps``
    (not to the next listed timestep) and ``eta`` is a step() argument; each eta value gets its own
    table, built once. ``pred_original_sample`` is a view valid until the next step.
    """

    def step(
        self,
        model_output: Tensor,
        timestep: Union[int, Tensor],
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[Tensor] = None,
        return_dict: bool = True,
    ):
        self._check_timed()
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                             " `variance_noise` stays `None`.")
        self._ensure_step_index(timestep)
        cfg = self.config
        if cfg.thresholding or cfg.clip_sample:
            return self._clipped_step(model_output, sample, float(eta), use_clipped_model_output, generator, variance_noise, return_dict)
        prev, x0 = self._fused_step(model_output, sample, key=(float(eta),), generator=generator, noise=variance_noise,
                                    noise_dtype=model_output.dtype)
        return self._output(return_dict, prev, pred_original_sample=x0)

    def _clipped_step(self, model_output, sample, eta, use_clipped, generator, variance_noise, return_dict):
        """Clipping / thresholding x0 is not linear. With use_clipped_model_output the step is still
        linear in (x, clipped x0): the fused row reads the clipped x0. Otherwise DDIM mixes the
        clipped x0 with the unclipped epsilon, and the step is computed in plain PyTorch."""
        x0_raw = self._x0_from_table(sample, model_output, (eta,))
        x0 = clip_x0(self.config, x0_raw)
        if use_clipped:
            prev, _ = self._fused_step(model_output, sample, key=(eta,), generator=generator, noise=variance_noise,
                                       noise_dtype=model_output.dtype, model_override=x0)
            return self._output(return_dict, prev, pred_original_sample=x0)
        begin, i = self._run_begin, self._step_index
        abar, abar_prev = self._abar_pairs(begin)
        ab, abp = abar[i - begin], abar_prev[i - begin]
        eps = (sample - math.sqrt(ab) * x0_raw) / math.sqrt(1.0 - ab)
        std = eta * math.sqrt(max((1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp), 0.0))
        prev = math.sqrt(abp) * x0 + math.sqrt(max(1.0 - abp - std * std, 0.0)) * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = torch.randn(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            prev = prev + std * variance_noise
        self._step_index += 1
        return self._output(return_dict, prev, pred_original_sample=x0)
