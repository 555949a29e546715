"""TCDScheduler: trajectory consistency distillation sampling (Zheng et al. 2024), diffusers-compatible."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import tcd as solvers
from .lcm import LCMScheduler


class TCDScheduler(LCMScheduler):
    """Drop-in for ``diffusers.TCDScheduler`` (the configuration is LCM's); ``eta`` (the paper's gamma)
    is a step() argument, as there: each value gets its own table, built once. ``step`` returns
    ``(prev_sample, pred_noised_sample)``; the fused step writes the latter to its history slot on the way."""

    _DEFAULT_KEY = (0.3,)

    def _origin_timesteps(self, original_inference_steps: Optional[int], strength: float) -> tuple[int, np.ndarray]:
        if original_inference_steps is None:
            return super()._origin_timesteps(None, strength)
        # as diffusers: an explicit original_inference_steps selects from every training timestep
        return original_inference_steps, np.asarray(list(range(0, int(self.config.num_train_timesteps * strength))))

    def _builder(self, begin: int, key: tuple):
        (gamma,) = key
        ac = self.alphas_cumprod.double().tolist()
        ts = self._ts_host.tolist()
        abar, prev, at_s = [], [], []
        for i in range(begin, len(ts)):
            p = ts[i + 1] if i + 1 < len(ts) else 0  # past the end diffusers reads timestep 0, not final_alpha_cumprod
            # the intermediate timestep exactly as diffusers rounds it (float32 product, floor)
            s = int(torch.floor((1 - gamma) * torch.tensor(p)).to(torch.long))
            abar.append(ac[ts[i]])
            prev.append(ac[p])
            at_s.append(ac[s])
        return solvers.tcd(abar, prev, at_s, prediction_type=self.config.prediction_type, gamma=float(gamma),
                           last=self.num_inference_steps - 1 - begin)
