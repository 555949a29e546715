"""What the multistep solvers share (DPM-Solver, UniPC): VP training tables, levels in VP or flow
coordinates, integer timesteps with one sigma each plus a final one."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import schedules
from ._base import ScheduleCore


class MultistepScheduler(ScheduleCore):
    alphas_cumprod: Tensor

    def _init_tables(self) -> None:
        """diffusers' per-training-timestep tables, and the state before set_timesteps."""
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self._reset()
        n = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=np.float32)[::-1].copy())
        self._ts_host = self.timesteps.numpy()
        self._sig = self.sigmas.double().tolist()

    def _install_sigmas(self, sigmas: np.ndarray, timesteps: np.ndarray, last: float, device: Any) -> None:
        """Take ``sigmas`` (one per timestep) followed by ``last`` as the schedule, and build its table."""
        sig = np.concatenate([sigmas, [last]]).astype(np.float32)
        self._reset()
        self.sigmas = torch.from_numpy(sig)
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()
        self._warm(0)

    def _missing_timestep(self, v: float) -> int:
        return len(self.timesteps) - 1

    def _alpha_sigma(self, s: float) -> tuple[float, float]:
        return schedules.flow_alpha_sigma(s) if self.config.use_flow_sigmas else schedules.vp_alpha_sigma(s)

    def _model_frame(self, begin: int):
        sig = self._sig[begin:]
        return [1.0] * len(sig), [self._alpha_sigma(s) for s in sig]
