"""Classical linear multistep solvers (Adams-Bashforth on the model output), written on symbols
like methods.py: one model evaluation at a time, each returning a ProgramBuilder.

- LMS (k-diffusion's linear multistep): Adams-Bashforth weights for uneven steps, integrated
  from Lagrange polynomials in sigma; VE state x = x0 + sigma eps.
- PNDM / PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models"): the transfer
  function of their eq. 9 applied to an Adams-Bashforth combination of past noise predictions,
  after a Runge-Kutta (PRK) warm-up or, as Stable Diffusion ships it, a second-order start.

PNDM's state is the VP sample itself, x = sqrt(abar) x0 + sqrt(1 - abar) eps.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .methods import ve_conversion
from .program import Lin, ProgramBuilder

#: Adams-Bashforth weights by order, newest output first (PLMS, eq. 12 of Liu et al.)
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def pndm_transfer(abar: float, abar_prev: float, x: Lin, eps: Lin) -> Lin:
    """Liu et al.'s eq. 9: the DDIM step from level abar to abar_prev, given a noise estimate."""
    denom = abar * math.sqrt(1.0 - abar_prev) + math.sqrt(abar * (1.0 - abar) * abar_prev)
    return math.sqrt(abar_prev / abar) * x - ((abar_prev - abar) / denom) * eps


