"""DPM-Solver-2 (Karras et al. 2022, the sampler k-diffusion calls sample_dpm_2) and its ancestral
variant, in diffusers' interleaved layout, written on symbols (see program.py).

Each step is two model evaluations: a first stage that takes an Euler step from sigma to the
log-midpoint sigma_mid, and a second that re-takes the whole step from the first stage's input
with the derivative evaluated at sigma_mid (ancestral: down to sigma_down, then fresh noise up to
the next level). The state is VE, ``x = x0 + sigma eps``.

``stored`` picks how the second stage reads the first stage's input y:

- False (fastdiff.sample): y is the first stage's state symbol, which the row compiler recovers
  from the second stage's state and the first stage's x0 (exact when the second stage is given
  the first stage's output, as a sampling loop does);
- True (the diffusers drop-in): the first stage writes y itself to history (D = y: a = 1, b = 0)
  and reads its model output through the row's z input, so the second stage reads exactly the
  sample the first was given, whatever sample it is given itself (diffusers' own tests pass the
  ``scale_model_input`` result, which differs from the previous step's output).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .methods import ve_conversion
from .program import ProgramBuilder


def stage_sigmas(k: int, first: bool, sigmas: Sequence[float], interpol: Sequence[float], *, ancestral: bool,
                 down: Optional[Sequence[float]] = None, up: Optional[Sequence[float]] = None) -> tuple[float, float, float, float]:
    """(sigma, sigma_mid, target, sigma_up) of evaluation k, indexed as diffusers' KDPM2 schedulers
    index their interleaved tables (sigma_mid is also the level the model reads in the second stage)."""
    if ancestral:
        if first:
            return sigmas[k], interpol[k], interpol[k], 0.0
        return sigmas[k - 1], interpol[k - 1], down[k - 1], up[k - 1]
    if first:
        return sigmas[k], interpol[k + 1], interpol[k + 1], 0.0
    return sigmas[k - 1], interpol[k], sigmas[k], 0.0


def kdpm2(
    sigmas: Sequence[float],
    interpol: Sequence[float],
    evaluations: int,
    *,
    prediction_type: str,
    begin: int = 0,
    ancestral: bool = False,
    down: Optional[Sequence[float]] = None,
    up: Optional[Sequence[float]] = None,
    stored: bool = False,
) -> ProgramBuilder:
    """Evaluations ``begin .. evaluations - 1``, alternating first and second stage from ``begin``."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"fastdiff: the KDPM2 samplers take epsilon or v_prediction outputs, got {prediction_type!r}")
    prog = ProgramBuilder()
    first = True
    y = None
    for k in range(begin, evaluations):
        sigma, mid, target, sigma_up = stage_sigmas(k, first, sigmas, interpol, ancestral=ancestral, down=down, up=up)
        if first:
            a, b = ve_conversion(prediction_type, sigma)
            if stored:
                x, _, m, d = prog.eval(1.0, 0.0)  # D = y, kept for the second stage; z carries the model output
                x0 = a * x + b * m
                y = d
            else:
                x, _, _, x0 = prog.eval(a, b)
                y = x
            # Euler to sigma_mid (the last step's sigma_mid is 0: x0 itself)
            prog.advance(x + ((target - sigma) / sigma) * (x - x0))
        else:
            a, b = ve_conversion(prediction_type, mid)
            x, _, z, x0 = prog.eval(a, b, draw=ancestral)
            out = y + ((target - sigma) / mid) * (x - x0)
            prog.advance(out + sigma_up * z if ancestral else out)
        first = not first
    return prog
