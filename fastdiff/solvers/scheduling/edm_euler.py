"""EDMEulerScheduler: Euler in Karras et al.'s EDM parameterisation, diffusers-compatible."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import edm
from ._ve import VEScheduler


class EDMScheduler(VEScheduler):
    """What the EDM schedulers share: the sigma ramp (Karras' rho schedule or log-linear), timesteps
    c_noise = log(sigma) / 4, input preconditioning c_in and the model frame it implies."""

    def _edm_sigmas(self, ramp: Tensor) -> Tensor:
        """sigmas (float64 ramp in, float32 out), as diffusers computes them (same dtypes, same order)."""
        cfg = self.config
        if cfg.sigma_schedule == "karras":
            lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
            return ((hi + ramp * (lo - hi)) ** cfg.rho).to(torch.float32)
        # exponential: evenly spaced in log sigma, in float32 whatever the ramp's values
        return torch.linspace(math.log(cfg.sigma_min), math.log(cfg.sigma_max), len(ramp)).exp().flip(0).to(torch.float32)

    def _install_edm(self, sigmas: Tensor, device: Any) -> None:
        cfg = self.config
        if cfg.final_sigmas_type == "sigma_min":
            last = sigmas[-1:]
        elif cfg.final_sigmas_type == "zero":
            last = torch.zeros(1)
        else:
            raise ValueError(f"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {cfg.final_sigmas_type}")
        self._reset()
        self.timesteps = (0.25 * torch.log(sigmas)).to(device)
        self.sigmas = torch.cat([sigmas, last])
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()

    @property
    def init_noise_sigma(self) -> float:
        return (self.config.sigma_max**2 + 1) ** 0.5

    def precondition_inputs(self, sample: Tensor, sigma: Any) -> Tensor:
        return sample * self._get_conditioning_c_in(sigma)

    def precondition_noise(self, sigma: Any) -> Tensor:
        if not isinstance(sigma, Tensor):
            sigma = torch.tensor([sigma])
        return 0.25 * torch.log(sigma)

    def precondition_outputs(self, sample: Tensor, model_output: Tensor, sigma: Any) -> Tensor:
        c_skip, c_out = edm.edm_conversion(self.config.prediction_type, float(sigma), self.config.sigma_data)
        return c_skip * sample + c_out * model_output

    def _get_conditioning_c_in(self, sigma: Any) -> Any:
        return 1 / ((sigma**2 + self.config.sigma_data**2) ** 0.5)

    def scale_model_input(self, sample: Tensor, timestep: Any) -> Tensor:
        if self._step_index is None or self._step_index >= len(self.timesteps):
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample / edm.edm_input_scale(self._sig[self._step_index], self.config.sigma_data)

    def _model_frame(self, begin: int):
        sig = self._sig[begin:]
        scale = [edm.edm_input_scale(s, self.config.sigma_data) for s in sig[:-1]] + [1.0]
        levels = [(1.0 / n, s / n) for s, n in zip(sig[:-1], scale)] + [(1.0, sig[-1])]
        return scale, levels


class EDMEulerScheduler(EDMScheduler):
    """Drop-in for ``diffusers.EDMEulerScheduler`` (churn options are step() arguments, as there).
    ``pred_original_sample`` is a view valid until the next step; with churn it omits the churn
    noise's c_skip share that diffusers' includes."""

    _exposes = True

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: Literal["karras", "exponential"] = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ):
        self._register(locals())
        if sigma_schedule not in ("karras", "exponential"):
            raise ValueError(f"Wrong value for provided for `{sigma_schedule=}`.`")
        self.num_inference_steps: Optional[int] = None
        self.is_scale_input_called = False
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._install_edm(self._edm_sigmas(ramp), None)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      sigmas: Optional[Union[Tensor, Sequence[float], float]] = None) -> None:
        """``sigmas``, as in diffusers, is the ramp in [0, 1] the schedule is evaluated at."""
        self.num_inference_steps = num_inference_steps
        if sigmas is None:
            ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        elif isinstance(sigmas, float):
            ramp = torch.tensor(sigmas, dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas).to(torch.float64)
        self._install_edm(self._edm_sigmas(ramp), device)
        self._warm(0, (0.0, 0.0, math.inf, 1.0))

    def _builder(self, begin: int, key: tuple):
        s_churn, s_tmin, s_tmax, s_noise = key
        return edm.edm_euler(self._sig, prediction_type=self.config.prediction_type, sigma_data=self.config.sigma_data,
                             begin=begin, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
