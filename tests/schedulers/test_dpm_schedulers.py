"""DPMSolverMultistepInverse, EDMDPMSolverMultistep, DEISMultistep and DPMSolverSinglestep: each
reproduces diffusers' class of the same name step for step (float32, 1e-5 relative) over the options
that change its math, each step is one fused sampler_update launch with no host sync, a saved
scheduler loads back as itself, and fastdiff.sample's names for them match a diffusers loop."""

import math

import pytest
import torch

from tests.samplers.harness import SD, compare, quiet_diffusers, toy_model
from tests.helpers import DispatchedOps
from tests.samplers.test_sample import IMAGE, SHAPE, close, diffusers_loop, fused, noise_for

diffusers = pytest.importorskip("diffusers")

import fastdiff  # noqa: E402
import fastdiff.schedulers as fs  # noqa: E402
from fastdiff.samplers import make_sampler  # noqa: E402

X0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)  # the harness's sample shape
SIGMA_SPACINGS = [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True},
                  {"use_flow_sigmas": True}]
SPACING_IDS = ["karras", "exponential", "beta", "flow"]


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ inversion
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_inverse_orders_algorithms_solver_and_prediction_types(order, algorithm_type, solver_type, prediction_type):
    compare("DPMSolverMultistepInverseScheduler", dict(SD, solver_order=order, algorithm_type=algorithm_type,
                                                       solver_type=solver_type, prediction_type=prediction_type), steps=10)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 12, 999])
def test_dpm_inverse_timestep_spacings_and_run_lengths(spacing, steps):
    compare("DPMSolverMultistepInverseScheduler", dict(SD, timestep_spacing=spacing, steps_offset=1), steps=steps)


@pytest.mark.parametrize("sig", SIGMA_SPACINGS, ids=SPACING_IDS)
def test_dpm_inverse_sigma_spacings_repeat_their_last_level(sig):
    compare("DPMSolverMultistepInverseScheduler", dict(SD, **sig, solver_order=3), steps=10)
    s = fs.DPMSolverMultistepInverseScheduler(**SD, **sig)
    s.set_timesteps(10)
    assert s.sigmas[-1] == s.sigmas[-2]  # so the last step leaves the sample where it is


def test_dpm_inverse_clipping_thresholding_final_order_and_a_mid_schedule_start():
    compare("DPMSolverMultistepInverseScheduler", dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1), steps=10)
    compare("DPMSolverMultistepInverseScheduler", dict(SD, thresholding=True, prediction_type="sample", sample_max_value=0.5),
            steps=10)
    compare("DPMSolverMultistepInverseScheduler", dict(SD, solver_order=3, euler_at_final=True), steps=20)
    compare("DPMSolverMultistepInverseScheduler", dict(SD, solver_order=3, lower_order_final=False), steps=8)
    compare("DPMSolverMultistepInverseScheduler", dict(SD, solver_order=3), steps=10, begin=3, x0=X0)


def test_dpm_inverse_refuses_the_stochastic_variants():
    for algorithm_type in ("sde-dpmsolver++", "sde-dpmsolver"):
        s = fs.DPMSolverMultistepInverseScheduler(algorithm_type=algorithm_type)
        s.set_timesteps(5)
        with pytest.raises(ValueError, match="cannot run up the noise levels"):
            s.step(torch.ones(1, 2), s.timesteps[0], torch.ones(1, 2))


def test_dpm_inversion_then_dpm_solver_returns_near_the_start():
    """What inversion is for: DPM-Solver++ run back down from the inverted latent lands near the image,
    nearer with more steps (a smooth toy model; the inversion starts at the first timestep's level,
    not at 0, so it converges slowly: 10% off at 10 steps, 6.5% at 50)."""
    latent = IMAGE * 0.5

    def round_trip(steps):
        inverted = fused("dpmpp_2m_inversion", latent, steps=steps)
        return inverted, (fused("dpmpp_2m", inverted, steps=steps) - latent).abs().max() / latent.abs().max()

    inverted, err50 = round_trip(50)
    assert err50 < 0.08 and err50 < round_trip(10)[1]
    assert (inverted - latent).abs().max() > 0.2  # and the latent did move (by ~half its size)


# ---------------------------------------------------------------------------------------------
# EDM DPM-Solver++ (Playground v2.5)
# ---------------------------------------------------------------------------------------------
#: diffusers' EDM class has no third-order SDE step (it fails there); ours is DPMSolverMultistep's
EDM_SOLVERS = [(o, a, st) for o in (1, 2, 3) for a in ("dpmsolver++", "sde-dpmsolver++") for st in ("midpoint", "heun")
               if not (o == 3 and a.startswith("sde"))]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("order,algorithm_type,solver_type", EDM_SOLVERS)
