"""What the Euler-family schedulers share: a VE state x = x0 + sigma eps, the model input
x / sqrt(1 + sigma^2) and the initial noise scale."""

from __future__ import annotations

import math

from torch import Tensor

from ._base import ScheduleCore


class VEScheduler(ScheduleCore):
    sigmas: Tensor

    @property
    def init_noise_sigma(self):
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _model_frame(self, begin: int):
        sig = self._sig[begin:]
        scale = [math.sqrt(s * s + 1.0) for s in sig[:-1]] + [1.0]
        levels = [(1.0 / n, s / n) for s, n in zip(sig[:-1], scale)] + [(1.0, sig[-1])]
        return scale, levels
