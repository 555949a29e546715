"""The schedulers issue 9 adds reproduce diffusers' class of the same name step for step (float32,
1e-5 relative), over the options that change their math; fastdiff.sample's names for them match a
diffusers loop with guidance, img2img and inpainting."""

import pytest
import torch

from fastdiff.samplers import make_sampler
from tests.samplers.harness import SD, compare
from tests.samplers.test_sample import IMAGE, SHAPE, close, diffusers_loop, fused, noise_for

pytest.importorskip("diffusers")

SPACING = ["leading", "trailing", "linspace"]
X0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)


# ---------------------------------------------------------------------------------------------
# PNDM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", SPACING)
def test_pndm_plms_and_prk(skip_prk_steps, prediction_type, spacing):
    compare("PNDMScheduler", dict(SD, skip_prk_steps=skip_prk_steps, prediction_type=prediction_type, timestep_spacing=spacing,
                                  steps_offset=1), steps=10)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 25])
def test_pndm_short_and_long_runs(steps):
    """One step; the second-order start alone; the shortest PRK run (4 steps: 12 stages + 1); 25 steps."""
    compare("PNDMScheduler", dict(SD, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1), steps=steps)
    if steps >= 4:  # PRK's warm-up spans four timesteps
        compare("PNDMScheduler", dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True), steps=steps)


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk"])
@pytest.mark.parametrize("begin", [1, 2, 5])
def test_pndm_started_mid_schedule_counts_from_its_first_step(skip_prk_steps, begin):
    compare("PNDMScheduler", dict(SD, skip_prk_steps=skip_prk_steps, steps_offset=1), steps=10, begin=begin, x0=X0)


def test_pndm_keeps_four_outputs_at_most_and_refuses_sample_prediction_at_step():
    import fastdiff.schedulers as fs

    s = fs.PNDMScheduler(**SD, skip_prk_steps=True)
    s.set_timesteps(30)
    assert s._program(0).history == 3  # PLMS reads its three previous outputs; the fourth is this step's
    bad = fs.PNDMScheduler(prediction_type="sample", skip_prk_steps=True)
    bad.set_timesteps(5)
    with pytest.raises(ValueError, match="must be one of `epsilon` or `v_prediction`"):
        bad.step(torch.ones(1, 2), bad.timesteps[0], torch.ones(1, 2))
    s.set_timesteps(10)
    with pytest.raises(NotImplementedError, match="fastdiff: PNDMScheduler steps through its own timesteps"):
        s.step(torch.ones(1, 2), 5, torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least 4 inference steps"):
        fs.PNDMScheduler().set_timesteps(3)


# ---------------------------------------------------------------------------------------------
# LMS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", SPACING)
def test_lms_prediction_types_and_spacings(prediction_type, spacing):
    compare("LMSDiscreteScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1), steps=10)


@pytest.mark.parametrize("sig", [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True}],
                         ids=["karras", "exponential", "beta"])
def test_lms_sigma_spacings(sig):
    compare("LMSDiscreteScheduler", dict(SD, **sig), steps=12)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_lms_orders_and_a_mid_schedule_start(order):
    compare("LMSDiscreteScheduler", dict(SD), steps=10, step_kw={"order": order})
    compare("LMSDiscreteScheduler", dict(SD, use_karras_sigmas=True), steps=10, step_kw={"order": order}, begin=4, x0=X0)


def test_lms_weights_are_exact_lagrange_integrals_and_the_history_is_order_minus_one():
    import fastdiff.schedulers as fs
    from fastdiff.solvers.linear_multistep import lms_coefficients

    sig = [14.6, 9.0, 5.5, 3.1, 1.7, 0.0]
    # order 1 is Euler; any order integrates a polynomial of its degree exactly: sum of weights = the step
    assert lms_coefficients(sig, 3, 1) == pytest.approx([sig[4] - sig[3]], rel=1e-15)
    for order in (2, 3, 4):
        assert sum(lms_coefficients(sig, 4, order)) == pytest.approx(sig[5] - sig[4], rel=1e-13)
    # order 2 from nodes (s3, s4) over [s4, s5]: the trapezoid-free closed form
    h, h_prev = sig[5] - sig[4], sig[4] - sig[3]
    assert lms_coefficients(sig, 4, 2) == pytest.approx([h + h * h / (2 * h_prev), -h * h / (2 * h_prev)], rel=1e-13)
    s = fs.LMSDiscreteScheduler(**SD)
    s.set_timesteps(30)
    assert s._program(0, (4,)).history == 3
    assert s.get_lms_coefficient(3, 10, 1) == pytest.approx(lms_coefficients(s.sigmas.double().tolist(), 10, 3)[1])


# ---------------------------------------------------------------------------------------------
# EDM Euler
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sigma_schedule", ["karras", "exponential"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_edm_euler_prediction_schedule_final_sigma(prediction_type, sigma_schedule, final):
    compare("EDMEulerScheduler", dict(prediction_type=prediction_type, sigma_schedule=sigma_schedule, final_sigmas_type=final),
            steps=10)


def test_edm_euler_churn_ramp_and_mid_schedule_start():
    # with churn, diffusers' pred_original_sample also carries c_skip times the churn noise; ours omits it
    compare("EDMEulerScheduler", dict(sigma_data=1.0, sigma_max=120.0, rho=5.0), steps=10,
            step_kw={"s_churn": 3.0, "s_noise": 1.01, "s_tmin": 0.05}, check_extras=False)
    compare("EDMEulerScheduler", dict(), steps=None, set_kw={"num_inference_steps": 6, "sigmas": torch.tensor([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])})
    compare("EDMEulerScheduler", dict(sigma_schedule="exponential"), steps=10, begin=3, x0=X0)


def test_edm_euler_given_x0_and_preconditioning_match_diffusers():
    import diffusers

    import fastdiff.schedulers as fs

    ref, ours = diffusers.EDMEulerScheduler(prediction_type="v_prediction"), fs.EDMEulerScheduler(prediction_type="v_prediction")
    x, m, x0 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for s in (ref, ours):
        s.set_timesteps(7)
    for i in range(3):
        t = ref.timesteps[i]
        close(ours.scale_model_input(x, ours.timesteps[i]), ref.scale_model_input(x, t))
        a, b = ours.step(m, ours.timesteps[i], x, pred_original_sample=x0 * (i + 1)), ref.step(m, t, x, pred_original_sample=x0 * (i + 1))
        close(a.prev_sample, b.prev_sample)
    close(ours.precondition_outputs(x, m, 3.5), ref.precondition_outputs(x, m, torch.tensor(3.5)))
    close(ours.precondition_noise(torch.tensor([2.0])), ref.precondition_noise(torch.tensor([2.0])))


# ---------------------------------------------------------------------------------------------
# DDIM inversion
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_inverse(clip_sample, prediction_type, spacing, set_alpha_to_one):
    if prediction_type == "sample" and set_alpha_to_one:
        pytest.skip("no noise estimate at the noise-free first level (diffusers divides by zero): refused below")
    compare("DDIMInverseScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=clip_sample,
                                         set_alpha_to_one=set_alpha_to_one, steps_offset=1), steps=10)


