"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler, diffusers-compatible."""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import methods as solvers, schedules
from ._common import final_sigma, sigma_spacing, spaced_sigmas
from ._ve import VEScheduler


def _full_sigmas(alphas_cumprod: Tensor) -> np.ndarray:
    return schedules.vp_sigmas(alphas_cumprod)


class EulerDiscreteScheduler(VEScheduler):
    """Drop-in for ``diffusers.EulerDiscreteScheduler`` (churn options are step() arguments, as there;
    each distinct setting gets its own table, built once). ``pred_original_sample`` is a view valid
    until the next step; with churn it omits the churn noise diffusers adds to it.
    """

    _exposes = True

    _untimed_ok = True  # like diffusers, step() works on the schedule __init__ sets

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ):
        self._register(locals())
        sigma_spacing(self.config)
        self._init_training(("epsilon", "v_prediction", "sample"), clamp_zero_snr=True)
        sig = torch.from_numpy(_full_sigmas(self.alphas_cumprod)[::-1].copy())
        ts = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.num_inference_steps: Optional[int] = None
        self.is_scale_input_called = False
        self._reset()
        self.sigmas = torch.cat([sig, torch.zeros(1)])
        if timestep_type == "continuous" and prediction_type == "v_prediction":
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sig])
        else:
            self.timesteps = torch.from_numpy(ts).to(torch.float32)
        self._store()

    def _store(self) -> None:
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy().astype(np.float32)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      timesteps: Optional[Sequence[float]] = None, sigmas: Optional[Sequence[float]] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
        if timesteps is not None and kind is not None:
            raise ValueError(f"Cannot set `timesteps` with `config.use_{kind}_sigmas = True`.")
        continuous_v = cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction"
        if timesteps is not None and continuous_v:
            raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and `config.prediction_type = 'v_prediction'`.")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps
        full = _full_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(full)
        if sigmas is not None:
            sig = np.array(sigmas).astype(np.float32)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig[:-1]])
        else:
            if timesteps is not None:
                ts = np.array(timesteps).astype(np.float32)
            else:
                ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                                steps_offset=cfg.steps_offset, rounded=cfg.timestep_spacing != "linspace")
                ts = ts.astype(np.float32)
            if cfg.interpolation_type == "linear":
                sig = np.interp(ts, np.arange(0, len(full)), full)
            elif cfg.interpolation_type == "log_linear":
                sig = torch.linspace(np.log(full[-1]), np.log(full[0]), num_inference_steps + 1).exp().numpy()
            else:
                raise ValueError(f"fastdiff: interpolation_type expected 'linear' or 'log_linear', got {cfg.interpolation_type!r}")
            if kind is not None:
                sig = spaced_sigmas(cfg, kind, sig, num_inference_steps)
                ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            sig = np.concatenate([sig, [final_sigma(cfg, self.alphas_cumprod)]]).astype(np.float32)
        sig_t = torch.from_numpy(sig).to(dtype=torch.float32)
        self._reset()
        if continuous_v:
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sig_t[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(np.asarray(ts).astype(np.float32)).to(device=device)
        self.sigmas = sig_t
        self._store()
        self._warm(0, (0.0, 0.0, math.inf, 1.0))

    def _builder(self, begin: int, key: tuple):
        s_churn, s_tmin, s_tmax, s_noise = key
        return solvers.euler(self._sig, prediction_type=self.config.prediction_type, begin=begin,
                             s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)

class EulerAncestralDiscreteScheduler(VEScheduler):
    """Drop-in for ``diffusers.EulerAncestralDiscreteScheduler`` (also takes prediction_type="sample")."""

    _exposes = True

    _untimed_ok = True  # like diffusers, step() works on the schedule __init__ sets

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(locals())
        self._init_training(("epsilon", "v_prediction", "sample"), clamp_zero_snr=True)
        sig = np.concatenate([_full_sigmas(self.alphas_cumprod)[::-1], [0.0]]).astype(np.float32)
        self.num_inference_steps: Optional[int] = None
        self.is_scale_input_called = False
        self._reset()
        self.sigmas = torch.from_numpy(sig)
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy())
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.numpy()

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                        steps_offset=cfg.steps_offset, rounded=cfg.timestep_spacing != "linspace").astype(np.float32)
        full = _full_sigmas(self.alphas_cumprod)
        sig = np.concatenate([np.interp(ts, np.arange(0, len(full)), full), [0.0]]).astype(np.float32)
        self._reset()
        self.sigmas = torch.from_numpy(sig)
        self.timesteps = torch.from_numpy(ts).to(device=device)
        self._sig = self.sigmas.double().tolist()
        self._ts_host = ts
        self._warm(0)

    def _builder(self, begin: int, key: tuple):
        return solvers.euler_ancestral(self._sig, prediction_type=self.config.prediction_type, begin=begin)
