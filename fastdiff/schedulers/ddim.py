"""DDIMScheduler (Song et al. 2021), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..samplers import schedules, solvers
from ._base import SchedulerOutput, clip_x0
from ._vp import VPScheduler, vp_levels


class DDIMScheduler(VPScheduler):
    """Drop-in for ``diffusers.DDIMScheduler``.

    As in diffusers, step i goes from ``t`` to ``t - num_train_timesteps // num_inference_steps``
    (not to the next listed timestep) and ``eta`` is a step() argument; each eta value gets its own
    table, built once. ``pred_original_sample`` is a view valid until the next step.
    """

    _exposes = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(locals())
        self._init_training(("epsilon", "sample", "v_prediction"), clamp_zero_snr=prediction_type == "epsilon")
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self._init_timesteps()

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        cfg = self.config
        self._check_step_count(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, steps_offset=cfg.steps_offset)
        self._install_timesteps(ts, device)
        self._warm(0, (0.0,))

    def _abar_pairs(self, begin: int) -> tuple[list[float], list[float]]:
        ac = self.alphas_cumprod.double().tolist()
        final = float(self.final_alpha_cumprod)
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        ts = self._ts_host.tolist()[begin:]
        return [ac[t] for t in ts], [ac[t - ratio] if t - ratio >= 0 else final for t in ts]

    def _builder(self, begin: int, key: tuple):
        (eta,) = key
        abar, prev = self._abar_pairs(begin)
        return solvers.ddim(abar, prev, prediction_type=self.config.prediction_type, eta=eta)

    def _model_frame(self, begin: int):
        abar, prev = self._abar_pairs(begin)
        ab = abar + prev[-1:]
        return [1.0] * len(ab), vp_levels(ab)

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
        return (prev, x0) if not return_dict else SchedulerOutput(prev, pred_original_sample=x0)

    def _clipped_step(self, model_output, sample, eta, use_clipped, generator, variance_noise, return_dict):
        """Clipping / thresholding x0 is not linear. With use_clipped_model_output the step is still
        linear in (x, clipped x0): the fused row reads the clipped x0. Otherwise DDIM mixes the
        clipped x0 with the unclipped epsilon, and the step is computed in plain PyTorch."""
        x0_raw = self._x0_from_table(sample, model_output, (eta,))
        x0 = clip_x0(self.config, x0_raw)
        if use_clipped:
            prev, _ = self._fused_step(model_output, sample, key=(eta,), generator=generator, noise=variance_noise,
                                       noise_dtype=model_output.dtype, model_override=x0)
            return (prev, x0) if not return_dict else SchedulerOutput(prev, pred_original_sample=x0)
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
        return (prev, x0) if not return_dict else SchedulerOutput(prev, pred_original_sample=x0)

