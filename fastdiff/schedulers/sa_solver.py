"""SASolverScheduler: SA-Solver, stochastic Adams predictor-corrector (Xue et al. 2023), one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import sa_solver as core
from ._base import FusedStep, conform, draw_noise


@conform
class SASolverScheduler(FusedStep, core.SASolverScheduler, diffusers.SASolverScheduler):
    """Drop-in for ``diffusers.SASolverScheduler``: predictor orders 1-4, corrector orders 1-4, data or
    noise prediction, any tau function, Karras / exponential / beta / flow sigmas.

    Each model evaluation corrects the state it is given and predicts the next one in one fused
    launch; the noise drawn at a step enters that step's predictor (its corrector reuses it, and
    the two cancel, see fastdiff/solvers/sa_solver.py). tau is evaluated at set_timesteps.
    diffusers' corrector starts from the sample it stored; this one from the sample it is given
    (the same in every loop that passes back what step returned).
    """

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._ensure_step_index(timestep)
        cfg = self.config
        if cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            # the mean channels; diffusers draws its noise at the full output's shape here, and fails
            model_output = model_output[:, :3]
        # drawn as diffusers draws it (shape, device and dtype of the model output, every step)
        noise = draw_noise(model_output.shape, generator, model_output.device, model_output.dtype)
        override = self._thresholded(model_output, sample) if cfg.thresholding else None
        prev, _ = self._fused_step(model_output, sample, noise=noise, model_override=override)
        return self._output(return_dict, prev)

    def _thresholded(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The converted output after dynamic thresholding of x0. In noise-prediction mode diffusers
        indexes its training tables with a timestep it does not have there (and fails); this thresholds
        x0 at the step's own level, as DPMSolverMultistepScheduler does."""
        x0, alpha, sigma = self._thresholded_x0(model_output, sample)
        return x0 if self.predict_x0 else (sample - alpha * x0) / sigma
