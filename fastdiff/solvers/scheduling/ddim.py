"""DDIMScheduler (Song et al. 2021), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers, schedules
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
