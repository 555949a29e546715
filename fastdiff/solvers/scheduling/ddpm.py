"""DDPMScheduler: ancestral sampling (Ho et al. 2020), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers, schedules
from ._vp import VPScheduler, vp_levels


class DDPMScheduler(VPScheduler):
    """Drop-in for ``diffusers.DDPMScheduler`` (fixed variances; learned variances are refused).

    ``step`` returns ``prev_sample`` and ``pred_original_sample`` (a view of the history buffer,
    valid until the next step).
    """

    _exposes = True

    _untimed_ok = True  # like diffusers, step() works on the full training schedule

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(locals())
        if variance_type in ("learned", "learned_range"):
            raise NotImplementedError(f"fastdiff: DDPMScheduler with learned variances (variance_type {variance_type!r}) is not supported")
        self._init_training(("epsilon", "sample", "v_prediction"), clamp_zero_snr=prediction_type == "epsilon")
        self.one = torch.tensor(1.0)
        self.custom_timesteps = False
        self.variance_type = variance_type
        self._init_timesteps()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, timesteps: Optional[Sequence[int]] = None) -> None:
        cfg = self.config
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            ts = self._custom_timesteps(timesteps)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("fastdiff: set_timesteps needs num_inference_steps or timesteps")
            self._check_step_count(num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, steps_offset=cfg.steps_offset)
        self._install_timesteps(ts, device)
        self._warm(0)
        if timesteps is not None:
            self.num_inference_steps = len(ts)
            self._warm(0)

    def _builder(self, begin: int, key: tuple):
        ac = self.alphas_cumprod.double().tolist()
        ts = self._ts_host.tolist()[begin:]
        abar = [ac[t] for t in ts]
        prev = [ac[t] for t in ts[1:]] + [1.0]
        return solvers.ddpm(abar, prev, prediction_type=self.config.prediction_type,
                            variance_type=self.config.variance_type, draws=[t > 0 for t in ts])

    def _model_frame(self, begin: int):
        ac = self.alphas_cumprod.double().tolist()
        ab = [ac[t] for t in self._ts_host.tolist()[begin:]] + [1.0]
        return [1.0] * len(ab), vp_levels(ab)
