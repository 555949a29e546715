"""Inversion samplers (image -> noise, for editing), written on symbols like methods.py: the
deterministic samplers run up the noise levels.

State: the VP sample, x = alpha x0 + sigma eps with alpha^2 + sigma^2 = 1.
"""

from __future__ import annotations

import math
from typing import Sequence

from .program import ProgramBuilder
from .rows import eps_conversion, x0_conversion


def noise_estimate(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """eps = a x + b m; refused where it does not exist (a sample-predicting model at sigma = 0,
    where diffusers divides by zero)."""
    if sigma == 0.0 and prediction_type == "sample":
        raise ValueError("fastdiff: a sample-predicting model gives no noise estimate at a noise-free level "
                         "(set_alpha_to_one=True starts there); use set_alpha_to_one=False")
    return eps_conversion(prediction_type, alpha, sigma)


def ddim_inverse(abar_from: Sequence[float], abar_to: Sequence[float], *, prediction_type: str) -> ProgramBuilder:
    """DDIM inversion (Song et al. 2021, eq. 13 run forward; Mokady et al. 2022): x0 and eps read at
    the current level, re-combined at the next, higher one.

    D is the x0 prediction, except where the current level is noise-free (sigma = 0, the first step
    with set_alpha_to_one): there x0 = x / alpha does not involve the model output, so D is the
    noise estimate the step needs instead.
    """
    prog = ProgramBuilder()
    for ab, abn in zip(abar_from, abar_to):
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        a, b = x0_conversion(prediction_type, alpha, sigma)
        ae, be = noise_estimate(prediction_type, alpha, sigma)
        if b != 0.0:
            x, m, _, x0 = prog.eval(a, b)
            eps = ae * x + be * m
        else:
            x, _, _, eps = prog.eval(ae, be)
            x0 = a * x
        prog.advance(math.sqrt(abn) * x0 + math.sqrt(1.0 - abn) * eps)
    return prog
