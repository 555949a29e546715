"""fastdiff.schedulers.X reproduces diffusers.X step for step (float32, 1e-5 relative at every step)
over the option combinations each scheduler takes; every step is one fused sampler_update launch."""

import numpy as np
import pytest
import torch

from tests.samplers.harness import SD, compare

pytest.importorskip("diffusers")

PRED = ["epsilon", "v_prediction", "sample"]
SPACING = ["leading", "trailing", "linspace"]
SIGMAS = [{}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True}]
SIGMA_IDS = ["plain", "karras", "exponential", "beta"]


# ---------------------------------------------------------------------------------------------
# DDPM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_ddpm_prediction_and_variance_types(prediction_type, variance_type):
    compare("DDPMScheduler", dict(SD, prediction_type=prediction_type, variance_type=variance_type, clip_sample=False), steps=6)


@pytest.mark.parametrize("spacing", SPACING)
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_spacings_and_beta_schedules(spacing, beta_schedule):
    compare("DDPMScheduler", dict(beta_schedule=beta_schedule, timestep_spacing=spacing, steps_offset=1, clip_sample=False), steps=7)


@pytest.mark.parametrize("opt", [{"clip_sample": True}, {"thresholding": True, "sample_max_value": 1.5}], ids=["clip", "threshold"])
def test_ddpm_clipped_x0(opt):
    compare("DDPMScheduler", dict(opt, prediction_type="sample" if "thresholding" in opt else "epsilon"), steps=6)


def test_ddpm_custom_timesteps_and_zero_snr_v_prediction():
    compare("DDPMScheduler", dict(SD, clip_sample=False), steps=None, set_kw={"timesteps": [950, 700, 420, 100, 3]})
    compare("DDPMScheduler", dict(SD, clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                  timestep_spacing="trailing"), steps=6)


# ---------------------------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", SPACING)
def test_ddim_prediction_eta_spacing(prediction_type, eta, spacing):
    compare("DDIMScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=False), steps=7,
            step_kw={"eta": eta})


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("opt", [{"clip_sample": True}, {"thresholding": True}], ids=["clip", "threshold"])
def test_ddim_clipped_x0(use_clipped, opt):
    compare("DDIMScheduler", dict(opt), steps=6, step_kw={"eta": 0.3, "use_clipped_model_output": use_clipped})


def test_ddim_alpha_not_set_to_one_cosine_and_zero_snr():
    compare("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=False, clip_sample=False, steps_offset=1), steps=6)
    compare("DDIMScheduler", dict(SD, clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                  timestep_spacing="trailing"), steps=6)


# ---------------------------------------------------------------------------------------------
# Euler and Euler-ancestral
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("spacing", SPACING)
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_euler_prediction_spacing_final_sigma(prediction_type, spacing, final):
    compare("EulerDiscreteScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, final_sigmas_type=final,
                                           steps_offset=1), steps=7)


@pytest.mark.parametrize("sig", SIGMAS, ids=SIGMA_IDS)
def test_euler_sigma_spacings(sig):
    compare("EulerDiscreteScheduler", dict(SD, **sig), steps=8)


