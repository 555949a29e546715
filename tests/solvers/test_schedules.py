"""Noise schedules and sigma spacings (fastdiff/solvers/schedules.py)."""

import math

import numpy as np
import pytest
import torch

from fastdiff.solvers import schedules as S


def test_beta_schedules_have_their_defining_endpoints():
    lin = S.make_betas("linear", 1000, 1e-4, 0.02)
    assert lin.dtype == torch.float32 and math.isclose(lin[0], 1e-4, rel_tol=1e-6) and math.isclose(lin[-1], 0.02, rel_tol=1e-6)
    sd = S.make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert math.isclose(sd[0], 0.00085, rel_tol=1e-5) and math.isclose(sd[-1], 0.012, rel_tol=1e-5)
    assert torch.all(sd[1:] > sd[:-1])
    cos = S.make_betas("squaredcos_cap_v2", 1000)
    assert float(cos.max()) <= 0.999 + 1e-7 and float(cos[0]) < 1e-4
    abar = torch.cumprod(1 - cos.double(), 0)
    t = 0.5
    assert math.isclose(float(abar[499]), math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2, rel_tol=1e-3)
    with pytest.raises(ValueError, match="beta_schedule expected one of"):
        S.make_betas("sigmoid")


def test_zero_terminal_snr_rescaling_and_its_clamp():
    betas = S.rescale_zero_terminal_snr(S.make_betas("scaled_linear", 1000, 0.00085, 0.012))
    abar = S.make_alphas_cumprod(betas)
    original = S.make_alphas_cumprod(S.make_betas("scaled_linear", 1000, 0.00085, 0.012))
    assert float(abar[-1]) == 0.0
    assert math.isclose(float(abar[0]), float(original[0]), rel_tol=1e-6)  # the first level is kept
    clamped = S.make_alphas_cumprod(betas, clamp_last=True)
    assert float(clamped[-1]) == 2.0**-24 and torch.equal(clamped[:-1], abar[:-1])


@pytest.mark.parametrize("spacing,expected", [
    ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
    ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
])
def test_timestep_spacings(spacing, expected):
    assert S.spaced_timesteps(spacing, 10, 1000).tolist() == expected
    if spacing == "leading":  # steps_offset shifts leading spacing only
        assert S.spaced_timesteps(spacing, 10, 1000, steps_offset=1).tolist() == [t + 1 for t in expected]


def test_multistep_spacings_spread_over_steps_plus_one_points():
    assert S.multistep_timesteps("linspace", 4, 1000).tolist() == [999, 749, 500, 250]
    assert S.multistep_timesteps("leading", 4, 1000, steps_offset=1).tolist() == [801, 601, 401, 201]
    assert S.multistep_timesteps("trailing", 4, 1000).tolist() == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="timestep_spacing expected"):
        S.multistep_timesteps("uniform", 4)


def test_sigma_spacings_hit_their_ends_and_decrease():
    for f in (S.karras_sigmas, S.exponential_sigmas, S.beta_sigmas):
        s = f(0.03, 14.6, 12)
        assert len(s) == 12 and math.isclose(s[0], 14.6, rel_tol=1e-12) and math.isclose(s[-1], 0.03, rel_tol=1e-9)
        assert np.all(np.diff(s) < 0)
    k = S.karras_sigmas(0.03, 14.6, 5)
    roots = k ** (1 / 7)
    assert np.allclose(np.diff(roots), np.diff(roots)[0])  # evenly spaced in sigma^(1/rho)
    assert np.allclose(np.diff(np.log(S.exponential_sigmas(0.03, 14.6, 5))), math.log(0.03 / 14.6) / 4)


def test_sigma_to_t_inverts_the_training_sigmas():
    sig = S.vp_sigmas(S.make_alphas_cumprod(S.make_betas("scaled_linear", 1000, 0.00085, 0.012)))
    log_sigmas = np.log(sig)
    assert np.allclose(S.sigma_to_t(sig[[0, 10, 500, 999]], log_sigmas), [0, 10, 500, 999])
    mid = math.exp(0.5 * (log_sigmas[200] + log_sigmas[201]))
    assert math.isclose(float(S.sigma_to_t(np.array(mid), log_sigmas)), 200.5, rel_tol=1e-6)  # float32 log sigmas


def test_flow_shifts():
    s = np.array([1.0, 0.5, 0.1])
    assert np.allclose(S.shift_flow_sigmas(s, 1.0), s)
    assert np.allclose(S.shift_flow_sigmas(s, 3.0), [1.0, 0.75, 0.25])
    assert np.allclose(S.time_shift(0.0, s), s)  # mu = 0: e^0 = 1, no shift
    assert np.allclose(S.time_shift(1.0, s, "linear"), s)
    assert math.isclose(S.stretch_to_terminal(np.array([1.0, 0.5, 0.2]), 0.1)[-1], 0.1)
    assert math.isclose(S.flow_match_mu(256), 0.5) and math.isclose(S.flow_match_mu(4096), 1.15)
