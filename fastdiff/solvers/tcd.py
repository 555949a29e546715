"""Trajectory consistency distillation's strategic stochastic sampling (Zheng et al. 2024, TCD),
written on symbols (see program.py); VP state ``x = sqrt(abar) x0 + sqrt(1 - abar) eps``.

Each step predicts x0 and eps at level t, re-noises them deterministically to the intermediate
level s = floor((1 - gamma) t_prev) (the "predicted noised sample", linear in x and the model
output, so it is the row's converted output D), then moves from s forward to t_prev with fresh
noise: ``x_prev = sqrt(abar_prev / abar_s) D + sqrt(1 - abar_prev / abar_s) z``. gamma = 0 is
deterministic (s = t_prev); no noise is added at the schedule's last step.
"""

from __future__ import annotations

import math
from typing import Sequence

from .program import ProgramBuilder
from .rows import eps_conversion, x0_conversion


def tcd(
    abar: Sequence[float],
    abar_prev: Sequence[float],
    abar_s: Sequence[float],
    *,
    prediction_type: str,
    gamma: float,
    last: int,
) -> ProgramBuilder:
    """One evaluation per entry; entry ``last`` (an index into these lists) ends without noise."""
    prog = ProgramBuilder()
    for n, (ab, abp, abs_) in enumerate(zip(abar, abar_prev, abar_s)):
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        a0, b0 = x0_conversion(prediction_type, alpha, sigma)
        ae, be = eps_conversion(prediction_type, alpha, sigma)
        ks, qs = math.sqrt(abs_), math.sqrt(1.0 - abs_)
        noisy = gamma > 0 and n != last
        _, _, z, noised = prog.eval(ks * a0 + qs * ae, ks * b0 + qs * be, draw=noisy)
        r = abp / abs_
        prog.advance(math.sqrt(r) * noised + math.sqrt(max(1.0 - r, 0.0)) * z if noisy else noised)
    return prog
