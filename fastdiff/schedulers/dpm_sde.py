"""DPMSolverSDEScheduler (DPM-Solver++(2S) SDE, Brownian-tree noise), one fused launch per model evaluation."""

from __future__ import annotations

from typing import Union

import diffusers
import torch
from torch import Tensor

from ..solvers import dpm_sde as solver
from ..solvers.scheduling import dpm_sde as core
from ._base import FusedStep, conform
from ._two_stage import TwoStageStep


@conform
class DPMSolverSDEScheduler(TwoStageStep, FusedStep, core.DPMSolverSDEScheduler, diffusers.DPMSolverSDEScheduler):
    """Drop-in for ``diffusers.DPMSolverSDEScheduler``. Each step's noise is the Brownian increment
    diffusers' would add (same tree, seed and query levels); its unit-variance scaling is folded into
    the row. The second stage's z is ``w + gamma * self.sample`` (one pass on the host), so it steps
    from exactly the sample the first stage was given. ``pred_original_sample`` is one extra pass."""

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor, return_dict: bool = True,
             s_noise: float = 1.0):
        first = self._start_stage(timestep)
        if self.noise_sampler is None:
            self.noise_sampler = self.brownian(sample, self.noise_sampler_seed)
        k = self._step_index
        sigma, _, target = solver.stage_levels(k, first, self._sig)
        x0 = self._stage_x0(k, first, sample, model_output)
        key = (float(s_noise),)
        if first and self._sig[k + 1] == 0.0:  # the last step: Euler to x0, no noise
            prev, _ = self._fused_step(model_output, sample, key=key)
            return self._output(return_dict, prev, pred_original_sample=x0)
        w, _ = self.noise_sampler.raw(*self._query_levels(k, first))
        if first:
            prev, _ = self._fused_step(model_output, sample, key=key, z_input=w)
            self.sample, self.mid_point_sigma = sample, self._query_levels(k, True)[1]
        else:
            gamma = solver.second_stage_gamma(sigma, target, float(s_noise), self._noise_scale(k, False))
            z = torch.add(w.to(sample.dtype), self.sample, alpha=gamma) if gamma else self.sample
            prev, _ = self._fused_step(model_output, sample, key=key, z_input=z)
            self.sample = self.mid_point_sigma = None
        return self._output(return_dict, prev, pred_original_sample=x0)
