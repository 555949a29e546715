"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler: DPM-Solver-2 (Karras et al. 2022,
k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral), diffusers-compatible."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import kdpm2 as solvers, schedules
from ._common import sigma_spacing, spaced_sigmas
from ._ve import VEScheduler


def _sigma_to_t_f32(sigmas: Tensor, log_sigmas: Tensor) -> Tensor:
    """sigma -> fractional timestep in float32, with the dtypes diffusers' KDPM2 schedulers compute the
    second stages' timesteps in (a numpy float32 log, the interpolation in float32 tensors)."""
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), np.float32(1e-10))))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = torch.cumsum(dists >= 0, dim=0).argmax(dim=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
    return (1 - w) * low + w * high


def _interleave(v: Tensor) -> Tensor:
    """[v0, v1, v1, v2, v2, ..., vN, vN, vN]: diffusers' two-stage layout of a per-level table."""
    return torch.cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])


class KDPM2DiscreteScheduler(VEScheduler):
    """Drop-in for ``diffusers.KDPM2DiscreteScheduler``: two model evaluations per step (order = 2),
    each one fused update (see fastdiff/solvers/kdpm2.py for how the second stage reads the first's input)."""

    order = 2
    _ancestral = False
    #: the program variant ``step`` runs (the drop-in's: the first stage's input kept in history)
    _STEP_KEY: tuple = ()

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        # diffusers accepts prediction_type "sample" here and refuses it at step()
        self._init_training(("epsilon", "v_prediction", "sample"), clamp_zero_snr=False)
        self._init_done = False
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self._init_done = True

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: Optional[int] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        self.num_inference_steps = num_inference_steps
        n_train = num_train_timesteps or cfg.num_train_timesteps
        if cfg.timestep_spacing not in schedules.TIMESTEP_SPACINGS:
            raise ValueError(f"{cfg.timestep_spacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'.")
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, n_train, steps_offset=cfg.steps_offset,
                                        rounded=cfg.timestep_spacing != "linspace").astype(np.float32)
        full = schedules.vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(full)
        sig = np.interp(ts, np.arange(0, len(full)), full)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, sig, num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            if kind == "karras":
                ts = ts.round()
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        levels = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        interpol = self._set_levels(levels)
        ts_t = torch.from_numpy(np.asarray(ts))
        ts_mid = _sigma_to_t_f32(interpol, self.log_sigmas.cpu()).to(ts_t.dtype)
        mids = ts_mid[:-2] if self._ancestral else ts_mid[1:-1]
        self._reset()
        self.timesteps = torch.cat([ts_t[:1], torch.stack([mids, ts_t[1:]], dim=-1).flatten()]).to(device)
        self.sample = None
        self._sig = self.sigmas.double().tolist()
        self._mid = self.sigmas_interpol.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()
        self._warm(0, self._STEP_KEY)

    def _set_levels(self, sigmas: Tensor) -> Tensor:
        """Install the interleaved sigmas and sigma_mids; returns the per-level sigma_mids (float32, as
        diffusers: the geometric mean of consecutive levels, from log-space lerp)."""
        interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
        self.sigmas = _interleave(sigmas)
        self.sigmas_interpol = _interleave(interpol)
        return interpol

    def _solver_kw(self) -> dict:
        return {}

    def _builder(self, begin: int, key: tuple):
        return solvers.kdpm2(self._sig, self._mid, len(self._ts_host), prediction_type=self.config.prediction_type,
                             begin=begin, ancestral=self._ancestral, stored=key == ("stored",), **self._solver_kw())

    def _model_frame(self, begin: int):
        # the model reads the state at sigma (first stage) or sigma_mid (second); its noise level, as
        # diffusers' add_noise reads it, is sigmas[k] either way
        scale, levels, first = [], [], True
        kw = self._solver_kw()
        for k in range(begin, len(self._ts_host)):
            sigma, mid, _, _ = solvers.stage_sigmas(k, first, self._sig, self._mid, ancestral=self._ancestral, **kw)
            n = math.sqrt((sigma if first else mid) ** 2 + 1.0)
            scale.append(n)
            levels.append((1.0 / n, self._sig[k] / n))
            first = not first
        return scale + [1.0], levels + [(1.0, 0.0)]


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """Drop-in for ``diffusers.KDPM2AncestralDiscreteScheduler``: the second stage goes down to
    sigma_down and adds fresh noise up to the next level (drawn there, as diffusers draws it)."""

    _ancestral = True

    def _set_levels(self, sigmas: Tensor) -> Tensor:
        nxt = sigmas.roll(-1)
        nxt[-1] = 0.0
        up = (nxt**2 * (sigmas**2 - nxt**2) / sigmas**2) ** 0.5
        down = (nxt**2 - up**2) ** 0.5
        down[-1] = 0.0
        interpol = sigmas.log().lerp(down.log(), 0.5).exp()
        interpol[-2:] = 0.0
        self.sigmas = _interleave(sigmas)
        self.sigmas_interpol = _interleave(interpol)
        self.sigmas_up = _interleave(up)
        self.sigmas_down = _interleave(down)
        self._up = self.sigmas_up.double().tolist()
        self._down = self.sigmas_down.double().tolist()
        return interpol

    def _solver_kw(self) -> dict:
        return {"down": self._down, "up": self._up}
