"""What the schedulers indexed by training timestep share (DDPM, DDIM, LCM): the state is the VP
sample itself (no input scaling, unit initial noise), the timesteps are integers, and noising and
the v-prediction target read alphas_cumprod at the timestep, as diffusers defines them."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ._base import ScheduleCore
from ._common import expand_like


def _abar_at(alphas_cumprod: Tensor, like: Tensor, timesteps: Any) -> Tensor:
    """abar_t gathered on ``like``'s device (no host sync), shaped to broadcast on ``like``."""
    ac = alphas_cumprod.to(device=like.device, dtype=like.dtype)
    t = timesteps.to(like.device) if isinstance(timesteps, Tensor) else torch.as_tensor(timesteps, device=like.device)
    return expand_like(ac[t.long()].flatten(), like)


def vp_levels(abar: list[float]) -> list[tuple[float, float]]:
    """(alpha, sigma) = (sqrt(abar), sqrt(1 - abar)) per level."""
    return [(a**0.5, (1.0 - a) ** 0.5) for a in abar]


class VPScheduler(ScheduleCore):
    alphas_cumprod: Tensor

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

    def scale_model_input(self, sample: Tensor, timestep: Optional[int] = None) -> Tensor:
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        ab = _abar_at(self.alphas_cumprod, original_samples, timesteps)
        return ab**0.5 * original_samples + (1 - ab) ** 0.5 * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target sqrt(abar) noise - sqrt(1 - abar) x0 (diffusers' get_velocity)."""
        ab = _abar_at(self.alphas_cumprod, sample, timesteps)
        return ab**0.5 * noise - (1 - ab) ** 0.5 * sample
