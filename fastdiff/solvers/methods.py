"""Each sampler's update, written on symbols (see program.py), one model evaluation at a time.

Every function here takes the host-side schedule (float64 lists) and returns a ProgramBuilder in
the solver's own coordinates:

- VP discrete (DDPM, DDIM, LCM) and multistep (DPM-Solver++, UniPC): ``x = alpha x0 + sigma eps``
  with ``alpha^2 + sigma^2 = 1`` (or ``x = (1 - s) x0 + s eps`` for flow-matching levels);
- the Euler family (Euler, Euler-ancestral, Heun): ``x = x0 + sigma eps`` (Karras et al.'s VE
  form; the model sees ``x / sqrt(1 + sigma^2)``);
- flow-matching Euler: ``x = (1 - s) x0 + s eps``.

A caller builds the table in whatever coordinates its state lives in (ProgramBuilder.build(scale)).
``begin`` is the index of the first step taken: multistep warm-up counts from there while
"last step" rules use absolute indices, as diffusers' schedulers do when started mid-schedule.

Where diffusers divides by zero (a final sigma of 0 for UniPC's bh1 variant or for any multistep
order above 1, zero-SNR epsilon models, two equal consecutive sigmas) the limits are taken here:
see the comments at each place.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .program import Lin, ProgramBuilder, lin_sum
from .rows import x0_conversion

# ---------------------------------------------------------------------------------------------
# VP discrete-time samplers (state: x = sqrt(abar) x0 + sqrt(1 - abar) eps)
# ---------------------------------------------------------------------------------------------
def ddpm(
    abar: Sequence[float],
    abar_prev: Sequence[float],
    *,
    prediction_type: str,
    variance_type: str = "fixed_small",
    draws: Sequence[bool],
) -> ProgramBuilder:
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7): the posterior mean plus its noise.

    ``fixed_large`` uses beta_t as the variance; other fixed types (as in diffusers, any name but
    the learned ones) the posterior variance. Learned variances need the model's extra channels."""
    if variance_type in ("learned", "learned_range"):
        raise ValueError(f"fastdiff: DDPM variance_type {variance_type!r} (learned) is not supported")
    prog = ProgramBuilder()
    for ab, abp, draw in zip(abar, abar_prev, draws):
        a, b = x0_conversion(prediction_type, math.sqrt(ab), math.sqrt(1.0 - ab))
        x, _, z, d = prog.eval(a, b, draw=draw)
        c0, c1, std = _ddpm_scalars(ab, abp, variance_type)
        prog.advance(c0 * d + c1 * x + (std * z if draw else Lin()))
    return prog


def _ddpm_scalars(ab: float, abp: float, variance_type: str) -> tuple[float, float, float]:
    """The posterior mean's coefficients (on x0 and x) and the noise scale, in float32 as diffusers
    computes them: ``beta_t = 1 - abar_t / abar_prev`` loses ~1e-4 relative at small t there, and a
    drop-in has to lose the same (the float64 values differ from diffusers' by ~1e-4 at t = 1)."""
    f = np.float32
    ab32, abp32 = f(ab), f(abp)
    alpha_t = ab32 / abp32
    beta_t = f(1.0) - alpha_t
    c0 = abp32 ** f(0.5) * beta_t / (f(1.0) - ab32)
    c1 = alpha_t ** f(0.5) * (f(1.0) - abp32) / (f(1.0) - ab32)
    var = max((f(1.0) - abp32) / (f(1.0) - ab32) * beta_t, f(1e-20))
    std = beta_t ** f(0.5) if variance_type == "fixed_large" else var ** f(0.5)
    return float(c0), float(c1), float(std)


def ddim(
    abar: Sequence[float],
    abar_prev: Sequence[float],
    *,
    prediction_type: str,
    eta: float = 0.0,
) -> ProgramBuilder:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
    prog = ProgramBuilder()
    for ab, abp in zip(abar, abar_prev):
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        a, b = x0_conversion(prediction_type, alpha, sigma)
        x, _, z, d = prog.eval(a, b, draw=eta > 0)
        var = (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)
        std = eta * math.sqrt(max(var, 0.0))
        eps = (x - alpha * d) / sigma
        prog.advance(math.sqrt(abp) * d + math.sqrt(max(1.0 - abp - std * std, 0.0)) * eps + (std * z if eta > 0 else Lin()))
    return prog