def test_euler_sigma_bounds_log_linear_continuous_and_custom():
    compare("EulerDiscreteScheduler", dict(SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), steps=6)
    compare("EulerDiscreteScheduler", dict(SD, interpolation_type="log_linear"), steps=6)
    compare("EulerDiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_type="continuous"), steps=6)
    compare("EulerDiscreteScheduler", dict(SD), steps=None, set_kw={"sigmas": [14.0, 6.0, 2.5, 0.9, 0.2, 0.0]})
    compare("EulerDiscreteScheduler", dict(SD), steps=None, set_kw={"timesteps": [999.0, 750.0, 500.5, 250.0, 10.0]})


@pytest.mark.parametrize("churn", [
    {"s_churn": 1.0},
    {"s_churn": 40.0, "s_noise": 1.003},
    {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0},
], ids=["churn", "strong-churn-noise", "churn-window"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_churn(churn, prediction_type):
    # diffusers' pred_original_sample includes the churn noise; fastdiff's view omits it (documented)
    compare("EulerDiscreteScheduler", dict(SD, prediction_type=prediction_type), steps=6, step_kw=churn, check_extras=False)


def test_euler_zero_snr_clamps_like_diffusers():
    compare("EulerDiscreteScheduler", dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing"), steps=6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", SPACING)
def test_euler_ancestral(prediction_type, spacing):
    compare("EulerAncestralDiscreteScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1), steps=7)


def test_euler_ancestral_zero_snr():
    compare("EulerAncestralDiscreteScheduler", dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                                    prediction_type="v_prediction"), steps=6)


# ---------------------------------------------------------------------------------------------
# Heun
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("sig", SIGMAS, ids=SIGMA_IDS)
def test_heun_prediction_and_sigma_spacings(prediction_type, sig):
    compare("HeunDiscreteScheduler", dict(SD, prediction_type=prediction_type, **sig), steps=5)


@pytest.mark.parametrize("spacing", SPACING)
def test_heun_spacings_and_clipping(spacing):
    compare("HeunDiscreteScheduler", dict(SD, timestep_spacing=spacing, steps_offset=1), steps=5)
    compare("HeunDiscreteScheduler", dict(SD, timestep_spacing=spacing, clip_sample=True, clip_sample_range=2.0), steps=4)


def test_heun_custom_timesteps_and_img2img_start():
    compare("HeunDiscreteScheduler", dict(SD), steps=None, set_kw={"timesteps": [999.0, 700.0, 400.0, 100.0]})
    x0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)
    compare("HeunDiscreteScheduler", dict(SD), steps=6, begin=4, x0=x0)


# ---------------------------------------------------------------------------------------------
# DPM-Solver(++) multistep
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", [6, 16])
def test_dpm_solver_orders_algorithms_solver_types(order, algorithm, solver_type, steps):
    compare("DPMSolverMultistepScheduler", dict(SD, solver_order=order, algorithm_type=algorithm, solver_type=solver_type), steps=steps)


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("euler_at_final", [True, False])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_dpm_solver_final_step_options(lower_order_final, euler_at_final, final):
    for steps in (7, 16):
        compare("DPMSolverMultistepScheduler", dict(SD, solver_order=3, lower_order_final=lower_order_final,
                                                    euler_at_final=euler_at_final, final_sigmas_type=final), steps=steps)


@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("sig", SIGMAS + [{"use_lu_lambdas": True}], ids=SIGMA_IDS + ["lu"])
def test_dpm_solver_predictions_and_sigma_spacings(prediction_type, sig):
    compare("DPMSolverMultistepScheduler", dict(SD, prediction_type=prediction_type, **sig), steps=8)


@pytest.mark.parametrize("algorithm", ["dpmsolver", "sde-dpmsolver"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpm_solver_noise_prediction_variants(algorithm, solver_type):
    compare("DPMSolverMultistepScheduler", dict(SD, algorithm_type=algorithm, solver_type=solver_type, final_sigmas_type="sigma_min",
                                                solver_order=3 if algorithm == "dpmsolver" else 2), steps=8)


@pytest.mark.parametrize("spacing", SPACING)
def test_dpm_solver_spacings_clipping_thresholding(spacing):
    compare("DPMSolverMultistepScheduler", dict(SD, timestep_spacing=spacing, steps_offset=1), steps=7)
    compare("DPMSolverMultistepScheduler", dict(SD, timestep_spacing=spacing, lambda_min_clipped=-5.1), steps=7)
    compare("DPMSolverMultistepScheduler", dict(timestep_spacing=spacing, thresholding=True, sample_max_value=1.2), steps=7)


def test_dpm_solver_flow_sigmas_zero_snr_custom_timesteps_learned_variance():
    compare("DPMSolverMultistepScheduler", dict(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"), steps=8)
    compare("DPMSolverMultistepScheduler", dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                                prediction_type="v_prediction"), steps=8)
    compare("DPMSolverMultistepScheduler", dict(SD), steps=None, set_kw={"timesteps": [999, 800, 500, 300, 90, 5]})
    compare("DPMSolverMultistepScheduler", dict(SD, beta_schedule="squaredcos_cap_v2"), steps=6)


def test_dpm_solver_img2img_start_and_many_karras_steps_with_repeated_timesteps():
    x0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)
    compare("DPMSolverMultistepScheduler", dict(SD, solver_order=3), steps=10, begin=4, x0=x0)
    # 100 Karras steps round to repeated timesteps near t = 0 ([..., 2, 1, 1, 0, 0]): still step for step
    xs, _ = compare("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), steps=100)
    assert len(xs) == 100


# ---------------------------------------------------------------------------------------------
# UniPC
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("predict_x0", [True, False])
def test_unipc_orders_variants_and_x0_or_noise_form(order, solver_type, predict_x0):
    # bh1 with a final sigma of 0 is NaN in diffusers (see test_sampler_edge_cases); sigma_min keeps it a parity case
    final = "sigma_min" if solver_type == "bh1" or not predict_x0 else "zero"
    compare("UniPCMultistepScheduler", dict(SD, solver_order=order, solver_type=solver_type, predict_x0=predict_x0,
                                            final_sigmas_type=final), steps=8)


@pytest.mark.parametrize("disable", [[], [0], [1, 2], [0, 1, 2, 3, 4, 5]], ids=["all", "first", "two", "none"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_unipc_corrector_and_final_order(disable, lower_order_final):
    compare("UniPCMultistepScheduler", dict(SD, solver_order=3, disable_corrector=disable, lower_order_final=lower_order_final,
                                            final_sigmas_type="sigma_min"), steps=7)


@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("sig", SIGMAS, ids=SIGMA_IDS)
def test_unipc_predictions_and_sigma_spacings(prediction_type, sig):
    compare("UniPCMultistepScheduler", dict(SD, prediction_type=prediction_type, **sig), steps=8)


@pytest.mark.parametrize("spacing", SPACING)
def test_unipc_spacings_thresholding_zero_snr(spacing):
    compare("UniPCMultistepScheduler", dict(SD, timestep_spacing=spacing, steps_offset=1), steps=7)
    compare("UniPCMultistepScheduler", dict(timestep_spacing=spacing, thresholding=True, sample_max_value=1.3), steps=6)
    compare("UniPCMultistepScheduler", dict(SD, timestep_spacing=spacing, rescale_betas_zero_snr=True, prediction_type="v_prediction"), steps=6)


def test_unipc_flow_sigmas_shift_dynamic_terminal_custom_and_img2img():
    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
    compare("UniPCMultistepScheduler", dict(flow, flow_shift=3.0), steps=8)
    compare("UniPCMultistepScheduler", dict(flow, use_dynamic_shifting=True), steps=8, set_kw={"mu": 0.8})
    compare("UniPCMultistepScheduler", dict(flow, shift_terminal=0.1, flow_shift=2.0), steps=8)
    compare("UniPCMultistepScheduler", dict(flow, use_karras_sigmas=True), steps=8)
    compare("UniPCMultistepScheduler", dict(flow), steps=None, set_kw={"sigmas": np.array([1.0, 0.8, 0.55, 0.3, 0.1])})
    x0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)
    compare("UniPCMultistepScheduler", dict(SD, solver_order=3), steps=10, begin=3, x0=x0)


# ---------------------------------------------------------------------------------------------
# LCM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PRED)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_predictions_and_steps(prediction_type, steps):
    compare("LCMScheduler", dict(prediction_type=prediction_type), steps=steps)


def test_lcm_options():
    compare("LCMScheduler", dict(timestep_scaling=5.0, original_inference_steps=25), steps=5)
    compare("LCMScheduler", dict(), steps=4, set_kw={"strength": 0.6})
    compare("LCMScheduler", dict(), steps=None, set_kw={"timesteps": [999, 759, 499, 259]})
    compare("LCMScheduler", dict(clip_sample=True, clip_sample_range=0.8), steps=4)
    compare("LCMScheduler", dict(thresholding=True, prediction_type="sample"), steps=4)
    compare("LCMScheduler", dict(set_alpha_to_one=False, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                 timestep_spacing="trailing"), steps=4)


# ---------------------------------------------------------------------------------------------
# Flow matching Euler
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", [
    {"shift": 1.0}, {"shift": 3.0}, {"shift": 3.0, "stochastic_sampling": True},
    {"shift": 3.0, "invert_sigmas": True}, {"shift": 2.0, "shift_terminal": 0.05},
    {"shift": 3.0, "use_karras_sigmas": True}, {"shift": 3.0, "use_exponential_sigmas": True}, {"shift": 3.0, "use_beta_sigmas": True},
], ids=["plain", "shift", "stochastic", "inverted", "terminal", "karras", "exponential", "beta"])
def test_flow_match_euler_options(opt):
    compare("FlowMatchEulerDiscreteScheduler", opt, steps=7)


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_flow_match_euler_dynamic_shift(kind):
    compare("FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=True, time_shift_type=kind), steps=6, set_kw={"mu": 1.1})


def test_flow_match_euler_custom_sigmas_timesteps_and_img2img():
    compare("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), steps=None, set_kw={"sigmas": [1.0, 0.75, 0.5, 0.25, 0.1]})
    compare("FlowMatchEulerDiscreteScheduler", dict(shift=1.0), steps=None,
            set_kw={"sigmas": [1.0, 0.75, 0.5, 0.25], "timesteps": [1000.0, 750.0, 500.0, 250.0]})
    x0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)
    compare("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), steps=8, begin=3, x0=x0)


# ---------------------------------------------------------------------------------------------
# One instance, many runs: programs are reused across set_timesteps, never mixed up
# ---------------------------------------------------------------------------------------------
REUSE = [
    ("DDIMScheduler", {**SD, "timestep_spacing": "trailing"}, [(8, {}), (5, {}), (8, {})]),
    ("DDPMScheduler", SD, [(6, {}), (None, {"timesteps": [900, 500, 300, 100, 0]}), (6, {})]),
    ("EulerDiscreteScheduler", {**SD, "use_karras_sigmas": True}, [(8, {}), (6, {}), (8, {})]),
    ("DPMSolverMultistepScheduler", {**SD, "solver_order": 3}, [(8, {}), (12, {}), (8, {})]),
    ("UniPCMultistepScheduler", SD, [(7, {}), (9, {}), (7, {})]),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, [(8, {}), (None, {"sigmas": [1.0, 0.7, 0.4, 0.1]}), (8, {})]),
]


@pytest.mark.parametrize("name,cfg,runs", REUSE, ids=[r[0] for r in REUSE])
def test_one_instance_reused_across_set_timesteps_matches_fresh_diffusers_runs(name, cfg, runs):
    import fastdiff.schedulers as fs
    from tests.samplers.harness import quiet_diffusers, trajectory

    diffusers = quiet_diffusers()
    ours = getattr(fs, name)(**cfg)
    programs = []
    for steps, set_kw in runs:
        ref = getattr(diffusers, name)(**cfg)
        xs_ref, _ = trajectory(ref, steps=steps, set_kw=set_kw)
        xs, _ = trajectory(ours, steps=steps, set_kw=set_kw)
        for a, b in zip(xs[1:], xs_ref[1:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
        programs.append(next(iter(ours._programs.values())))  # the program this run stepped through
    assert programs[0] is programs[2] and programs[0] is not programs[1]  # the repeat reused its program


def test_register_to_config_after_set_timesteps_builds_a_new_program():
    import fastdiff.schedulers as fs
    from tests.samplers.harness import quiet_diffusers, trajectory

    diffusers = quiet_diffusers()
    ours = fs.DDIMScheduler(**SD)
    ours.set_timesteps(6)
    before = ours._program(0, (0.0,))
    ours.register_to_config(prediction_type="v_prediction")
    ours.set_timesteps(6)
    assert ours._program(0, (0.0,)) is not before
    ref = diffusers.DDIMScheduler(**{**SD, "prediction_type": "v_prediction"})
    xs, _ = trajectory(ours, steps=6)
    xs_ref, _ = trajectory(ref, steps=6)
    torch.testing.assert_close(xs[-1], xs_ref[-1], rtol=1e-5, atol=1e-5)

