"""LMSDiscreteScheduler: linear multistep on the probability-flow ODE (k-diffusion's sample_lms),
diffusers-compatible."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import linear_multistep, schedules
from ._common import sigma_spacing, spaced_sigmas
from ._ve import VEScheduler


class LMSDiscreteScheduler(VEScheduler):
    """Drop-in for ``diffusers.LMSDiscreteScheduler``; ``order`` is a step() argument, as there (each
    value gets its own table, built once). The weights are exact integrals of Lagrange polynomials,
    computed in float64 at set_timesteps.
    """

    _exposes = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        self._init_training(clamp_zero_snr=False)
        self.is_scale_input_called = False
        self.use_karras_sigmas = use_karras_sigmas
        self._set(num_train_timesteps, None, warm=False)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self._set(num_inference_steps, device, warm=True)

    def _set(self, num_inference_steps: int, device, *, warm: bool) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                        steps_offset=cfg.steps_offset, rounded=cfg.timestep_spacing != "linspace").astype(np.float32)
        full = schedules.vp_sigmas(self.alphas_cumprod)
        sig = np.interp(ts, np.arange(0, len(full)), full)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, sig, num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, np.log(full)) for s in sig])
        self._reset()
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(ts)).to(device=device, dtype=torch.float32)
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()
        if warm:
            self._warm(0, (4,))

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """The weight of the derivative ``current_order`` steps back in the order-``order`` step from index t."""
        return linear_multistep.lms_coefficients(self._sig, t, order)[current_order]

    def _builder(self, begin: int, key: tuple):
        (order,) = key
        return linear_multistep.lms(self._sig, prediction_type=self.config.prediction_type, order=int(order), begin=begin)