def _pndm_eps(prediction_type: str, abar: float, x: Lin, m: Lin) -> Lin:
    """The noise estimate from a (combined) model output read at state x, level abar."""
    if prediction_type == "epsilon":
        return m
    if prediction_type == "v_prediction":
        return math.sqrt(abar) * m + math.sqrt(1.0 - abar) * x
    raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon` or `v_prediction`")


def pndm(levels: Sequence[tuple[float, float]], *, prediction_type: str, prk_evals: int = 0) -> ProgramBuilder:
    """PNDM: ``prk_evals`` evaluations of pseudo Runge-Kutta (groups of four: the classical RK4
    weights 1/6, 1/3, 1/3, 1/6, every stage starting from the group's first state), then PLMS.

    ``levels[i] = (abar_from, abar_to)`` is the transfer evaluation i applies, as diffusers' counter
    rules pick them (fastdiff/solvers/scheduling/pndm.py); a run shorter than the warm-up ends
    inside it. History holds the raw model outputs
    (D = M), since a v-prediction output is converted after the combination, at the state it
    starts from. Without PRK, PLMS starts like Heun: evaluation 1 re-does step 0 from its start
    state with the mean of both outputs, and is then not part of the multistep history.
    """
    prog = ProgramBuilder()
    ets: list[Lin] = []  # outputs the multistep combination reads (diffusers' `ets`)
    start = first = None
    rk = Lin()
    for i, (ab, abp) in enumerate(levels):
        x, _, _, m = prog.eval(0.0, 1.0)
        if i < prk_evals:
            stage = i % 4
            if stage == 0:
                start, rk = x, m / 6
                ets.append(m)
                e = m
            elif stage < 3:
                rk = rk + m / 3
                e = m
            else:
                e = rk + m / 6
            prog.advance(pndm_transfer(ab, abp, start, _pndm_eps(prediction_type, ab, start, e)))
            continue
        if i == 1 and prk_evals == 0:
            # second-order start: the mean of both outputs, applied from the first state
            prog.advance(pndm_transfer(ab, abp, first, _pndm_eps(prediction_type, ab, first, (m + ets[-1]) / 2)))
            continue
        ets = ets[-3:] + [m]
        if i == 0:
            first = x
        w = ADAMS_BASHFORTH[len(ets)]
        e = sum((c * h for c, h in zip(w, reversed(ets))), Lin())
        prog.advance(pndm_transfer(ab, abp, x, _pndm_eps(prediction_type, ab, x, e)))
    return prog


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """Linear multistep weights from sigmas[i] to sigmas[i + 1]: the integrals over that interval of
    the Lagrange basis polynomials on the nodes sigmas[i], sigmas[i - 1], ..., sigmas[i - order + 1]
    (exact polynomial integration in float64)."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    out = []
    for j in range(order):
        basis = np.poly1d([1.0])
        for k in range(order):
            if k != j:
                basis = basis * np.poly1d([1.0, -nodes[k]]) / (nodes[j] - nodes[k])
        antiderivative = basis.integ()
        out.append(float(antiderivative(hi) - antiderivative(lo)))
    return out


def lms(sigmas: Sequence[float], *, prediction_type: str, order: int = 4, begin: int = 0) -> ProgramBuilder:
    """Linear multistep (k-diffusion's sample_lms) on the probability-flow ODE dx/dsigma = (x - x0) / sigma,
    VE state x = x0 + sigma eps.

    D is the derivative itself (a noise estimate), so the history holds exactly the last
    ``order - 1`` derivatives; with D = x0 every derivative would re-read an earlier state, whose
    elimination pulls in ever older outputs. x0 = x - sigma D where a caller needs it.
    As diffusers', the order at evaluation i is min(i + 1, order) counted from the schedule's start,
    and its weights are applied to the derivatives of this run only (fewer after a mid-schedule start).
    """
    if order < 1:
        raise ValueError(f"fastdiff: LMS order expected a positive integer, got {order}")
    prog = ProgramBuilder()
    derivs: list[Lin] = []
    for i in range(begin, len(sigmas) - 1):
        sigma = sigmas[i]
        a, b = ve_conversion(prediction_type, sigma)
        x, _, _, d = prog.eval((1.0 - a) / sigma, -b / sigma)
        derivs = (derivs + [d])[-order:]
        coeffs = lms_coefficients(sigmas, i, min(i + 1, order))
        prog.advance(x + sum((c * dv for c, dv in zip(coeffs, reversed(derivs))), Lin()))
    return prog


def ipndm(alphas: Sequence[float], sigmas: Sequence[float], *, begin: int = 0, carried: int = 0,
          trailing: int = 0) -> ProgramBuilder:
    """Improved PNDM (Zhang & Chen 2022, as k-diffusion and diffusers' IPNDMScheduler): Adams-Bashforth
    on the noise estimate e = sigma x + alpha m of a v-predicting model, then x0 = (x - sigma e) / alpha
    re-noised to the next level.

    ``alphas[i]``, ``sigmas[i]``: the level before evaluation i (one more for the end). At alpha = 0
    (the first, pure-noise level) e = x does not involve the model, and x0's division by
    max(alpha, 1e-8) meets an exact zero, as in diffusers.

    diffusers keeps its noise estimates until set_timesteps, so a second pass over the timesteps
    starts at full order from the first pass's estimates. ``carried`` placeholder evaluations
    before ``begin`` stand for estimates already in the history, ``trailing`` ones after the end
    read the last three (so every estimate is written to history); a caller drops their rows.
    """
    prog = ProgramBuilder()
    ets: list[Lin] = []  # the last three estimates, as D (read from history)

    def evaluate(level: tuple[float, float], nxt: tuple[float, float]) -> None:
        nonlocal ets
        (alpha, sigma), (alpha_next, sigma_next) = level, nxt
        x, m, _, d = prog.eval(sigma, alpha)
        w = ADAMS_BASHFORTH[len(ets) + 1]
        # this step's own estimate on x and m: at alpha = 0 it is x, and x0's division cancels exactly
        e = w[0] * (sigma * x + alpha * m) + sum((c * h for c, h in zip(w[1:], reversed(ets))), Lin())
        ets = (ets + [d])[-3:]
        x0 = (x - sigma * e) / max(alpha, 1e-8)
        prog.advance(alpha_next * x0 + sigma_next * e)

    levels = list(zip(alphas, sigmas))
    for _ in range(carried):
        evaluate(*_PLACEHOLDER)
    for i in range(begin, len(levels) - 1):
        evaluate(levels[i], levels[i + 1])
    for _ in range(trailing):
        evaluate(*_PLACEHOLDER)
    return prog


#: levels of IPNDM's placeholder steps: any move between two levels where every estimate is read
_PLACEHOLDER = ((0.6, 0.8), (0.8, 0.6))
