"""Singlestep DPM-Solver and DPM-Solver++ (Lu et al. 2022, "DPM-Solver" algorithms 1-2 and
"DPM-Solver++" section 4), in diffusers' layout, written on symbols like methods.py.

State: x = alpha x0 + sigma eps. Evaluations come in groups of 1, 2 or 3 (``orders``): the group's
first evaluation is an anchor, each later one an intermediate point, and the k-th step of a group
restarts from the anchor with the outputs at every point so far (the sample the intermediate steps
produced only serves as the model's input). The anchor is an earlier state, which program.py
eliminates through the deterministic steps since; a stochastic (SDE) group cannot be rewritten so,
because the anchor's step added noise: there the anchor's history entry is instead the exact
combination of anchor state and anchor output the group's second step reads (one entry can carry one
such combination, so the SDE variant stops at second order).
"""

from __future__ import annotations

import math
from typing import Sequence

from .program import Lin, ProgramBuilder

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")


def _lam(alpha: float, sigma: float) -> float:
    return math.inf if sigma == 0.0 else math.log(alpha) - math.log(sigma)


def effective_orders(orders: Sequence[int], begin: int) -> list[int]:
    """The order each evaluation from ``begin`` on runs at: its planned order, lowered where the run
    has not seen that many outputs yet (a run started mid-group, as img2img does)."""
    return [min(o, i - begin + 1) for i, o in enumerate(orders) if i >= begin]


def _terms(h: float, o: int, algorithm: str, solver_type: str) -> tuple[float, float, list[float]]:
    """For an order-o step of log-SNR length h from the anchor: (the anchor state's factor on top of
    the level ratio, the weight of D0, the weights of the difference terms: [D1] at second order,
    [D1_1] (midpoint) or [D1, D2] (heun) at third), the last two in units of alpha_t (data
    prediction) or sigma_t (noise prediction)."""
    heun = solver_type == "heun"
    if algorithm == "sde-dpmsolver++":  # third order is refused before this is reached
        om = 1.0 if math.isinf(h) else -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        d = [] if o == 1 else [om / (-2.0 * h) + 1.0 if heun else 0.5 * om]
        return (0.0 if math.isinf(h) else math.exp(-h)), om, d
    if algorithm == "dpmsolver++":
        e = -1.0 if math.isinf(h) else math.expm1(-h)  # e^{-h} - 1
        w_d1, w_mid, w_d2 = e / h + 1.0, -0.5 * e, -((e + h) / h**2 - 0.5)
    else:  # dpmsolver, on the noise prediction
        e = math.expm1(h)  # e^{h} - 1
        w_d1, w_mid, w_d2 = -(e / h - 1.0), -0.5 * e, -((e - h) / h**2 - 0.5)
    if o == 1:
        d = []
    elif o == 2:
        d = [w_d1 if heun else w_mid]
    else:
        d = [w_d1, w_d2] if heun else [w_d1]
    return 1.0, -e, d


