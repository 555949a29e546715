"""DPM-Solver++(2S) SDE (Lu et al. 2022; k-diffusion's sample_dpmpp_sde), diffusers' interleaved
layout, written on symbols (see program.py). VE state ``x = x0 + sigma eps``.

A step from sigma to sigma_next is two model evaluations. The first takes an ancestral
exponential-integrator step to the log-midpoint sigma_mid = sqrt(sigma sigma_next): down to
sigma_down with the x0 at sigma, ``(d / s) x + (1 - d / s) x0``, then noise up by sigma_up. The
second re-takes the whole step from the first stage's input y with the x0 at sigma_mid. The noise
is Brownian: both stages' increments come from one Brownian tree (brownian.py), so the second
stage's overlaps the first's.

The second stage reads y and its noise through the row's z input, which its caller forms on the
host in one pass: ``z = w + gamma y`` (see dpmpp_sde and second_stage_gamma). A
fused row cannot recover y from the second stage's state (the first stage was noisy), and the
drop-in scheduler must step from exactly the sample it was given, as diffusers does.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .methods import ve_conversion
from .program import ProgramBuilder


def stage_levels(k: int, first: bool, sigmas: Sequence[float]) -> tuple[float, float, float]:
    """(sigma, sigma_mid, target) of evaluation k in diffusers' interleaved table."""
    sigma, nxt = (sigmas[k], sigmas[k + 1]) if first else (sigmas[k - 1], sigmas[k])
    mid = math.sqrt(sigma * nxt)
    return sigma, mid, mid if first else nxt


def ancestral(sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """(sigma_up, sigma_down) of an ancestral step from sigma_from to sigma_to."""
    up = min(sigma_to, math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0)))
    return up, math.sqrt(max(sigma_to**2 - up**2, 0.0))


def second_stage_gamma(sigma: float, target: float, s_noise: float, noise_scale: float) -> float:
    """gamma of the second stage's z input ``w + gamma y`` (see dpmpp_sde); 0 means z = y."""
    up, down = ancestral(sigma, target)
    k = s_noise * up * noise_scale
    return (down / sigma) / k if k != 0.0 else 0.0


def dpmpp_sde(
    sigmas: Sequence[float],
    evaluations: int,
    noise_scale: Callable[[int, bool], float],
    *,
    prediction_type: str,
    begin: int = 0,
    s_noise: float = 1.0,
) -> ProgramBuilder:
    """Evaluations ``begin .. evaluations - 1``, alternating first and second stage from ``begin``;
    a first stage whose next level is 0 is a plain Euler step to x0 (no second stage follows).

    The noise each evaluation k reads is a raw Brownian increment w, ``noise_scale(k, first)`` times which
    is unit variance (folded in here, so the increment needs no pass of its own). The second stage's
    z is ``w + gamma y`` (second_stage_gamma; just y when no noise is added), formed by the caller.
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"fastdiff: DPM-Solver-SDE takes epsilon or v_prediction outputs, got {prediction_type!r}")
    prog = ProgramBuilder()
    first = True
    for k in range(begin, evaluations):
        sigma, mid, target = stage_levels(k, first, sigmas)
        up, down = ancestral(sigma, target)
        c, kz = down / sigma, s_noise * up * noise_scale(k, first)
        if first:
            a, b = ve_conversion(prediction_type, sigma)
            final = sigmas[k + 1] == 0.0
            x, _, z, x0 = prog.eval(a, b, draw=not final)
            if final:
                prog.advance(x0)
                continue  # the run ends here; no second stage
            prog.advance(c * x + (1.0 - c) * x0 + kz * z)
        else:
            a, b = ve_conversion(prediction_type, mid)
            _, _, z, x0 = prog.eval(a, b, draw=True)
            prog.advance((1.0 - c) * x0 + (kz * z if kz != 0.0 else c * z))
        first = not first
    return prog
