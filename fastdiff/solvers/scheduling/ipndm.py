"""IPNDMScheduler: improved pseudo numerical methods (fourth-order Adams-Bashforth), diffusers-compatible."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import linear_multistep
from ._base import ScheduleCore


class IPNDMScheduler(ScheduleCore):
    """Drop-in for ``diffusers.IPNDMScheduler``: levels sigma = sin(pi s / 2)^2 for s from 1 to 0,
    alpha = sqrt(1 - sigma^2), a v-predicting model; the history holds the last three noise estimates."""

    def __init__(self, num_train_timesteps: int = 1000, trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None):
        self._register(locals())
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self._init_done = False
        self.set_timesteps(num_train_timesteps)
        self._init_done = True

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.num_inference_steps = num_inference_steps
        # float32 torch arithmetic, as diffusers', so timesteps and levels are bit-identical
        s = torch.cat([torch.linspace(1, 0, num_inference_steps + 1)[:-1], torch.tensor([0.0])])
        tb = self.config.trained_betas
        self.betas = torch.tensor(tb, dtype=torch.float32) if tb is not None else torch.sin(s * math.pi / 2) ** 2
        self.alphas = (1.0 - self.betas**2) ** 0.5
        self._reset()
        self.timesteps = (torch.atan2(self.betas, self.alphas) / math.pi * 2)[:-1].to(device)
        self._ts_host = self.timesteps.cpu().numpy()
        self._warm(0)

    def scale_model_input(self, sample, *args, **kwargs):
        return sample

    def _builder(self, begin: int, key: tuple):
        return linear_multistep.ipndm(self.alphas.double().tolist(), self.betas.double().tolist(), begin=begin)

    def _model_frame(self, begin: int):
        al, si = self.alphas.double().tolist()[begin:], self.betas.double().tolist()[begin:]
        return [1.0] * len(al), list(zip(al, si))
