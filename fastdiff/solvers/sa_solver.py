"""SA-Solver (Xue et al. 2023): a stochastic Adams predictor-corrector for the SDE family whose
stochasticity is ``tau`` (0: the probability-flow ODE, 1: the reverse-time SDE), in diffusers'
SASolverScheduler form.

On log-SNR levels ``lambda = log(alpha / sigma)``, a step from level s to level t (h = lambda_t -
lambda_s) integrates a Lagrange interpolant of earlier converted outputs against the SDE's
exponential weight:

- data prediction (D = x0), r = 1 + tau^2:
  ``x_t = e^{-tau^2 h} (sigma_t / sigma_s) x + r alpha_t sum_k w_k D_k + sigma_t sqrt(1 - e^{-2 tau^2 h}) z``,
  ``w_k = int_{-h}^{0} l_k(lambda_t + u) e^{r u} du``;
- noise prediction (D = eps):
  ``x_t = (alpha_t / alpha_s) x - r sigma_t sum_k w_k D_k + tau sigma_t sqrt(e^{2h} - 1) z``,
  ``w_k = int_{-h}^{0} l_k(lambda_t + u) e^{-u} du`` (diffusers' form: its weight does not carry tau);

where l_k is the Lagrange basis polynomial of node k. The predictor (stochastic Adams-Bashforth)
interpolates the outputs at s and before; the corrector (Adams-Moulton) re-does the previous step
with the same noise draw and one more node, the output at t. Both are written with the weight's
exponent shifted to lambda_t (``e^{r lambda} = e^{r lambda_t} e^{r u}``), which turns diffusers'
``sigma_t e^{-tau^2 lambda_t} e^{r lambda_t}`` into ``alpha_t`` and keeps every number O(1).

The corrector starts from the state before the last predictor and reuses its noise, so the
corrected state is the predicted one with the predictor's interpolation part replaced by the
corrector's: ``x_i + G_corr - G_pred`` (the scaled state and the noise term are the same in both).
Each model evaluation is then one row: correct the state it is given, then predict the next one.
All coefficients are float64 here; diffusers computes them in float32.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .methods import _lambda
from .program import Lin, ProgramBuilder, lin_sum

#: interpolation orders diffusers' SASolverScheduler implements (its Lagrange table stops at cubics)
ORDERS = (1, 2, 3, 4)


def exp_moments(h: float, rate: float, count: int) -> list[float]:
    """``I_m = int_{-h}^{0} u^m e^{rate u} du`` for m < count, by parts from I_0 (exact in closed form)."""
    if h == 0.0:
        return [0.0] * count
    e = math.exp(-rate * h)
    out = [-math.expm1(-rate * h) / rate]
    for m in range(1, count):
        out.append(-((-h) ** m) * e / rate - m / rate * out[-1])
    return out


def lagrange_weights(nodes: Sequence[float], lam_t: float, h: float, rate: float) -> list[float]:
    """``int_{-h}^{0} l_k(lam_t + u) e^{rate u} du`` for each node k (l_k: Lagrange basis through ``nodes``)."""
    shifted = [n - lam_t for n in nodes]
    moments = exp_moments(h, rate, len(nodes))
    out = []
    for k, nk in enumerate(shifted):
        basis = np.poly1d([1.0])
        for j, nj in enumerate(shifted):
            if j != k:
                basis = basis * np.poly1d([1.0, -nj]) / (nk - nj)
        coeffs = basis.coeffs[::-1]  # ascending powers of u
        out.append(float(sum(c * moments[m] for m, c in enumerate(coeffs))))
    return out


def _transfer(levels, lam, s: int, t: int, tau: float, data: bool) -> tuple[float, float, float]:
    """(c_x, gradient scale, c_z) of a step from level index s to t."""
    (alpha_s, sigma_s), (alpha_t, sigma_t) = levels[s], levels[t]
    h = lam[t] - lam[s]
    r = 1.0 + tau * tau
    if data:
        return math.exp(-tau * tau * h) * sigma_t / sigma_s, r * alpha_t, sigma_t * math.sqrt(-math.expm1(-2.0 * tau * tau * h))
    return alpha_t / alpha_s, -r * sigma_t, tau * sigma_t * math.sqrt(math.expm1(2.0 * h))


def _gradient(lam, s: int, t: int, nodes: Sequence[int], tau: float, data: bool, *, corrector: bool) -> list[tuple[int, float]]:
    """(node, weight) for the outputs at level indices ``nodes`` (newest first) in the step s -> t,
    with diffusers' second-order modification in data-prediction mode (an O(h^3) term, UniPC-like)."""
    h = lam[t] - lam[s]
    r = 1.0 + tau * tau
    nodes = _distinct(lam, nodes)
    w = lagrange_weights([lam[n] for n in nodes], lam[t], h, r if data else -1.0)
    if data and len(nodes) == 2 and h != 0.0:
        tail = r * h + math.expm1(-r * h)  # r h - 1 + e^{-r h}
        extra = (h / 2.0 - tail / (r * r * h)) if corrector else (h * h / 2.0 - tail / (r * r)) / (lam[s] - lam[s - 1])
        w[0] += extra
        w[1] -= extra
    return list(zip(nodes, w))


