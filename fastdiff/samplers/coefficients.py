"""Coefficient tables for `fastdiff.ops.sampler_update`, computed once per run in float64 on the host.

Each row is ``[a, b, c_x, c_d, c_z, slot, c_h0, ...]`` (see fastdiff/ops/sampler_update.py): the
model output m becomes the data prediction ``d = a x + b m``, and the step is
``x_next = c_x x + c_d d + sum_k c_hk h_k + c_z z``. Move a table to the device once with
``table.to(device, torch.float32)`` and pass ``table[i]`` at step i: a view, so no host sync.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's ``scaled_linear`` beta schedule, as cumulative alphas in float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def to_data_prediction(alpha: float, sigma: float, prediction_type: str) -> tuple[float, float]:
    """(a, b) with x0 = a x + b m for a model output m of the given type, at x = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        if alpha == 0.0:  # zero terminal SNR: x0 is not recoverable from epsilon; _finished refuses it
            return math.inf, -math.inf
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    if prediction_type == "sample":
        return 0.0, 1.0
    raise ValueError(f"fastdiff: prediction_type expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _check_inputs(alphas_cumprod: Tensor, timesteps: Sequence[int]) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("fastdiff: timesteps expected at least one step, got none")
    if any(not 0 <= t < len(alphas_cumprod) for t in ts):
        raise ValueError(f"fastdiff: timesteps expected values in [0, {len(alphas_cumprod) - 1}], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"fastdiff: timesteps expected a strictly decreasing sequence, got {ts}")
    return ts


def _finished(rows: list[list[float]], name: str) -> Tensor:
    table = torch.tensor(rows, dtype=torch.float64)
    if not torch.isfinite(table).all():
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(table))[:, 0]})
        raise ValueError(f"fastdiff: {name} produced non-finite coefficients at steps {bad} (a zero-SNR timestep with epsilon prediction?)")
    return table


def ddim_table(
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    final_alpha_cumprod: float = 1.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) rows, one per timestep; no history (6 columns).

    Step i goes from ``timesteps[i]`` to ``timesteps[i + 1]``, the last to ``final_alpha_cumprod``.
    ``eta`` scales the injected noise (0: deterministic DDIM, 1: DDPM-like); pass noise when eta > 0.
    """
    ts = _check_inputs(alphas_cumprod, timesteps)
    ac = alphas_cumprod.to(torch.float64).tolist()
    rows = []
    for i, t in enumerate(ts):
        ab, ab_prev = ac[t], ac[ts[i + 1]] if i + 1 < len(ts) else final_alpha_cumprod
        a, b = to_data_prediction(math.sqrt(ab), math.sqrt(1.0 - ab), prediction_type)
        var = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
        sigma = eta * math.sqrt(max(var, 0.0))
        k = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) / math.sqrt(1.0 - ab)
        rows.append([a, b, k, math.sqrt(ab_prev) - k * math.sqrt(ab), sigma, -1.0])
    return _finished(rows, "ddim_table")


def dpmpp_2m_table(
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    *,
    prediction_type: str = "epsilon",
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) rows (Lu et al. 2022, algorithm 2, midpoint form), ending at sigma = 0.

    One history slot holds the previous data prediction; the first step (and, with
    ``lower_order_final`` and fewer than 15 steps, the last) is first order. 7 columns.
    """
    ts = _check_inputs(alphas_cumprod, timesteps)
    ac = alphas_cumprod.to(torch.float64).tolist()
    alpha = [math.sqrt(ac[t]) for t in ts] + [1.0]
    sigma = [math.sqrt(1.0 - ac[t]) for t in ts] + [0.0]
    lam = [math.log(al / si) if si > 0 else math.inf for al, si in zip(alpha, sigma)]
    rows = []
    n = len(ts)
    for i in range(n):
        a, b = to_data_prediction(alpha[i], sigma[i], prediction_type)
        # phi = alpha_t (1 - e^{-h}); at the final sigma = 0, e^{-h} = 0 and x_next = d.
        em = math.exp(-(lam[i + 1] - lam[i])) if math.isfinite(lam[i + 1]) else 0.0
        phi = alpha[i + 1] * (1.0 - em)
        c_x = sigma[i + 1] / sigma[i]
        first_order = i == 0 or (lower_order_final and n < 15 and i == n - 1) or not math.isfinite(lam[i + 1])
        if first_order:
            c_d, c_h = phi, 0.0
        else:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            c_d, c_h = phi * (1.0 + 0.5 / r), -phi * 0.5 / r
        rows.append([a, b, c_x, c_d, 0.0, 0.0, c_h])
    return _finished(rows, "dpmpp_2m_table")
