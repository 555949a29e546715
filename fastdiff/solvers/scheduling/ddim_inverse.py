"""DDIMInverseScheduler: DDIM run up the noise levels (image -> latent noise), diffusers-compatible."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import inversion
from ._vp import VPScheduler, vp_levels


class DDIMInverseScheduler(VPScheduler):
    """Drop-in for ``diffusers.DDIMInverseScheduler``: ascending timesteps; step i reads the model at
    ``t_i`` and moves from the level ``t_i - num_train_timesteps // num_inference_steps`` (the
    initial level below 0) up to ``t_i``, as diffusers does."""

    _exposes = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: Literal["leading", "trailing"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(locals())
        self._init_training(("epsilon", "sample", "v_prediction"), clamp_zero_snr=False, check_spacing=False)
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self._install_timesteps(np.arange(0, num_train_timesteps), None)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        cfg = self.config
        self._check_step_count(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        n = cfg.num_train_timesteps
        if cfg.timestep_spacing == "leading":
            ts = (np.arange(0, num_inference_steps) * (n // num_inference_steps)).round().astype(np.int64) + cfg.steps_offset
        elif cfg.timestep_spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / num_inference_steps)[::-1]).astype(np.int64) - 1
        else:
            raise ValueError(f"{cfg.timestep_spacing} is not supported. Please make sure to choose one of 'leading' or 'trailing'.")
        self._install_timesteps(ts, device)
        self._warm(0)

    def _missing_timestep(self, v: float) -> int:
        raise NotImplementedError(f"fastdiff: DDIMInverseScheduler steps through its own timesteps (set_timesteps); "
                                  f"timestep {v:g} is not one of them")

    def _abar_pairs(self, begin: int) -> tuple[list[float], list[float]]:
        """(abar read at, abar moved to) per step from ``begin``; derived once per schedule and start
        (every step reads them, and the derivation lists all training levels)."""
        cached = self.__dict__.get("_pairs_cache")
        if cached is not None and cached[0] is self._ts_host and cached[1] == begin:
            return cached[2]
        cfg = self.config
        ac = self.alphas_cumprod.double().tolist()
        initial = float(self.initial_alpha_cumprod)
        ratio = cfg.num_train_timesteps // self.num_inference_steps
        ts = self._ts_host.tolist()[begin:]
        src = [min(t - ratio, cfg.num_train_timesteps - 1) for t in ts]
        pairs = [ac[s] if s >= 0 else initial for s in src], [ac[t] for t in ts]
        self._pairs_cache = (self._ts_host, begin, pairs)
        return pairs

    def _builder(self, begin: int, key: tuple):
        src, dst = self._abar_pairs(begin)
        return inversion.ddim_inverse(src, dst, prediction_type=self.config.prediction_type)

    def _model_frame(self, begin: int):
        src, dst = self._abar_pairs(begin)
        return [1.0] * (len(src) + 1), vp_levels(src + dst[-1:])