def test_edm_dpm_orders_algorithms_solver_and_prediction_types(order, algorithm_type, solver_type, prediction_type):
    compare("EDMDPMSolverMultistepScheduler", dict(solver_order=order, algorithm_type=algorithm_type, solver_type=solver_type,
                                                   prediction_type=prediction_type), steps=10)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("sigma_schedule", ["karras", "exponential"])
def test_edm_dpm_schedules_final_sigma_and_final_order(sigma_schedule, final):
    compare("EDMDPMSolverMultistepScheduler", dict(sigma_schedule=sigma_schedule, final_sigmas_type=final, solver_order=3), steps=12)
    compare("EDMDPMSolverMultistepScheduler", dict(sigma_schedule=sigma_schedule, final_sigmas_type=final, lower_order_final=False),
            steps=20)


def test_edm_dpm_thresholding_sigma_data_short_runs_and_a_mid_schedule_start():
    compare("EDMDPMSolverMultistepScheduler", dict(thresholding=True, sample_max_value=0.5, dynamic_thresholding_ratio=0.87), steps=10)
    compare("EDMDPMSolverMultistepScheduler", dict(solver_order=3, euler_at_final=True), steps=20)
    compare("EDMDPMSolverMultistepScheduler", dict(sigma_data=1.0, sigma_max=120.0, rho=5.0), steps=10)
    compare("EDMDPMSolverMultistepScheduler", dict(), steps=1)
    compare("EDMDPMSolverMultistepScheduler", dict(solver_order=3, sigma_schedule="exponential"), steps=10, begin=3, x0=X0)


def test_edm_dpm_final_sigma_min_is_the_configured_one():
    s = fs.EDMDPMSolverMultistepScheduler(final_sigmas_type="sigma_min", sigma_min=0.003)
    s.set_timesteps(9)
    assert s.sigmas[-1] == torch.tensor(0.003) and len(s.sigmas) == 10


# ---------------------------------------------------------------------------------------------
# DEIS
# ---------------------------------------------------------------------------------------------
def compare_to_float64(name, cfg, *, steps, rtol=1e-5):
    """fastdiff (float32) against diffusers run in float64 (its levels and sample cast up): where
    diffusers' own float32 run loses digits (DEIS's basis integrals cancel between close levels:
    7.5e-4 relative over 25 beta-spaced steps), ours keeps them (2.5e-7 there)."""
    from tests.samplers.harness import trajectory

    ref = getattr(quiet_diffusers(), name)(**cfg)
    ours = getattr(fs, name).from_config(ref.config)
    ref.set_timesteps(steps)
    ref.sigmas = ref.sigmas.double()
    xs, _ = trajectory(ours, steps=steps)
    x = xs[0].double()
    for i, t in enumerate(ref.timesteps):
        x = ref.step(toy_model(x, t), t, x).prev_sample
        torch.testing.assert_close(xs[i + 1].double(), x, rtol=rtol, atol=rtol * x.abs().max().item(), msg=lambda m: f"step {i}: {m}")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_orders_prediction_types_and_final_order(order, lower_order_final, prediction_type):
    compare("DEISMultistepScheduler", dict(SD, solver_order=order, prediction_type=prediction_type,
                                           lower_order_final=lower_order_final), steps=10 if lower_order_final else 20)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_deis_timestep_spacings(spacing):
    compare("DEISMultistepScheduler", dict(SD, timestep_spacing=spacing, steps_offset=1, solver_order=3), steps=12)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("sig", SIGMA_SPACINGS, ids=SPACING_IDS)
def test_deis_sigma_spacings_against_float64(sig, steps):
    compare_to_float64("DEISMultistepScheduler", dict(SD, **sig, solver_order=3), steps=steps)


def test_deis_flow_prediction_long_runs_thresholding_and_a_mid_schedule_start():
    for order in (1, 2, 3):
        compare_to_float64("DEISMultistepScheduler", dict(SD, solver_order=order, prediction_type="flow_prediction",
                                                          use_flow_sigmas=True, flow_shift=3.0), steps=10)
    compare_to_float64("DEISMultistepScheduler", dict(SD), steps=999)
    compare("DEISMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2"), steps=10)
    compare("DEISMultistepScheduler", dict(SD, thresholding=True, prediction_type="sample", sample_max_value=0.5), steps=10)
    compare("DEISMultistepScheduler", dict(SD, thresholding=True, sample_max_value=0.5, solver_order=3), steps=10)
    compare("DEISMultistepScheduler", dict(SD), steps=1)
    compare("DEISMultistepScheduler", dict(SD, solver_order=3), steps=10, begin=3, x0=X0)


