"""UniPCMultistepScheduler: UniPC predictor-corrector (Zhao et al. 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Union

import diffusers
from torch import Tensor

from ..solvers.scheduling import unipc as core
from ._base import FusedStep, conform


@conform
class UniPCMultistepScheduler(FusedStep, core.UniPCMultistepScheduler, diffusers.UniPCMultistepScheduler):
    """Drop-in for ``diffusers.UniPCMultistepScheduler`` (bh1 / bh2, any order, corrector on or off per step).

    The corrector needs the sample the previous predictor started from; it is rewritten in terms
    of the current sample and the stored outputs, so each step is still one fused launch with a
    history of converted outputs only. At a final sigma of 0 the last step is first order (its
    limit); diffusers returns NaN there for bh1 or without lower_order_final.
    """

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor, return_dict: bool = True):
        if self.solver_p is not None:
            raise NotImplementedError("fastdiff: UniPCMultistepScheduler with an external solver_p is not supported")
        self._ensure_step_index(timestep)
        override = None
        cfg = self.config
        if cfg.thresholding and self.predict_x0:
            override, _, _ = self._thresholded_x0(model_output, sample)
        prev, _ = self._fused_step(model_output, sample, model_override=override)
        return self._output(return_dict, prev)
