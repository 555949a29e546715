"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler: DPM-Solver-2 (Karras et al. 2022,
k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import kdpm2 as solvers, schedules
from ._two_stage import TwoStageScheduler


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


class KDPM2DiscreteScheduler(TwoStageScheduler):
    """Drop-in for ``diffusers.KDPM2DiscreteScheduler``: two model evaluations per step (order = 2),
    each one fused update (see fastdiff/solvers/kdpm2.py for how the second stage reads the first's input)."""

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
        self._init_schedule(locals())

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: Optional[int] = None) -> None:
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        n_train = num_train_timesteps or cfg.num_train_timesteps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, n_train, steps_offset=cfg.steps_offset,
                                        rounded=cfg.timestep_spacing != "linspace").astype(np.float32)
        sig, ts, log_sigmas = self._spaced_levels(ts, num_inference_steps, round_karras=True)
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

    def _stage(self, k: int, first: bool) -> tuple[float, float]:
        sigma, mid, _, _ = solvers.stage_sigmas(k, first, self._sig, self._mid, ancestral=self._ancestral, **self._solver_kw())
        return sigma, mid


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