def test_ddim_inverse_refuses_sample_prediction_at_a_noise_free_level():
    import fastdiff.schedulers as fs

    s = fs.DDIMInverseScheduler(prediction_type="sample", clip_sample=False)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="no noise estimate at a noise-free level"):
        s.step(torch.ones(1, 2), s.timesteps[0], torch.ones(1, 2))



def test_ddim_inverse_steps_at_off_schedule_timesteps_as_diffusers():
    import diffusers

    import fastdiff.schedulers as fs

    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for cfg in ({}, {"clip_sample": False, "prediction_type": "v_prediction"}):
        ours, ref = fs.DDIMInverseScheduler(**cfg), diffusers.DDIMInverseScheduler(**cfg)
        for s in (ours, ref):
            s.set_timesteps(10)
        for t in (3, 250, 999):
            close(ours.step(m, t, x).prev_sample, ref.step(m, t, x).prev_sample)


def test_ddim_inversion_then_ddim_returns_near_the_start():
    """What inversion is for: DDIM run back down from the inverted latent lands near the image (a
    smooth toy model; exact only as steps -> infinity)."""
    latent = IMAGE * 0.5
    inverted = fused("ddim_inversion", latent, steps=50)
    back = fused("ddim", inverted, steps=50)
    assert (back - latent).abs().max() < 0.05 * latent.abs().max()
    assert (inverted - latent).abs().max() > 0.2  # and the latent did move (by ~half its size)


# ---------------------------------------------------------------------------------------------
# IPNDM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
def test_ipndm_every_warm_up_order_and_long_runs(steps):
    compare("IPNDMScheduler", dict(), steps=steps)


def test_ipndm_trained_levels_and_a_mid_schedule_start():
    levels = (torch.linspace(0.98, 0.0, 9) ** 1.5).tolist()  # 8 steps; the first level is not pure noise
    compare("IPNDMScheduler", dict(trained_betas=levels), steps=8)
    compare("IPNDMScheduler", dict(), steps=10, begin=3)


# ---------------------------------------------------------------------------------------------
# fastdiff.sample names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [
    ("pndm", {}),
    ("pndm", {"skip_prk_steps": False, "prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1}),
    ("lms", {}),
    ("lms", {"order": 2, "use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    ("edm_euler", {}),
    ("edm_euler", {"prediction_type": "v_prediction", "sigma_schedule": "exponential", "final_sigmas_type": "sigma_min"}),
    ("ddim_inversion", {}),
    ("ipndm", {}),
], ids=["pndm", "pndm-prk-v", "lms", "lms-2-karras-v", "edm_euler", "edm_euler-v-exp", "ddim_inversion", "ipndm"])
def test_named_samplers_with_guidance_img2img_and_inpainting(name, opts):
    noise = noise_for(3)
    sampler = make_sampler(name, **opts)
    kw = {"step_kw": {k: int(v) if k == "order" else v for k, v in sampler.step_kwargs.items()}}
    close(fused(sampler, noise, steps=8, guidance_scale=3.0), diffusers_loop(sampler, noise, steps=8, guidance=3.0, **kw))
    if name in ("ddim_inversion", "ipndm"):
        return  # inversion runs up the levels; diffusers' IPNDM has no add_noise for img2img
    close(fused(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance=2.0, **kw))
    mask = (torch.arange(SHAPE[-1]) < 2).to(torch.float32).expand(SHAPE[0], 1, SHAPE[2], SHAPE[3])
    close(fused(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance=2.0, **kw))