def _distinct(lam, nodes: Sequence[int]) -> list[int]:
    """The longest prefix of ``nodes`` at distinct levels. A schedule with repeated levels (more
    inference steps than training timesteps) has no interpolant through them (diffusers divides
    by zero); the lower-order one through the distinct nodes is used instead."""
    out: list[int] = []
    for n in nodes:
        if any(lam[n] == lam[m] for m in out):
            break
        out.append(n)
    return out


def sa_solver(
    levels: Sequence[tuple[float, float]],
    convert: Sequence[tuple[float, float]],
    taus: Sequence[float],
    *,
    predictor_order: int = 2,
    corrector_order: int = 2,
    data_prediction: bool = True,
    lower_order_final: bool = True,
    begin: int = 0,
) -> ProgramBuilder:
    """The SA-Solver program over ``levels[i] = (alpha_i, sigma_i)`` (N evaluation levels and the final one).

    ``convert[i]``: the output conversion (a, b) to x0 (data prediction) or to eps; ``taus[i]``: the
    stochasticity of the predictor leaving level i (and of the corrector that re-does that step).
    Every evaluation draws noise, as diffusers' step does whatever tau is. Orders warm up from
    ``begin``; with ``lower_order_final`` they shrink near the end as diffusers'.
    """
    for name, o in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
        if o not in ORDERS:
            raise ValueError(f"fastdiff: SA-Solver {name} expected one of {ORDERS}, got {o}")
    n = len(levels) - 1
    lam = [_lambda(al, si) for al, si in levels]
    prog = ProgramBuilder()
    ds: dict[int, Lin] = {}
    grad_pred = Lin()  # the last predictor's interpolation part
    corr_order = 1
    for i in range(begin, n):
        a, b = convert[i]
        x, _, z, d = prog.eval(a, b, draw=True)
        ds[i] = d
        k = i - begin  # steps taken before this one (diffusers' lower_order_nums)
        sample = x
        if k > 0:
            w = _gradient(lam, i - 1, i, range(i, i - corr_order, -1), taus[i - 1], data_prediction, corrector=True)
            scale = _transfer(levels, lam, i - 1, i, taus[i - 1], data_prediction)[1]
            sample = x - grad_pred + scale * lin_sum(wj * ds[j] for j, wj in w)
        p = min(predictor_order, n - i) if lower_order_final else predictor_order
        c = min(corrector_order, n - i + 1) if lower_order_final else corrector_order
        p, corr_order = min(p, k + 1), min(c, k + 2)
        w = _gradient(lam, i, i + 1, range(i, i - p, -1), taus[i], data_prediction, corrector=False)
        cx, scale, cz = _transfer(levels, lam, i, i + 1, taus[i], data_prediction)
        grad_pred = scale * lin_sum(wj * ds[j] for j, wj in w)
        prog.advance(cx * sample + grad_pred + cz * z)
        for j in [j for j in ds if j <= i - 4]:  # no interpolant reaches further back than order 4
            del ds[j]
    return prog


def step_taus(tau_func: Callable, timesteps: Sequence) -> list[float]:
    """tau at each timestep, called as diffusers' step calls it (with the timestep it was given)."""
    return [float(tau_func(t)) for t in timesteps]