def lcm(
    abar: Sequence[float],
    abar_prev: Sequence[float],
    c_skip: Sequence[float],
    c_out: Sequence[float],
    *,
    prediction_type: str,
    last: int,
    store_denoised: bool = False,
) -> ProgramBuilder:
    """Latent consistency model multistep sampling (Luo et al. 2023, algorithm 1).

    denoised = c_skip x + c_out x0; the next state re-noises it to the next level, except at
    index ``last``. ``store_denoised`` makes D the denoised sample (so it can be read back).
    """
    prog = ProgramBuilder()
    for n, (ab, abp, cs, co) in enumerate(zip(abar, abar_prev, c_skip, c_out)):
        a, b = x0_conversion(prediction_type, math.sqrt(ab), math.sqrt(1.0 - ab))
        final = n == last
        if store_denoised:
            x, _, z, d = prog.eval(cs + co * a, co * b, draw=not final)
            den = d
        else:
            x, _, z, d = prog.eval(a, b, draw=not final)
            den = co * d + cs * x
        prog.advance(den if final else math.sqrt(abp) * den + math.sqrt(1.0 - abp) * z)
    return prog


# ---------------------------------------------------------------------------------------------
# Euler family (state: x = x0 + sigma eps; the model sees x / sqrt(1 + sigma^2))
# ---------------------------------------------------------------------------------------------
def ve_x0(prediction_type: str, x: Lin, m: Lin, sigma: float) -> Lin:
    """x0 from a VE state x at level sigma, as diffusers' Euler-family schedulers compute it."""
    if prediction_type == "epsilon":
        return x - sigma * m
    if prediction_type == "v_prediction":
        return m * (-sigma / math.sqrt(sigma * sigma + 1.0)) + x / (sigma * sigma + 1.0)
    if prediction_type == "sample":
        return m
    raise ValueError(f"fastdiff: the Euler-family samplers take epsilon, v_prediction or sample outputs, got {prediction_type!r}")


def ve_conversion(prediction_type: str, sigma: float) -> tuple[float, float]:
    """(a, b) of ve_x0 for a plain state (the D written to history)."""
    e = ve_x0(prediction_type, Lin.of("x", 0), Lin.of("m", 0), sigma)
    return e.coef(("x", 0)), e.coef(("m", 0))


def churn(sigma: float, n: int, s_churn: float, s_tmin: float, s_tmax: float) -> tuple[float, float]:
    """(gamma, sigma_hat): Karras et al.'s churn (algorithm 2) lifts level sigma to sigma (1 + gamma)."""
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    return gamma, sigma * (gamma + 1)


def euler(
    sigmas: Sequence[float],
    *,
    prediction_type: str,
    begin: int = 0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> ProgramBuilder:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, algorithm 2 with churn).

    With churn, the state is first lifted to sigma_hat = sigma (1 + gamma) with fresh noise; like
    diffusers, the model output evaluated at sigma is then read at sigma_hat.
    """
    prog = ProgramBuilder()
    n = len(sigmas) - 1
    for i in range(begin, n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma, sigma_hat = churn(sigma, n, s_churn, s_tmin, s_tmax)
        a, b = ve_conversion(prediction_type, sigma)
        x, m, z, _ = prog.eval(a, b, draw=gamma > 0)
        x_hat = x + (s_noise * math.sqrt(sigma_hat**2 - sigma**2)) * z if gamma > 0 else x
        x0 = ve_x0(prediction_type, x_hat, m, sigma_hat if prediction_type == "epsilon" else sigma)
        prog.advance(x_hat + (sigma_next - sigma_hat) * ((x_hat - x0) / sigma_hat))
    return prog


def euler_ancestral(sigmas: Sequence[float], *, prediction_type: str, begin: int = 0) -> ProgramBuilder:
    """Euler-ancestral (k-diffusion): an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    prog = ProgramBuilder()
    for i in range(begin, len(sigmas) - 1):
        sigma, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = math.sqrt(max(sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2, 0.0))
        sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
        a, b = ve_conversion(prediction_type, sigma)
        x, m, z, d = prog.eval(a, b, draw=True)
        prog.advance(x + (sigma_down - sigma) * ((x - d) / sigma) + sigma_up * z)
    return prog


