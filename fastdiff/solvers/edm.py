"""Samplers in Karras et al.'s EDM parameterisation (2022), written on symbols like methods.py.

State: x = x0 + sigma eps. The network is preconditioned: it sees c_in x with
c_in = 1 / sqrt(sigma^2 + sigma_data^2), and its output m gives the denoised sample
D = c_skip x + c_out m (EDM's table 1), which is exactly a row's conversion (a, b) = (c_skip, c_out).
"""

from __future__ import annotations

import math
from typing import Sequence

from .methods import churn
from .program import Lin, ProgramBuilder


def edm_conversion(prediction_type: str, sigma: float, sigma_data: float) -> tuple[float, float]:
    """(c_skip, c_out) at ``sigma``; a v-prediction network's c_out has the opposite sign."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    if prediction_type == "epsilon":
        return c_skip, c_out
    if prediction_type == "v_prediction":
        return c_skip, -c_out
    raise ValueError(f"Prediction type {prediction_type} is not supported.")


def edm_input_scale(sigma: float, sigma_data: float) -> float:
    """1 / c_in: x_state = scale * x_model."""
    return math.sqrt(sigma**2 + sigma_data**2)


def edm_euler(
    sigmas: Sequence[float],
    *,
    prediction_type: str,
    sigma_data: float,
    begin: int = 0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> ProgramBuilder:
    """Euler on the EDM probability-flow ODE with optional churn (Karras et al. algorithm 2).

    With churn the state is lifted to sigma_hat = sigma (1 + gamma) with fresh noise and the output,
    preconditioned at sigma_hat (as diffusers does), is read at the lifted state: D = c_skip x + c_out m
    misses the lift's c_skip * noise term, which the step adds back.
    """
    prog = ProgramBuilder()
    n = len(sigmas) - 1
    for i in range(begin, n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma, sigma_hat = churn(sigma, n, s_churn, s_tmin, s_tmax)
        c_skip, c_out = edm_conversion(prediction_type, sigma_hat, sigma_data)
        x, _, z, d = prog.eval(c_skip, c_out, draw=gamma > 0)
        lift = (s_noise * math.sqrt(sigma_hat**2 - sigma**2)) * z if gamma > 0 else Lin()
        x_hat = x + lift
        denoised = d + c_skip * lift
        prog.advance(x_hat + ((sigma_next - sigma_hat) / sigma_hat) * (x_hat - denoised))
    return prog
