"""DPMSolverSinglestepScheduler (singlestep DPM-Solver / DPM-Solver++), one fused launch per step."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.rows import check_prediction_type, eps_conversion, x0_conversion
from ..solvers.scheduling import dpm_singlestep as core
from ._base import FusedStep, conform, threshold_sample, x0_from_coeffs


@conform
class DPMSolverSinglestepScheduler(FusedStep, core.DPMSolverSinglestepScheduler, diffusers.DPMSolverSinglestepScheduler):
    """Drop-in for ``diffusers.DPMSolverSinglestepScheduler``. Each step restarts from its group's
    anchor sample; that sample is rewritten in terms of the current one (deterministic variants) or
    carried in the history entry (SDE, orders 1-2), so each step is one fused launch. The SDE variant
    at third order is refused (``NotImplementedError``)."""

    def step(self, model_output: Tensor, timestep: Union[int, Tensor], sample: Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        cfg = self.config
        if cfg.algorithm_type == "sde-dpmsolver++" and cfg.solver_order == 3:
            raise NotImplementedError("fastdiff: DPMSolverSinglestepScheduler with sde-dpmsolver++ at solver_order=3 "
                                      "(a third-order step re-reads its anchor sample, whose step added noise; "
                                      "orders 1 and 2 are supported)")
        self._ensure_step_index(timestep)
        if cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        if cfg.thresholding:
            model_output = self._thresholded_output(model_output, sample)
        prev, _ = self._fused_step(model_output, sample, generator=generator, noise_dtype=model_output.dtype)
        return self._output(return_dict, prev)

    def _thresholded_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The model output that gives the thresholded x0 (not linear, so computed here); the table then
        converts it as usual, whatever combination of sample and output a row stores."""
        cfg = self.config
        pt = check_prediction_type(cfg.prediction_type)
        alpha, sigma = self._alpha_sigma(self._sig[self._step_index])
        a, b = x0_conversion(pt, alpha, sigma)
        x0 = threshold_sample(x0_from_coeffs(a, b, sample, model_output), cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if self._data_is_x0():
            return ((x0.float() - a * sample.float()) / b).to(model_output.dtype)
        ae, be = eps_conversion(pt, alpha, sigma)  # the noise prediction of that x0, as an output
        eps = (sample.float() - alpha * x0.float()) / sigma
        return ((eps - ae * sample.float()) / be).to(model_output.dtype)
