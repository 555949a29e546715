"""LCMScheduler: latent consistency model sampling (Luo et al. 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.rows import x0_conversion
from ..solvers.scheduling import lcm as core
from ._base import FusedStep, conform, clip_x0, x0_from_coeffs


@conform
class LCMScheduler(FusedStep, core.LCMScheduler, diffusers.LCMScheduler):
    """Drop-in for ``diffusers.LCMScheduler``; ``step`` returns ``(prev_sample, denoised)``.

    The fused step writes ``denoised`` into its history slot on the way (D = c_skip x + c_out x0),
    so returning it costs no extra pass; it is a view valid until the next step.
    """

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._ensure_step_index(timestep)
        cfg = self.config
        override = None
        if cfg.thresholding or cfg.clip_sample:
            t = int(self._ts_host[self._step_index])
            ab = float(self.alphas_cumprod[t])
            a, b = x0_conversion(cfg.prediction_type, ab**0.5, (1 - ab) ** 0.5)
            x0 = clip_x0(cfg, x0_from_coeffs(a, b, sample, model_output))
            c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
            override = c_out * x0 + c_skip * sample
        prev, denoised = self._fused_step(model_output, sample, generator=generator, noise_dtype=sample.dtype, model_override=override)
        if override is not None:
            denoised = override
        return self._output(return_dict, prev, denoised=denoised)