def heun(sigmas: Sequence[float], *, prediction_type: str, begin: int = 0) -> ProgramBuilder:
    """Heun's second-order method (Karras et al. 2022, algorithm 1), diffusers' interleaved layout.

    ``sigmas`` is the interleaved list [s0, s1, s1, s2, s2, ..., s_{n-1}, s_{n-1}, 0]: evaluations
    alternate between an Euler predictor and a trapezoidal corrector. The predictor's converted
    output is not x0 but the corrector's base, ``x + dt/2 (x - x0) / sigma`` (see heun_base), kept
    in history: the corrector reads it and the state it is given, as diffusers' corrector reads the
    sample stored at the predictor and the sample passed to it (they differ when a caller passes
    the scaled model input, as diffusers' own tests and DiTPipeline do).
    """
    prog = ProgramBuilder()
    first_order = True
    base = dt = None
    for i in range(begin, len(sigmas) - 1):
        if first_order:
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            dt = sigma_next - sigma
            x, _, _, base = prog.eval(*heun_base(prediction_type, sigma, dt))
            prog.advance(2.0 * base - x)  # x + dt (x - x0) / sigma
        else:
            sigma_next = sigmas[i]
            a, b = ve_conversion(prediction_type, sigma_next)
            x, _, _, d = prog.eval(a, b)
            prog.advance(base + (dt / (2.0 * sigma_next)) * (x - d))
        first_order = not first_order
    return prog


def heun_base(prediction_type: str, sigma: float, dt: float) -> tuple[float, float]:
    """(a, b) with ``x + dt/2 (x - x0) / sigma = a x + b m``: Heun's corrector base from the predictor's input."""
    a, b = ve_conversion(prediction_type, sigma)
    k = dt / (2.0 * sigma)
    return 1.0 + k - k * a, -k * b


# ---------------------------------------------------------------------------------------------
# Multistep exponential integrators (state: x = alpha x0 + sigma eps)
# ---------------------------------------------------------------------------------------------
def _lambda(alpha: float, sigma: float) -> float:
    return math.inf if sigma == 0.0 else math.log(alpha) - math.log(sigma)


def dpm_solver(
    levels: Sequence[tuple[float, float]],
    convert: Sequence[tuple[float, float]],
    *,
    order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    final_zero: bool = True,
    begin: int = 0,
) -> ProgramBuilder:
    """DPM-Solver++ (Lu et al. 2022, multistep 1st-3rd order; SDE variant from their section 5) and
    the original DPM-Solver (data = epsilon) in diffusers' multistep form.

    ``levels[i] = (alpha_i, sigma_i)`` for the N evaluation points and the final one (N + 1 entries);
    ``convert[i]`` the output conversion to x0 (++ algorithms) or to epsilon.
    """
    if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"):
        raise ValueError(f"fastdiff: algorithm_type {algorithm_type!r} is not supported")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"fastdiff: solver_type expected 'midpoint' or 'heun', got {solver_type!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"fastdiff: solver_order expected 1, 2 or 3, got {order}")
    sde = algorithm_type.startswith("sde")
    data = algorithm_type.endswith("++")
    n = len(levels) - 1
    lam = [_lambda(al, si) for al, si in levels]
    prog = ProgramBuilder()
    ds: list[Lin] = []
    for i in range(begin, n):
        a, b = convert[i]
        x, _, z, d = prog.eval(a, b, draw=sde)
        ds.append(d)
        taken = min(i - begin, order)
        last = i == n - 1
        low_final = last and (euler_at_final or (lower_order_final and n < 15) or final_zero)
        low_second = i == n - 2 and lower_order_final and n < 15
        o = 1 if (order == 1 or taken < 1 or low_final) else 2 if (order == 2 or taken < 2 or low_second) else 3
        # Multistep differences divide by the previous log-SNR gaps: with a repeated level or an
        # infinite step (final sigma 0) the higher-order terms have no finite limit, so drop order.
        while o > 1 and not _gaps_ok(lam, i, o):
            o -= 1
        prog.advance(_dpm_step(lam, levels, i, o, ds, x, z, sde=sde, data=data, heun=solver_type == "heun"))
    return prog


def _gaps_ok(lam: list[float], i: int, o: int) -> bool:
    gaps = [lam[i + 1] - lam[i]] + [lam[i - k] - lam[i - k - 1] for k in range(o - 1)]
    return all(math.isfinite(g) and g != 0.0 for g in gaps)


