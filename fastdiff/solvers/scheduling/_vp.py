"""What the schedulers indexed by training timestep share (DDPM, DDIM, LCM): the state is the VP
sample itself (no input scaling, unit initial noise), and the timesteps are integers."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import schedules
from ._base import ScheduleCore


def vp_levels(abar: list[float]) -> list[tuple[float, float]]:
    """(alpha, sigma) = (sqrt(abar), sqrt(1 - abar)) per level."""
    return [(a**0.5, (1.0 - a) ** 0.5) for a in abar]


class VPScheduler(ScheduleCore):
    alphas_cumprod: Tensor

    def _post_init(self) -> None:
        # Where another __init__ (diffusers') left a zero last cumulative alpha for an epsilon model,
        # clamp it as this core's own __init__ does (see training_schedule), so the tables stay finite.
        cfg = self.config
        if cfg.get("rescale_betas_zero_snr", False) and cfg.prediction_type == "epsilon" and float(self.alphas_cumprod[-1]) == 0.0:
            self.alphas_cumprod[-1] = schedules.ZERO_SNR_CLAMP
        super()._post_init()

    def _init_timesteps(self) -> None:
        """The state before set_timesteps: the full training schedule, unit initial noise."""
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self._install_timesteps(np.arange(0, self.config.num_train_timesteps)[::-1], None)

    def _install_timesteps(self, timesteps: np.ndarray, device: Any) -> None:
        self._reset()
        self._ts_host = np.array(timesteps, dtype=np.int64)
        self.timesteps = torch.from_numpy(self._ts_host.copy()).to(device)

    def _custom_timesteps(self, timesteps: Any) -> np.ndarray:
        """User-given timesteps as int64, checked as diffusers does (descending, below num_train_timesteps)."""
        if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
            raise ValueError("`custom_timesteps` must be in descending order.")
        if timesteps[0] >= self.config.num_train_timesteps:
            raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {self.config.num_train_timesteps}.")
        return np.array(timesteps, dtype=np.int64)

    def _check_step_count(self, num_inference_steps: int) -> None:
        n = self.config.num_train_timesteps
        if num_inference_steps > n:
            raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`: {n}")
