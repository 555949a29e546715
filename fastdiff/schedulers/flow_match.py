"""FlowMatchEulerDiscreteScheduler: Euler on rectified-flow models (SD3, FLUX), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.scheduling import flow_match as core
from ._base import FusedStep, conform


@conform
class FlowMatchEulerDiscreteScheduler(FusedStep, core.FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchEulerDiscreteScheduler):
    """Drop-in for ``diffusers.FlowMatchEulerDiscreteScheduler`` (static or dynamic shift, terminal
    stretch, Karras / exponential / beta spacing, inverted sigmas, stochastic sampling).
    Per-token timesteps are not supported."""

    def step(
        self,
        model_output: Tensor,
        timestep: Union[float, Tensor],
        sample: Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Optional[torch.Generator] = None,
        per_token_timesteps: Optional[Tensor] = None,
        return_dict: bool = True,
    ):
        self._check_float_timestep(timestep)
        if per_token_timesteps is not None:
            raise NotImplementedError("fastdiff: per-token timesteps are not supported")
        self._ensure_step_index(timestep)
        prev, _ = self._fused_step(model_output, sample, generator=generator, noise_dtype=torch.float32)
        return self._output(return_dict, prev)
