"""Schedule pieces several scheduler classes share (training schedule, sigma spacing and shifts, final level)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from torch import Tensor

from .. import schedules


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


def final_sigma(config: Any, alphas_cumprod: Tensor) -> float:
    """The level after the last step for ``final_sigmas_type``: 0, or the first training timestep's sigma."""
    if config.final_sigmas_type == "sigma_min":
        return float(((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5)
    if config.final_sigmas_type == "zero":
        return 0.0
    raise ValueError(f"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {config.final_sigmas_type}")


def shift_flow_levels(config: Any, sigmas: np.ndarray, shift: float, mu: Optional[float]) -> np.ndarray:
    """Flow-matching levels after the dynamic (``mu``) or static (``shift``) shift and the optional
    terminal stretch, as the config asks (diffusers' order)."""
    if config.use_dynamic_shifting:
        sigmas = schedules.time_shift(mu, sigmas, config.time_shift_type)
    else:
        sigmas = schedules.shift_flow_sigmas(sigmas, shift)
    if config.shift_terminal:
        sigmas = schedules.stretch_to_terminal(sigmas, config.shift_terminal)
    return sigmas
