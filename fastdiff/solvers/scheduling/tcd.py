"""TCDScheduler: trajectory consistency distillation sampling (Zheng et al. 2024), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .. import tcd as solvers
from .lcm import LCMScheduler


class TCDScheduler(LCMScheduler):
    """Drop-in for ``diffusers.TCDScheduler`` (the configuration is LCM's); ``eta`` (the paper's gamma)
    is a step() argument, as there: each value gets its own table, built once. ``step`` returns
    ``(prev_sample, pred_noised_sample)``; the fused step writes the latter to its history slot on the way."""

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device=None,
        original_inference_steps: Optional[int] = None,
        timesteps: Optional[Sequence[int]] = None,
        strength: float = 1.0,
    ) -> None:
        cfg = self.config
        n_train = cfg.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if original_inference_steps is None:
            original = cfg.original_inference_steps
            if original > n_train:
                raise ValueError(f"`original_steps`: {original} cannot be larger than `self.config.train_timesteps`: {n_train}")
            origin = np.asarray(list(range(1, int(original * strength) + 1))) * (n_train // original) - 1
        else:
            # as diffusers: an explicit original_inference_steps selects from every training timestep
            original = original_inference_steps
            origin = np.asarray(list(range(0, int(n_train * strength))))
        if timesteps is not None:
            ts = self._custom_timesteps(timesteps)
            self.num_inference_steps = len(ts)
            self.custom_timesteps = True
            init = min(int(self.num_inference_steps * strength), self.num_inference_steps)
            ts = ts[max(self.num_inference_steps - init, 0) * self.order:]
        else:
            if num_inference_steps > n_train:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`: {n_train}")
            if len(origin) // num_inference_steps < 1:
                raise ValueError(f"The combination of `original_steps x strength`: {original} x {strength} is smaller than "
                                 f"`num_inference_steps`: {num_inference_steps}.")
            if num_inference_steps > original:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than `original_inference_steps`: {original}")
            self.num_inference_steps = num_inference_steps
            origin = origin[::-1].copy()
            idx = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            ts = origin[idx]
        self._install_timesteps(ts, device)
        self._warm(0, (0.3,))

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
