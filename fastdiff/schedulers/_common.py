"""Schedule pieces several scheduler classes share (training schedule, sigma conversions, noising)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..samplers import schedules


def training_schedule(config: Any, *, clamp_zero_snr: bool) -> tuple[Tensor, Tensor]:
    """(betas, alphas_cumprod) from a config with diffusers' keys, float32.

    ``clamp_zero_snr`` replaces a zero last cumulative alpha by 2**-24 when the schedule is
    rescaled to zero terminal SNR. diffusers' multistep and Euler-family schedulers always do; its
    DDPM, DDIM and LCM schedulers do not, and then divide by zero with epsilon models, so those
    classes here clamp for epsilon prediction only (v-prediction, the usual zero-SNR pairing, keeps
    the exact schedule and diffusers' numbers).
    """
    betas = schedules.make_betas(
        config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end, config.trained_betas
    )
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    if zero_snr:
        betas = schedules.rescale_zero_terminal_snr(betas)
    return betas, schedules.make_alphas_cumprod(betas, clamp_last=zero_snr and clamp_zero_snr)


def spaced_sigmas(config: Any, kind: Optional[str], in_sigmas: np.ndarray, steps: int) -> np.ndarray:
    """Karras / exponential / beta spacing between in_sigmas' ends (or config sigma_min / sigma_max)."""
    smin = config.get("sigma_min", None)
    smax = config.get("sigma_max", None)
    smin = float(in_sigmas[-1]) if smin is None else smin
    smax = float(in_sigmas[0]) if smax is None else smax
    if kind == "karras":
        return schedules.karras_sigmas(smin, smax, steps)
    if kind == "exponential":
        return schedules.exponential_sigmas(smin, smax, steps)
    if kind == "beta":
        return schedules.beta_sigmas(smin, smax, steps)
    raise ValueError(f"fastdiff: unknown sigma spacing {kind!r}")


def sigma_spacing(config: Any) -> Optional[str]:
    """Which of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas is set (at most one)."""
    kinds = [k for k in ("karras", "exponential", "beta") if config.get(f"use_{k}_sigmas", False)]
    if len(kinds) > 1:
        raise ValueError("fastdiff: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be set")
    return kinds[0] if kinds else None


def check_timestep_spacing(spacing: str) -> None:
    if spacing not in schedules.TIMESTEP_SPACINGS:
        raise ValueError(f"fastdiff: timestep_spacing expected one of {schedules.TIMESTEP_SPACINGS}, got {spacing!r}")


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1))) if v.dim() else v


def vp_add_noise(alphas_cumprod: Tensor, original: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with abar gathered on the device (no host sync)."""
    ac = alphas_cumprod.to(device=original.device, dtype=original.dtype)
    t = timesteps.to(original.device) if isinstance(timesteps, Tensor) else torch.as_tensor(timesteps, device=original.device)
    ab = ac[t.long()].flatten()
    while ab.dim() < original.dim():
        ab = ab.unsqueeze(-1)
    return ab**0.5 * original + (1 - ab) ** 0.5 * noise


def vp_velocity(alphas_cumprod: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """The v-prediction target sqrt(abar) noise - sqrt(1 - abar) x0 (diffusers' get_velocity)."""
    ac = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
    t = timesteps.to(sample.device) if isinstance(timesteps, Tensor) else torch.as_tensor(timesteps, device=sample.device)
    ab = ac[t.long()].flatten()
    while ab.dim() < sample.dim():
        ab = ab.unsqueeze(-1)
    return ab**0.5 * noise - (1 - ab) ** 0.5 * sample


class VPNoising:
    """`add_noise` and `get_velocity` of the schedulers indexed by training timestep (DDPM, DDIM, LCM):
    the forward process at alphas_cumprod[t], as diffusers defines them."""

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return vp_add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return vp_velocity(self.alphas_cumprod, sample, noise, timesteps)


class MultistepNoising:
    """`scale_model_input` and `add_noise` of the multistep solvers (DPM-Solver, UniPC): inputs need no
    scaling, and noise is added at each timestep's sigma in VP or flow coordinates, as diffusers does."""

    def scale_model_input(self, sample: Tensor, *args, **kwargs) -> Tensor:
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        sigma = sigmas[idx].flatten()
        while sigma.dim() < original_samples.dim():
            sigma = sigma.unsqueeze(-1)
        if self.config.use_flow_sigmas:
            alpha_t, sigma_t = 1 - sigma, sigma
        else:
            alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
            sigma_t = sigma * alpha_t
        return alpha_t * original_samples + sigma_t * noise