def dpm_solver_singlestep(
    levels: Sequence[tuple[float, float]],
    convert: Sequence[tuple[float, float]],
    orders: Sequence[int],
    *,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    begin: int = 0,
) -> ProgramBuilder:
    """``levels[i] = (alpha_i, sigma_i)`` for the N evaluation points and the final one; ``convert[i]``
    the output conversion to x0 (++ algorithms) or to epsilon (dpmsolver); ``orders[i]`` the planned
    order of evaluation i (diffusers' ``get_order_list``: groups 1, 2[, 3])."""
    if algorithm_type not in ALGORITHMS:
        raise ValueError(f"fastdiff: algorithm_type expected one of {ALGORITHMS}, got {algorithm_type!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"fastdiff: solver_type expected 'midpoint' or 'heun', got {solver_type!r}")
    sde = algorithm_type.startswith("sde")
    n = len(levels) - 1
    lam = [_lam(al, si) for al, si in levels]
    eff = effective_orders(orders[:n], begin)
    for k, o in enumerate(eff):
        # A repeated or infinite level inside a group: its differences have no finite limit (diffusers: NaN).
        i = begin + k
        if o > 1 and not all(math.isfinite(lam[j]) and lam[j] != lam[i - o + 1] for j in range(i - o + 2, i + 2)):
            eff[k] = 1
            for q in range(k + 1, len(eff)):  # the group restarts here
                eff[q] = min(eff[q], q - k + 1)
    if sde and max(eff, default=1) > 2:
        raise ValueError("fastdiff: sde-dpmsolver++ singlestep runs at orders 1 and 2 only (a third-order step "
                         "would re-read its anchor, whose step added noise)")
    prog = ProgramBuilder()
    xs: dict[int, Lin] = {}
    ds: dict[int, Lin] = {}
    reads: dict[int, Lin] = {}  # SDE pairs: the anchor's history entry, as the pair's second step reads it
    for k, o in enumerate(eff):
        i = begin + k
        a, b = convert[i]
        if sde and o == 1 and k + 1 < len(eff) and eff[k + 1] == 2:
            r, c, w = _step_coefficients(levels, lam, i, i + 1, 2, algorithm_type, solver_type)
            p, q = r + (c[0] - w) * a, (c[0] - w) * b  # second step = r x_i + c0 X_i + w (X_{i+1} - X_i) + ...
            x, m, z, d = prog.eval(p, q, draw=True)
            xs[i], ds[i], reads[i] = x, a * x + b * m, d
        else:
            x, m, z, d = prog.eval(a, b, draw=sde)
            xs[i], ds[i] = x, d
        anchor = i - o + 1
        if lam[i + 1] == lam[anchor]:
            prog.advance(x)  # a repeated level: nothing to integrate
            continue
        r, c, w = _step_coefficients(levels, lam, anchor, i, o, algorithm_type, solver_type)
        if o == 1:
            out = r * x + c[0] * ds[i]
        elif o == 2 and anchor in reads:
            out = reads[anchor] + w * ds[i]
        elif o == 2:
            out = r * xs[anchor] + c[0] * ds[anchor] + w * (ds[i] - ds[anchor])
        else:
            out = r * xs[anchor] + c[0] * ds[anchor] + c[1] * (ds[anchor + 1] - ds[anchor]) + c[2] * (ds[i] - ds[anchor])
        if sde:
            h = lam[i + 1] - lam[anchor]
            out = out + (levels[i + 1][1] * math.sqrt(1.0 if math.isinf(h) else -math.expm1(-2.0 * h))) * z
        prog.advance(out)
    return prog


def _step_coefficients(levels, lam, anchor: int, i: int, o: int, algorithm: str, solver_type: str):
    """For the order-o step from the anchor to level i + 1 reading the outputs at anchor..i:
    (r, c, w) with the deterministic part ``r x_anchor + c0 D_anchor + sum_j c_j (D_j - D_anchor)``
    (c = [c0, c_{anchor+1}, ..., c_i]; w = c_i, the newest difference's weight)."""
    (alpha_t, sigma_t), (alpha_a, sigma_a) = levels[i + 1], levels[anchor]
    data = algorithm.endswith("++")
    h = lam[i + 1] - lam[anchor]
    scale, c0, dw = _terms(h, o, algorithm, solver_type)
    big = alpha_t if data else sigma_t
    r = (sigma_t / sigma_a if data else alpha_t / alpha_a) * scale
    if o == 1:
        return r, [big * c0], 0.0
    if o == 2:
        r0 = (lam[i] - lam[anchor]) / h
        w = big * dw[0] / r0
        return r, [big * c0, w], w
    # third order: D1_0 = (D_s1 - D0) / r1, D1_1 = (D_s0 - D0) / r0 (s1 = anchor + 1, s0 = i)
    r0, r1 = (lam[i] - lam[anchor]) / h, (lam[anchor + 1] - lam[anchor]) / h
    if solver_type == "midpoint":  # + dw0 D1_1
        c_s1, c_s0 = 0.0, dw[0] / r0
    else:  # + dw0 D1 + dw1 D2, D1 = (r0 D1_0 - r1 D1_1) / (r0 - r1), D2 = 2 (D1_1 - D1_0) / (r0 - r1)
        c_s1 = (dw[0] * r0 / (r0 - r1) - 2.0 * dw[1] / (r0 - r1)) / r1
        c_s0 = (-dw[0] * r1 / (r0 - r1) + 2.0 * dw[1] / (r0 - r1)) / r0
    return r, [big * c0, big * c_s1, big * c_s0], big * c_s0
