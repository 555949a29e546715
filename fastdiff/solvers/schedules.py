"""Noise schedules and sigma spacings, computed on the host.

Training-side quantities (betas, cumulative alphas) follow the float32 arithmetic diffusers uses,
so a model trained with a diffusers schedule sees the same numbers here. Everything derived from
them for sampling (sigmas, timesteps) is computed in float64 numpy and rounded where diffusers
rounds, so the per-step scalars agree with diffusers' schedulers to the last float32 bit.

Two conventions for noise levels appear:

- variance preserving (VP) discrete-time models: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``,
  with the equivalent "VE" sigma ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (so that
  ``x_t / sqrt(abar_t) = x0 + sigma_t eps``);
- flow matching (rectified flow): ``x_s = (1 - s) x0 + s eps`` with ``s`` in [0, 1].
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

#: The value zero-terminal-SNR schedules clamp the last cumulative alpha to, so that an epsilon
#: model's x0 prediction ``(x - sigma eps) / alpha`` stays finite (alpha = 2**-12).
ZERO_SNR_CLAMP = 2.0**-24


# ---------------------------------------------------------------------------------------------
# Training schedules
# ---------------------------------------------------------------------------------------------
def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's ``squaredcos_cap_v2`` betas: abar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1.0 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Optional[Sequence[float]] = None,
) -> Tensor:
    """Training betas (float32): ``linear``, ``scaled_linear`` (Stable Diffusion) or ``squaredcos_cap_v2``."""
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ValueError(f"fastdiff: beta_schedule expected one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, algorithm 1: shift and scale sqrt(abar) so the last step has zero SNR.

    The first sqrt(abar) is kept and the last becomes exactly 0 (pure noise at t = T).
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def make_alphas_cumprod(betas: Tensor, *, clamp_last: bool = False) -> Tensor:
    """Cumulative alphas (float32). ``clamp_last`` sets a zero last value to 2**-24 (see ZERO_SNR_CLAMP)."""
    abar = torch.cumprod(1.0 - betas, dim=0)
    if clamp_last:
        abar[-1] = ZERO_SNR_CLAMP
    return abar


def vp_sigmas(alphas_cumprod: Tensor) -> np.ndarray:
    """The VE sigma of every training timestep, ``sqrt((1 - abar) / abar)``, in float32 like diffusers."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy().copy()


# ---------------------------------------------------------------------------------------------
# Timestep spacings (Lin et al. 2024, table 2), in the two flavours diffusers' schedulers use
# ---------------------------------------------------------------------------------------------
def spaced_timesteps(
    spacing: str,
    steps: int,
    num_train_timesteps: int = 1000,
    *,
    steps_offset: int = 0,
    rounded: bool = True,
) -> np.ndarray:
    """``steps`` descending timesteps (DDPM / DDIM / Euler / Heun flavour).

    linspace: evenly from T-1 to 0; leading: multiples of T // steps from 0, plus ``steps_offset``;
    trailing: evenly from T-1 downwards in steps of T / steps. ``rounded=False`` keeps linspace's
    fractional values (the Euler family passes them to the model as floats).
    """
    n = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, steps, dtype=np.float64 if rounded else np.float32)[::-1].copy()
        return ts.round() if rounded else ts.astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / steps)).astype(np.float64) - 1
    raise ValueError(f"fastdiff: timestep_spacing expected one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def multistep_timesteps(
    spacing: str,
    steps: int,
    num_train_timesteps: int = 1000,
    *,
    steps_offset: int = 0,
    last_timestep: Optional[int] = None,
) -> np.ndarray:
    """``steps`` descending integer timesteps (DPM-Solver / UniPC flavour: spaced over steps + 1 points).

    ``last_timestep`` (default T) is one past the largest timestep used (DPM-Solver's lambda_min_clipped).
    """
    n = num_train_timesteps
    last = n if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy()
    if spacing == "leading":
        return (np.arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -n / steps).round() - 1
    raise ValueError(f"fastdiff: timestep_spacing expected one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma: linear interpolation in log sigma."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


# ---------------------------------------------------------------------------------------------
# Sigma spacings
# ---------------------------------------------------------------------------------------------
def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """Evenly spaced in log sigma, from sigma_max down to sigma_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def beta_sigmas(sigma_min: float, sigma_max: float, steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta sampling is all you need"): sigma at the Beta(alpha, beta) quantiles. Needs scipy."""
    try:
        from scipy.stats import beta as beta_dist
    except ImportError as e:  # pragma: no cover - scipy is installed wherever the tests run
        raise ImportError("fastdiff: beta sigmas need scipy (pip install scipy)") from e
    q = beta_dist.ppf(1 - np.linspace(0, 1, steps), alpha, beta)
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in q])


def shift_flow_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3's resolution shift of flow-matching levels: ``shift s / (1 + (shift - 1) s)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu: float, sigmas: np.ndarray, kind: str = "exponential", power: float = 1.0) -> np.ndarray:
    """FLUX's dynamic (sequence-length dependent) shift: exponential uses e^mu, linear uses mu."""
    if kind not in ("exponential", "linear"):
        raise ValueError(f"fastdiff: time_shift_type expected 'exponential' or 'linear', got {kind!r}")
    scale = math.exp(mu) if kind == "exponential" else mu
    return scale / (scale + (1 / sigmas - 1) ** power)


def stretch_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Rescale flow levels so the last one equals ``shift_terminal`` (LTX-Video)."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def flow_match_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's mu for dynamic shifting: linear in the number of image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


def vp_alpha_sigma(sigma: float) -> tuple[float, float]:
    """(alpha, sigma) of the VP sample whose VE sigma is ``sigma``: ``alpha = 1 / sqrt(1 + sigma^2)``."""
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def flow_alpha_sigma(s: float) -> tuple[float, float]:
    return 1.0 - s, s
