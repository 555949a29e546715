"""Coefficient tables for `fastdiff.ops.sampler_update`, computed once per run in float64 on the host.

Two direct entry points (DDIM, DPM-Solver++(2M) over a timestep list); every sampler's tables,
these included, come from fastdiff/solvers/methods.py through the row compiler in program.py.

Each row is ``[a, b, c_x, c_d, c_z, slot, c_h0, ...]`` (see fastdiff/solvers/rows.py): the
model output m becomes the data prediction ``d = a x + b m``, and the step is
``x_next = c_x x + c_d d + sum_k c_hk h_k + c_z z``. Move a table to the device once with
``table.to(device, torch.float32)`` and pass ``table[i]`` at step i: a view, so no host sync.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import methods
from .rows import x0_conversion

def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's ``scaled_linear`` beta schedule, as cumulative alphas in float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _check_inputs(alphas_cumprod: Tensor, timesteps: Sequence[int]) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("fastdiff: timesteps expected at least one step, got none")
    if any(not 0 <= t < len(alphas_cumprod) for t in ts):
        raise ValueError(f"fastdiff: timesteps expected values in [0, {len(alphas_cumprod) - 1}], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"fastdiff: timesteps expected a strictly decreasing sequence, got {ts}")
    return ts


def _refuse_zero_snr_epsilon(name: str, alphas: list[float], prediction_type: str) -> None:
    bad = [i for i, a in enumerate(alphas) if a == 0.0] if prediction_type == "epsilon" else []
    if bad:
        raise ValueError(f"fastdiff: {name} produced non-finite coefficients at steps {bad} (a zero-SNR timestep with epsilon prediction?)")


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
    abar = [ac[t] for t in ts]
    _refuse_zero_snr_epsilon("ddim_table", abar, prediction_type)
    prev = abar[1:] + [final_alpha_cumprod]
    return methods.ddim(abar, prev, prediction_type=prediction_type, eta=eta).build().rows


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
    levels = [(math.sqrt(ac[t]), math.sqrt(1.0 - ac[t])) for t in ts] + [(1.0, 0.0)]
    _refuse_zero_snr_epsilon("dpmpp_2m_table", [a for a, _ in levels[:-1]], prediction_type)
    convert = [x0_conversion(prediction_type, a, s) for a, s in levels[:-1]]
    prog = methods.dpm_solver(levels, convert, order=2, lower_order_final=lower_order_final, final_zero=True).build()
    if prog.history == 0:  # a single step: keep the documented 7-column layout
        return torch.cat([prog.rows, torch.zeros(prog.rows.shape[0], 1, dtype=prog.rows.dtype)], dim=1)
    return prog.rows
