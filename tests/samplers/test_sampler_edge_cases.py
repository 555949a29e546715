"""Where diffusers' schedulers break, fastdiff's give finite, sensible results. Each test names the
case it guards, shows diffusers' failure, and pins down what fastdiff returns instead."""

import math

import pytest
import torch

import fastdiff.schedulers as fs
from tests.samplers.harness import SD, compare, quiet_diffusers, toy_model, trajectory

diffusers = pytest.importorskip("diffusers")


def _run_pair(name, cfg, steps, **kw):
    quiet_diffusers()
    ref = getattr(diffusers, name)(**cfg)
    ours = getattr(fs, name).from_config(ref.config)
    xs_ref, _ = trajectory(ref, steps=steps, **kw)
    xs, _ = trajectory(ours, steps=steps, **kw)
    return ref, ours, xs_ref, xs


# ---------------------------------------------------------------------------------------------
# Zero terminal SNR with an epsilon model (Lin et al. 2024 rescaling, t = T has alpha = 0)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler", "LCMScheduler"])
def test_zero_snr_epsilon_is_finite_by_clamping_the_last_alpha(name):
    """diffusers' DDIM / DDPM / LCM divide eps-model outputs by alpha_T = 0 (NaN from the first step);
    fastdiff clamps abar_T to 2**-24 as diffusers' own Euler / DPM / UniPC schedulers do, and then
    agrees with diffusers run on that clamped schedule."""
    cfg = dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="epsilon")
    if name != "LCMScheduler":
        cfg["clip_sample"] = False
    steps = 4 if name == "LCMScheduler" else 6
    ref, ours, xs_ref, xs = _run_pair(name, cfg, steps)
    assert int(ref.timesteps[0]) == 999 and not torch.isfinite(xs_ref[-1]).all()
    assert all(torch.isfinite(x).all() for x in xs)
    assert float(ours.alphas_cumprod[-1]) == 2.0**-24

    clamped = getattr(diffusers, name)(**cfg)
    clamped.alphas_cumprod[-1] = 2.0**-24
    xs_clamped, _ = trajectory(clamped, steps=steps)
    for a, b in zip(xs, xs_clamped):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_zero_snr_v_prediction_keeps_the_exact_schedule():
    """With v-prediction (the pairing the rescaling is meant for) nothing is clamped: diffusers' numbers."""
    ours = fs.DDIMScheduler(**SD, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert float(ours.alphas_cumprod[-1]) == 0.0


# ---------------------------------------------------------------------------------------------
# A final sigma of 0 in UniPC
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver_type,lower_order_final", [("bh1", True), ("bh1", False), ("bh2", False)])
def test_unipc_final_sigma_zero_takes_the_first_order_limit(solver_type, lower_order_final):
    """diffusers: bh1's B(h) = -h is -inf at sigma = 0 (inf * 0 = NaN even at order 1), and any order
    above 1 divides by an infinite step. fastdiff takes the last step at order 1, whose limit is
    x_final = the model's x0 prediction at the last evaluation; all earlier steps match diffusers."""
    cfg = dict(SD, solver_type=solver_type, lower_order_final=lower_order_final, solver_order=2)
    ref, ours, xs_ref, xs = _run_pair("UniPCMultistepScheduler", cfg, 7)
    assert not torch.isfinite(xs_ref[-1]).all()
    for a, b in zip(xs[:-1], xs_ref[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # the last evaluation sees xs[-2] at sigmas[-2]; its x0 prediction is the result
    sigma = float(ours.sigmas[-2])
    alpha, sig = 1 / math.sqrt(1 + sigma**2), sigma / math.sqrt(1 + sigma**2)
    x_in = xs[-2]
    x0 = (x_in - sig * toy_model(x_in, ours.timesteps[-1])) / alpha
    torch.testing.assert_close(xs[-1], x0, rtol=1e-5, atol=1e-5 * x0.abs().max().item())


def test_unipc_bh2_final_sigma_zero_matches_diffusers():
    """The same limit is what diffusers computes where it is finite (bh2 with lower_order_final)."""
    compare("UniPCMultistepScheduler", dict(SD, solver_type="bh2"), steps=7)


# ---------------------------------------------------------------------------------------------
# Repeated sigmas / repeated timesteps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}], ids=["karras", "exponential"])
def test_dpm_solver_3m_repeated_final_sigma_is_an_identity_step(spacing):
    """With Karras / exponential sigmas and final_sigmas_type='sigma_min', the last step goes from
    sigma_min to sigma_min (h = 0). diffusers' third-order update computes 0/0 there (NaN); fastdiff
    has nothing to integrate and returns the step's input. 16 steps, so lower_order_final is off."""
    cfg = dict(SD, solver_order=3, final_sigmas_type="sigma_min", **spacing)
    ref, ours, xs_ref, xs = _run_pair("DPMSolverMultistepScheduler", cfg, 16)
    assert float(ours.sigmas[-1]) == float(ours.sigmas[-2])
    assert not torch.isfinite(xs_ref[-1]).all()
    for a, b in zip(xs[:-1], xs_ref[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    torch.testing.assert_close(xs[-1], xs[-2], rtol=0, atol=0)


def test_duplicate_karras_timesteps_run_every_step_once():
    """squaredcos_cap_v2 + Karras sigmas round the first three timesteps to 998, 998, 998. diffusers
    locates the first step by value and takes the second match, so it skips step 0 and runs off the
    end of its sigmas (IndexError). fastdiff locates a timestep taken from its own ``timesteps`` by
    position, runs all 6 steps, and matches diffusers told to start at 0 (set_begin_index(0))."""
    cfg = dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    quiet_diffusers()
    ref = diffusers.DPMSolverMultistepScheduler(**cfg)
    ref.set_timesteps(6)
    assert ref.timesteps[:3].tolist() == [998, 998, 998]
    with pytest.raises(IndexError):
        trajectory(ref, steps=6)
    ours = fs.DPMSolverMultistepScheduler(**cfg)
    xs, _ = trajectory(ours, steps=6)
    assert len(xs) == 1 + 6 and all(torch.isfinite(x).all() for x in xs)  # the initial noise and 6 steps
    ref2 = diffusers.DPMSolverMultistepScheduler(**cfg)
    xs_ref, _ = trajectory(ref2, steps=6, begin=0)
    for a, b in zip(xs, xs_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


# ---------------------------------------------------------------------------------------------
# Options diffusers does not take
# ---------------------------------------------------------------------------------------------
def test_euler_ancestral_accepts_sample_prediction():
    """diffusers raises NotImplementedError for prediction_type='sample'; with an oracle x0 model the
    fastdiff sampler lands exactly on the target (the last step has sigma_up = sigma_down = 0)."""
    target = torch.linspace(-1, 1, 24).reshape(2, 3, 4)
    s = fs.EulerAncestralDiscreteScheduler(**SD, prediction_type="sample")
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(target.shape, generator=g) * s.init_noise_sigma
    for t in s.timesteps:
        x = s.step(target.clone(), t, x, generator=g).prev_sample
    torch.testing.assert_close(x, target, rtol=1e-6, atol=1e-6)