def _dpm_step(lam, levels, i, o, ds, x, z, *, sde, data, heun) -> Lin:
    (alpha_s, sigma_s), (alpha_t, sigma_t) = levels[i], levels[i + 1]
    h = lam[i + 1] - lam[i]
    if h == 0.0:  # a repeated level: nothing to integrate (diffusers gets 0/0 for 3rd order)
        return x
    inf = not math.isfinite(h)
    d0 = ds[-1]
    if o == 1:
        big_d = []
    elif o == 2:
        r0 = (lam[i] - lam[i - 1]) / h
        big_d = [(d0 - ds[-2]) / r0]
    else:
        r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
        d1_0, d1_1 = (d0 - ds[-2]) / r0, (ds[-2] - ds[-3]) / r1
        big_d = [d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)]
    if data:
        # phi = 1 - e^{-h} (ODE) or 1 - e^{-2h} (SDE); at a final sigma of 0, e^{-h} = 0.
        em1 = -1.0 if inf else math.expm1(-h)  # e^{-h} - 1
        if not sde:
            out = (sigma_t / sigma_s) * x - (alpha_t * em1) * d0
            if o == 2:
                c1 = -0.5 * alpha_t * em1 if not heun else alpha_t * (em1 / h + 1.0)
                out = out + c1 * big_d[0]
            elif o == 3:
                out = out + (alpha_t * (em1 / h + 1.0)) * big_d[0] - (alpha_t * ((em1 + h) / h**2 - 0.5)) * big_d[1]
        else:
            em2 = -1.0 if inf else math.expm1(-2.0 * h)  # e^{-2h} - 1
            out = (sigma_t / sigma_s * (0.0 if inf else math.exp(-h))) * x - (alpha_t * em2) * d0
            if o == 2:
                c1 = -0.5 * alpha_t * em2 if not heun else alpha_t * (em2 / (2.0 * h) + 1.0)
                out = out + c1 * big_d[0]
            elif o == 3:
                out = out + (alpha_t * (em2 / (2.0 * h) + 1.0)) * big_d[0] \
                    + (alpha_t * ((-em2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * big_d[1]
            out = out + (sigma_t * math.sqrt(-em2)) * z
        return out
    # Noise-prediction form: needs a positive final sigma (diffusers refuses final_sigmas_type "zero").
    if inf:
        raise ValueError("fastdiff: algorithm_type dpmsolver / sde-dpmsolver needs final_sigmas_type='sigma_min'")
    ep1 = math.expm1(h)  # e^{h} - 1
    if not sde:
        out = (alpha_t / alpha_s) * x - (sigma_t * ep1) * d0
        if o == 2:
            c1 = -0.5 * sigma_t * ep1 if not heun else -sigma_t * (ep1 / h - 1.0)
            out = out + c1 * big_d[0]
        elif o == 3:
            out = out - (sigma_t * (ep1 / h - 1.0)) * big_d[0] - (sigma_t * ((ep1 - h) / h**2 - 0.5)) * big_d[1]
        return out
    if o == 3:
        raise ValueError("fastdiff: sde-dpmsolver has no third-order update (diffusers neither)")
    out = (alpha_t / alpha_s) * x - (2.0 * sigma_t * ep1) * d0
    if o == 2:
        c1 = -sigma_t * ep1 if not heun else -2.0 * sigma_t * (ep1 / h - 1.0)
        out = out + c1 * big_d[0]
    return out + (sigma_t * math.sqrt(math.expm1(2.0 * h))) * z


def unipc(
    levels: Sequence[tuple[float, float]],
    convert: Sequence[tuple[float, float]],
    *,
    order: int = 2,
    solver_type: str = "bh2",
    predict_x0: bool = True,
    lower_order_final: bool = True,
    disable_corrector: Sequence[int] = (),
    begin: int = 0,
) -> ProgramBuilder:
    """UniPC (Zhao et al. 2023): UniP-p predictor plus the UniC corrector, B(h) = h (bh1) or e^h - 1 (bh2).

    The corrector re-does the previous step from the sample it started at (``last``) with the new
    model output; that sample is a symbol of the previous evaluation, which program.py rewrites in
    terms of the current state: x_i = p0 last + sum_k p_k D_k with p0 = sigma_i / sigma_{i-1} > 0.
    """
    if solver_type not in ("bh1", "bh2"):
        raise ValueError(f"fastdiff: UniPC solver_type expected 'bh1' or 'bh2', got {solver_type!r}")
    if order < 1:
        raise ValueError(f"fastdiff: solver_order expected >= 1, got {order}")
    n = len(levels) - 1
    lam = [_lambda(al, si) for al, si in levels]
    prog = ProgramBuilder()
    ds: list[Lin] = []
    last: Optional[Lin] = None
    last_order = 1
    for i in range(begin, n):
        a, b = convert[i]
        x, _, _, d = prog.eval(a, b)
        sample = x
        if i > begin and (i - 1) not in disable_corrector:
            # Corrector for the step i-1 -> i, with model output d at i (order of that predictor).
            sample = _unipc_update(lam, levels, i - 1, i, last_order, ds, last, d, solver_type, predict_x0, corrector=True)
        ds.append(d)
        this = min(order, n - i) if lower_order_final else order
        this = min(this, i - begin + 1)
        # A final sigma of 0 makes every higher-order difference infinite (diffusers: NaN); order 1 is its limit.
        while this > 1 and not _gaps_ok(lam, i, this):
            this -= 1
        last, last_order = sample, this
        prog.advance(_unipc_update(lam, levels, i, i + 1, this, ds, sample, None, solver_type, predict_x0, corrector=False))
    return prog


def _unipc_update(lam, levels, s, t, o, ds, x, model_t, solver_type, predict_x0, *, corrector) -> Lin:
    """Predictor (corrector=False) or corrector from level s to level t; ds[-1] is the output at s
    (for the corrector, ds[-1] is still the output at s and model_t the one at t)."""
    (alpha_s, sigma_s), (alpha_t, sigma_t) = levels[s], levels[t]
    h = lam[t] - lam[s]
    if h == 0.0:
        return x
    inf = not math.isfinite(h)
    m0 = ds[-1]
    hh = -h if predict_x0 else h
    if inf:
        # sigma_t = 0 (only reachable by the predictor at order 1): x0 mode gives x_t = m0 exactly.
        if not predict_x0:
            return (alpha_t / alpha_s) * x - (alpha_t * sigma_s / alpha_s - sigma_t) * m0
        return alpha_t * m0 + 0.0 * x
    h_phi_1 = math.expm1(hh)
    base = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0 if predict_x0 else (alpha_t / alpha_s) * x - (sigma_t * h_phi_1) * m0
    scale = alpha_t if predict_x0 else sigma_t
    rks, d1s = [], []
    for k in range(1, o):
        si = s - k
        rk = (lam[si] - lam[s]) / h
        rks.append(rk)
        d1s.append((ds[-(k + 1)] - m0) / rk)
    if not corrector and not d1s:
        return base
    rks.append(1.0)
    b_h = hh if solver_type == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    fact = 1
    R, bvec = [], []
    for k in range(1, o + 1):
        R.append([r ** (k - 1) for r in rks])
        bvec.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R, bvec = np.array(R, dtype=np.float64), np.array(bvec, dtype=np.float64)
    if not corrector:
        rhos = [0.5] if o == 2 else list(np.linalg.solve(R[:-1, :-1], bvec[:-1]))
        return base - (scale * b_h) * lin_sum(r * dk for r, dk in zip(rhos, d1s))
    rhos = [0.5] if o == 1 else list(np.linalg.solve(R, bvec))
    res = lin_sum(r * dk for r, dk in zip(rhos[:-1], d1s)) + rhos[-1] * (model_t - m0)
    return base - (scale * b_h) * res


# ---------------------------------------------------------------------------------------------
# Flow matching (state: x = (1 - s) x0 + s eps; the model predicts v = eps - x0)
# ---------------------------------------------------------------------------------------------
def flow_euler(sigmas: Sequence[float], *, stochastic: bool = False, begin: int = 0) -> ProgramBuilder:
    """Euler on the rectified-flow ODE dx/ds = v; ``stochastic`` re-noises x0 to the next level instead.

    Nothing is read back from history, so D is the velocity itself (a = 0, b = 1): the rows stay
    valid at s = 0, where x0 = x - s v would not determine v (inverted sigmas start there).
    """
    prog = ProgramBuilder()
    for i in range(begin, len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x, m, z, _ = prog.eval(0.0, 1.0, draw=stochastic)
        prog.advance((1.0 - s_next) * (x - s * m) + s_next * z if stochastic else x + (s_next - s) * m)
    return prog
