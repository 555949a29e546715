"""DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"),
multistep log-rho form, written on symbols like methods.py.

State: x = alpha x0 + sigma eps. With rho = sigma / alpha the probability-flow ODE is exactly
d(x / alpha) = eps d rho, so a step integrates the noise prediction over rho; DEIS interpolates
the last ``order`` noise predictions with a Lagrange polynomial in log rho and integrates each
basis polynomial in closed form.
"""

from __future__ import annotations

import math
from typing import Sequence

from .program import Lin, ProgramBuilder


def _basis_integral_2(t: float, b: float, c: float) -> float:
    """An antiderivative in rho of the linear Lagrange basis (log rho - log c) / (log b - log c)."""
    lt, lb, lc = math.log(t), math.log(b), math.log(c)
    return t * (lt - lc - 1.0) / (lb - lc)


def _basis_integral_3(t: float, b: float, c: float, d: float) -> float:
    """An antiderivative in rho of the quadratic basis (log rho - log c)(log rho - log d) / ((log b - log c)(log b - log d))."""
    lt, lb, lc, ld = math.log(t), math.log(b), math.log(c), math.log(d)
    return t * ((lt - lc) * (lt - ld) - (2.0 * lt - lc - ld) + 2.0) / ((lb - lc) * (lb - ld))


def deis_weights(rhos: Sequence[float], i: int, order: int) -> list[float]:
    """The weights of the noise predictions at levels i, i-1, ... (newest first) for the step from
    rhos[i] to rhos[i+1]: the integrals over that interval of the Lagrange basis in log rho."""
    t, s = rhos[i + 1], rhos[i]
    if order == 1:
        return [t - s]
    nodes = [rhos[i - k] for k in range(order)]
    f = _basis_integral_2 if order == 2 else _basis_integral_3
    out = []
    for k in range(order):
        others = [nodes[j] for j in range(order) if j != k]
        out.append(f(t, nodes[k], *others) - f(s, nodes[k], *others))
    return out


def deis(
    levels: Sequence[tuple[float, float]],
    convert: Sequence[tuple[float, float]],
    *,
    order: int = 2,
    lower_order_final: bool = True,
    begin: int = 0,
) -> ProgramBuilder:
    """Multistep DEIS in diffusers' layout: orders 1-3, warm-up from first order, the last (two)
    steps of a run under 15 steps at lower order. ``levels[i] = (alpha_i, sigma_i)`` for the N
    evaluation points and the final one; ``convert[i]`` the output conversion to the noise
    prediction. Order 1 is DDIM; a level repeated in the history drops the order (its basis has no
    finite limit)."""
    if order not in (1, 2, 3):
        raise ValueError(f"fastdiff: DEIS solver_order expected 1, 2 or 3, got {order}")
    n = len(levels) - 1
    rhos = [si / al for al, si in levels]
    prog = ProgramBuilder()
    eps: list[Lin] = []
    for i in range(begin, n):
        x, _, _, d = prog.eval(*convert[i])
        eps.append(d)
        taken = i - begin
        short = lower_order_final and n < 15
        o = 1 if (order == 1 or taken < 1 or (i == n - 1 and short)) else \
            2 if (order == 2 or taken < 2 or (i == n - 2 and short)) else 3
        while o > 1 and len({rhos[i - k] for k in range(o)}) < o:
            o -= 1
        (alpha_s, _), (alpha_t, _) = levels[i], levels[i + 1]
        if rhos[i + 1] == rhos[i]:  # a repeated final level: nothing to integrate
            prog.advance((alpha_t / alpha_s) * x)
            continue
        w = deis_weights(rhos, i, o)
        prog.advance(alpha_t * (x / alpha_s + sum((wk * ek for wk, ek in zip(w, reversed(eps[-o:]))), Lin())))
    return prog
