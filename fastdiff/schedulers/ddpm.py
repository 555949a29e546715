"""DDPMScheduler: ancestral sampling (Ho et al. 2020), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import ddpm as core
from ._base import FusedStep, conform, clip_x0


@conform
class DDPMScheduler(FusedStep, core.DDPMScheduler, diffusers.DDPMScheduler):
    """Drop-in for ``diffusers.DDPMScheduler`` (fixed variances; learned variances are refused).

    ``step`` returns ``prev_sample`` and ``pred_original_sample`` (a view of the history buffer,
    valid until the next step).
    """

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if self.config.variance_type in ("learned", "learned_range"):
            raise NotImplementedError("fastdiff: DDPMScheduler with learned variances (variance_type "
                                      f"{self.config.variance_type!r}) is not supported; use diffusers' class")
        self._ensure_step_index(timestep)
        override = None
        cfg = self.config
        if cfg.thresholding or cfg.clip_sample:
            override = clip_x0(cfg, self._x0_from_table(sample, model_output))
        prev, x0 = self._fused_step(model_output, sample, generator=generator, noise_dtype=model_output.dtype, model_override=override)
        if override is not None:
            x0 = override
        return self._output(return_dict, prev, pred_original_sample=x0)
