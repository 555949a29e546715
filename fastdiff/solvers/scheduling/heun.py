"""HeunDiscreteScheduler: Heun's 2nd-order method (Karras et al. 2022), diffusers-compatible."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers, schedules
from ._common import sigma_spacing, spaced_sigmas
from ._ve import VEScheduler


class HeunDiscreteScheduler(VEScheduler):
    """Drop-in for ``diffusers.HeunDiscreteScheduler``: two model evaluations per step (order = 2),
    each followed by one fused update. The corrector's start state is not stored: it is recovered
    from the midpoint state and the first evaluation's x0 inside the coefficient row."""

    order = 2

    _untimed_ok = True  # like diffusers, step() works on the schedule __init__ sets

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        self._init_training(("epsilon", "v_prediction", "sample"), clamp_zero_snr=True)
        self._init_done = False
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self._init_done = True
        self.use_karras_sigmas = use_karras_sigmas

    @property
    def state_in_first_order(self) -> bool:
        return self._first_order

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      num_train_timesteps: Optional[int] = None, timesteps: Optional[Sequence[float]] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None and kind is not None:
            raise ValueError(f"Cannot set `timesteps` with `config.use_{kind}_sigmas = True`.")
        num_inference_steps = num_inference_steps or len(timesteps)
        self.num_inference_steps = num_inference_steps
        n_train = num_train_timesteps or cfg.num_train_timesteps
        if timesteps is not None:
            ts = np.array(timesteps, dtype=np.float32)
        else:
            ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, n_train, steps_offset=cfg.steps_offset,
                                            rounded=cfg.timestep_spacing != "linspace").astype(np.float32)
        full = schedules.vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(full)
        sig = np.interp(ts, np.arange(0, len(full)), full)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, sig, num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
        sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._reset()
        self.sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
        ts_t = torch.from_numpy(np.asarray(ts))
        self.timesteps = torch.cat([ts_t[:1], ts_t[1:].repeat_interleave(2)]).to(device=device, dtype=torch.float32)
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()
        self._first_order = True
        self._warm(0)

    def _builder(self, begin: int, key: tuple):
        return solvers.heun(self._sig, prediction_type=self.config.prediction_type, begin=begin)