def test_deis_weights_integrate_the_interpolating_polynomial_exactly():
    from fastdiff.solvers.deis import deis_weights

    rhos = [14.6, 6.0, 2.5, 1.1, 0.4]
    for order in (1, 2, 3):
        w = deis_weights(rhos, 3, order)  # nodes rho_3, rho_2, rho_1 (newest first), interval [rho_3, rho_4]
        assert sum(w) == pytest.approx(rhos[4] - rhos[3], rel=1e-13)  # a constant integrates to the step
        if order >= 2:  # so does log rho, a polynomial of degree 1 in log rho: int log rho drho = rho (log rho - 1)
            exact = rhos[4] * (math.log(rhos[4]) - 1) - rhos[3] * (math.log(rhos[3]) - 1)
            assert sum(wk * math.log(r) for wk, r in zip(w, rhos[3::-1])) == pytest.approx(exact, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Singlestep DPM-Solver
# ---------------------------------------------------------------------------------------------
#: diffusers' algorithms; DPM-Solver (noise form) needs a positive final sigma; the SDE variant stops at order 2 here
SINGLE = [(o, a) for o in (1, 2, 3) for a in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++") if not (o == 3 and a.startswith("sde"))]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order,algorithm_type", SINGLE)
@pytest.mark.parametrize("steps", [9, 12])
def test_singlestep_orders_algorithms_solver_and_prediction_types(order, algorithm_type, solver_type, prediction_type, steps):
    final = "sigma_min" if algorithm_type == "dpmsolver" else "zero"
    compare("DPMSolverSinglestepScheduler", dict(SD, solver_order=order, algorithm_type=algorithm_type, solver_type=solver_type,
                                                 prediction_type=prediction_type, final_sigmas_type=final), steps=steps)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_group_layouts_for_every_short_run(order, lower_order_final, final):
    """The order list (groups 1, 2[, 3], shortened at the end, first order onto sigma 0) for 1-7 and 12
    steps; an uneven run or a zero final sigma switches lower_order_final on in the config, as diffusers."""
    for steps in (1, 2, 3, 4, 5, 6, 7, 12):
        compare("DPMSolverSinglestepScheduler", dict(SD, solver_order=order, lower_order_final=lower_order_final,
                                                     final_sigmas_type=final), steps=steps)
    s = fs.DPMSolverSinglestepScheduler(**SD, solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min")
    s.set_timesteps(7)
    assert s.config.lower_order_final and s.order_list == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize("sig", SIGMA_SPACINGS, ids=SPACING_IDS)
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_sigma_spacings(sig, order):
    compare("DPMSolverSinglestepScheduler", dict(SD, **sig, solver_order=order), steps=10)
    compare("DPMSolverSinglestepScheduler", dict(SD, **sig, solver_order=order, final_sigmas_type="sigma_min"), steps=12)


@pytest.mark.parametrize("begin", [1, 2, 3, 4, 5])
def test_singlestep_started_mid_group_runs_lower_order_until_its_group_restarts(begin):
    compare("DPMSolverSinglestepScheduler", dict(SD, solver_order=3), steps=12, begin=begin, x0=X0)
    compare("DPMSolverSinglestepScheduler", dict(SD, solver_order=2, algorithm_type="sde-dpmsolver++"), steps=12, begin=begin, x0=X0)


def test_singlestep_thresholding_flow_clipping_custom_timesteps_and_long_runs():
    compare("DPMSolverSinglestepScheduler", dict(SD, thresholding=True, prediction_type="sample", sample_max_value=0.5, solver_order=3),
            steps=10)
    compare("DPMSolverSinglestepScheduler", dict(SD, thresholding=True, sample_max_value=0.5, algorithm_type="sde-dpmsolver++"),
            steps=10)
    compare("DPMSolverSinglestepScheduler", dict(SD, thresholding=True, sample_max_value=0.5, solver_order=3,
                                                 prediction_type="v_prediction"), steps=10)
    compare("DPMSolverSinglestepScheduler", dict(SD, use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction",
                                                 solver_order=3), steps=12)
    compare("DPMSolverSinglestepScheduler", dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1), steps=10)
    compare("DPMSolverSinglestepScheduler", dict(SD), steps=None, set_kw={"timesteps": [999, 800, 650, 500, 300, 100, 20]})
    compare("DPMSolverSinglestepScheduler", dict(SD), steps=999)


def test_singlestep_history_holds_the_group_so_far_and_sde_third_order_is_refused():
    s = fs.DPMSolverSinglestepScheduler(**SD, solver_order=3)
    s.set_timesteps(12)
    assert s._program(0).history == 2  # the anchor's and the middle point's outputs
    sde = fs.DPMSolverSinglestepScheduler(**SD, algorithm_type="sde-dpmsolver++")
    sde.set_timesteps(12)
    assert sde._program(0).history == 1  # the anchor's entry carries what the pair's second step reads of it
    bad = fs.DPMSolverSinglestepScheduler(**SD, solver_order=3, algorithm_type="sde-dpmsolver++")
    bad.set_timesteps(6)
    with pytest.raises(NotImplementedError, match="^fastdiff: .*sde-dpmsolver\\+\\+ at solver_order=3"):
        bad.step(torch.ones(1, 2), bad.timesteps[0], torch.ones(1, 2))
    with pytest.raises(ValueError, match="orders 1 and 2 only"):
        fastdiff.sample(toy_model, torch.ones(1, 2), sampler="dpmpp_3s", sde=True, steps=6)


# ---------------------------------------------------------------------------------------------
# What every class shares: one launch per step, serialisation, the sampler names
# ---------------------------------------------------------------------------------------------


#: (class, config): configurations that use each class's longest history, and its noise where it has some
LAUNCH_CASES = [
    ("DPMSolverMultistepInverseScheduler", dict(SD, solver_order=3)),
    ("EDMDPMSolverMultistepScheduler", dict(solver_order=3, thresholding=False)),
    ("EDMDPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
    ("DEISMultistepScheduler", dict(SD, solver_order=3, thresholding=False)),
    ("DPMSolverSinglestepScheduler", dict(SD, solver_order=3, lower_order_final=True)),
    ("DPMSolverSinglestepScheduler", dict(SD, algorithm_type="sde-dpmsolver++", lower_order_final=True)),
]


@pytest.mark.parametrize("name,cfg", LAUNCH_CASES, ids=[c[0] for c in LAUNCH_CASES])
def test_each_step_is_one_fused_launch_and_no_host_sync(name, cfg):
    s = getattr(fs, name)(**cfg)
    s.set_timesteps(8)
    x = torch.randn(SHAPE)
    m = torch.tanh(x)
    for t in s.timesteps:
        xi = s.scale_model_input(x, t)
        with DispatchedOps() as seen:
            x = s.step(m, t, xi).prev_sample
        fused_ops = [o for o in seen.ops if o.startswith("fastdiff.")]
        assert fused_ops == ["fastdiff.sampler_update.default"] or fused_ops == ["fastdiff.sampler_update_cpu.default"], seen.ops
        compute = [o for o in seen.ops if o.startswith("aten.") and o.split(".")[1] not in ("select", "empty", "randn")]
        assert compute == [], seen.ops  # nothing but the launch touches the data; no .item()
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name,cfg", LAUNCH_CASES, ids=[c[0] for c in LAUNCH_CASES])
def test_save_and_load_gives_the_same_class_and_the_same_run(tmp_path, name, cfg):
    s = getattr(fs, name)(**cfg)
    s.save_pretrained(tmp_path)
    back = getattr(fs, name).from_pretrained(tmp_path)
    assert type(back) is type(s) and isinstance(back, getattr(diffusers, name))
    assert type(getattr(diffusers, name).from_pretrained(tmp_path)) is getattr(diffusers, name)
    from tests.samplers.harness import trajectory

    quiet_diffusers()
    a, _ = trajectory(s, steps=7)
    b, _ = trajectory(back, steps=7)
    torch.testing.assert_close(a[-1], b[-1], rtol=0, atol=0)


NAMES = [
    ("dpmpp_2m_inversion", {}),
    ("dpmpp_2m_inversion", {"order": 3, "prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("edm_dpmpp_2m", {}),
    ("edm_dpmpp_2m", {"order": 3, "prediction_type": "v_prediction", "sigma_schedule": "exponential"}),
    ("deis", {}),
    ("deis", {"order": 3, "prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("dpmpp_2s", {}),
    ("dpmpp_2s", {"sde": True, "solver_type": "heun", "prediction_type": "v_prediction"}),
    ("dpmpp_3s", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
]


@pytest.mark.parametrize("name,opts", NAMES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NAMES)])
def test_named_samplers_match_a_diffusers_loop(name, opts):
    noise = noise_for(3)
    sampler = make_sampler(name, **opts)
    close(fused(sampler, noise, steps=8, guidance_scale=3.0), diffusers_loop(sampler, noise, steps=8, guidance=3.0))
    if name.endswith("inversion"):
        return  # inversion runs up the levels: no img2img or inpainting
    close(fused(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance=2.0))
    mask = (torch.arange(SHAPE[-1]) < 2).to(torch.float32).expand(SHAPE[0], 1, SHAPE[2], SHAPE[3])
    close(fused(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance=2.0))
