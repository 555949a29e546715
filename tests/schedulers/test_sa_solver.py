"""SASolverScheduler reproduces diffusers' class step for step (predictor / corrector orders, tau,
data and noise prediction, every sigma spacing), each step is one fused sampler_update launch, it
saves and loads as diffusers' does, and ``fastdiff.sample(sampler="sa_solver")`` matches a diffusers
loop."""

import math

import numpy as np
import pytest
import torch

from fastdiff.samplers import make_sampler
from fastdiff.solvers import sa_solver
from tests.helpers import DispatchedOps
from tests.samplers.harness import SD, SHAPE, compare, quiet_diffusers, toy_model, trajectory
from tests.samplers.test_sample import IMAGE, SHAPE as IMAGE_SHAPE, close, diffusers_loop, fused, noise_for

diffusers = pytest.importorskip("diffusers")
import fastdiff.schedulers as fs  # noqa: E402

X0 = torch.linspace(-1, 1, 120).reshape(SHAPE)


def half(t) -> float:
    return 0.5


def ode(t) -> float:
    return 0.0


# ---------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [1.0, 2.0, 1.25, -1.0])
@pytest.mark.parametrize("h", [1e-3, 0.3, 2.5])
def test_lagrange_weights_are_the_exponentially_weighted_integrals_of_the_basis(rate, h):
    nodes = [1.7, 1.7 - 0.4, 1.7 - 0.9, 1.7 - 1.2]
    lam_t = 1.7 + h
    u, wq = np.polynomial.legendre.leggauss(40)
    u = (u - 1.0) * h / 2.0  # [-h, 0]
    for count in (1, 2, 3, 4):
        got = sa_solver.lagrange_weights(nodes[:count], lam_t, h, rate)
        for k in range(count):
            basis = np.ones_like(u)
            for j in range(count):
                if j != k:
                    basis *= (lam_t + u - nodes[j]) / (nodes[k] - nodes[j])
            want = float(np.sum(wq * basis * np.exp(rate * u)) * h / 2.0)
            assert math.isclose(got[k], want, rel_tol=1e-9, abs_tol=1e-12 * h), (count, k)
        # the basis sums to 1, so the weights sum to the integral of the exponential alone
        assert math.isclose(sum(got), -math.expm1(-rate * h) / rate, rel_tol=1e-9)


def test_refuses_orders_diffusers_does_not_implement():
    s = fs.SASolverScheduler(predictor_order=5)
    with pytest.raises(ValueError, match="predictor_order expected one of"):
        s.set_timesteps(6)
        s.step(torch.ones(1, 2), s.timesteps[0], torch.ones(1, 2))


# ---------------------------------------------------------------------------------------------
# Parity with diffusers' class, full loops (float32, 1e-5 relative at every step)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm_type", ["data_prediction", "noise_prediction"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_algorithm_and_prediction_types(algorithm_type, prediction_type):
    compare("SASolverScheduler", dict(SD, algorithm_type=algorithm_type, prediction_type=prediction_type), steps=10)


@pytest.mark.parametrize("orders", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2), (2, 4), (4, 4)])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_predictor_and_corrector_orders(orders, lower_order_final):
    p, c = orders
    compare("SASolverScheduler", dict(SD, predictor_order=p, corrector_order=c, lower_order_final=lower_order_final), steps=8)


@pytest.mark.parametrize("tau_func", [None, half, ode], ids=["default", "half", "ode"])
@pytest.mark.parametrize("algorithm_type", ["data_prediction", "noise_prediction"])
def test_tau_functions(tau_func, algorithm_type):
    compare("SASolverScheduler", dict(SD, tau_func=tau_func, algorithm_type=algorithm_type, predictor_order=3), steps=10)


@pytest.mark.parametrize("opt", [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True},
                                 {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
                                 {"timestep_spacing": "trailing"}, {"timestep_spacing": "leading", "steps_offset": 1},
                                 {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}],
                         ids=["karras", "exponential", "beta", "flow", "trailing", "leading", "cosine-clipped"])
def test_sigma_spacings_and_timestep_spacings(opt):
    compare("SASolverScheduler", dict(SD, **opt), steps=12)


def test_thresholding():
    compare("SASolverScheduler", dict(thresholding=True, sample_max_value=1.5), steps=8)
    # noise prediction: diffusers fails (it indexes its tables with no timestep); fastdiff thresholds
    # x0 at the step's level, so a sample-predicting model's eps is that of the clipped x0
    cfg = dict(algorithm_type="noise_prediction", prediction_type="sample", thresholding=True, predictor_order=1,
               corrector_order=1, tau_func=ode)
    s, plain = fs.SASolverScheduler(**cfg), fs.SASolverScheduler(**dict(cfg, thresholding=False))
    for sch in (s, plain):
        sch.set_timesteps(5)
    x = torch.full((1, 4), 0.5)
    x0 = torch.tensor([[3.0, -2.0, 0.5, 0.9]])
    t = s.timesteps[0]
    torch.testing.assert_close(s.step(x0, t, x).prev_sample, plain.step(x0.clamp(-1, 1), t, x).prev_sample)
    assert not torch.allclose(plain.step(x0, plain.timesteps[1], x).prev_sample, s.step(x0, s.timesteps[1], x).prev_sample)


def test_learned_variance_outputs_step_on_their_mean_channels():
    """diffusers slices the mean channels but draws noise at the full output's shape (and fails to add it)."""
    s, plain = fs.SASolverScheduler(variance_type="learned_range"), fs.SASolverScheduler()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    extra = torch.randn(2, 3, 4, 4)
    for sch in (s, plain):
        sch.set_timesteps(6)
    g, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in s.timesteps:
        m = toy_model(x, t)
        a = s.step(torch.cat([m, extra], 1), t, x, generator=g).prev_sample
        b = plain.step(m, t, x, generator=g2).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        x = a


def test_started_mid_schedule_warms_up_from_its_first_step():
    compare("SASolverScheduler", dict(SD, predictor_order=3, corrector_order=3), steps=10, begin=4, x0=X0)


@pytest.mark.parametrize("cfg", [dict(predictor_order=3, corrector_order=4),
                                 dict(predictor_order=4, corrector_order=3, algorithm_type="noise_prediction")],
                         ids=["data-3-4", "noise-4-3"])
def test_high_orders_over_many_steps_match_diffusers_float64_coefficients(cfg):
    """At 25 steps, diffusers' float32 coefficients (Lagrange weights of cubic interpolants over
    close log-SNR levels) lose ~2e-5; fastdiff's are float64. The reference is diffusers' own step
    with its sigmas in float64 (same float32 samples and noise draws)."""
    diffusers_ = quiet_diffusers()
    ref = diffusers_.SASolverScheduler(**SD, **cfg)
    ours = fs.SASolverScheduler.from_config(ref.config)
    ref.set_timesteps(25)
    ref.sigmas = ref.sigmas.double()
    ours.set_timesteps(25)
    g_ref, g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_ref = x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for t in ours.timesteps:
        x_ref = ref.step(toy_model(x_ref, t), t, x_ref, generator=g_ref).prev_sample
        x = ours.step(toy_model(x, t), t, x, generator=g).prev_sample
        close(x, x_ref)


def test_repeated_levels_fall_back_to_the_distinct_nodes():
    """More inference steps than training timesteps repeats levels; diffusers divides by zero in
    its Lagrange weights there, fastdiff interpolates through the distinct nodes (finite)."""
    s = fs.SASolverScheduler(num_train_timesteps=10, predictor_order=3, corrector_order=3)
    xs, _ = trajectory(s, steps=10)
    assert len(set(s.timesteps.tolist())) < 10
    assert all(torch.isfinite(x).all() for x in xs)


# ---------------------------------------------------------------------------------------------
# One fused launch per step; serialisation; fastdiff.sample
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [{}, {"predictor_order": 3, "corrector_order": 4, "algorithm_type": "noise_prediction"}])
def test_every_step_is_one_sampler_update_launch(cfg):
    s = fs.SASolverScheduler(**cfg)
    s.set_timesteps(10)
    x, g = torch.randn(2, 4, 8, 8), torch.Generator().manual_seed(0)
    for t in s.timesteps:
        m = toy_model(x, t)
        with DispatchedOps() as rec:
            x = s.step(m, t, x, generator=g).prev_sample
        assert rec.compute() == ["fastdiff.sampler_update.default"]
        assert sum(op.startswith("aten.randn") for op in rec.ops) == 1  # diffusers' one draw per step
    assert torch.isfinite(x).all()


def test_save_and_load_roundtrip(tmp_path):
    s = fs.SASolverScheduler(**SD, predictor_order=3, corrector_order=1, algorithm_type="noise_prediction",
                             use_karras_sigmas=True)
    s.save_pretrained(tmp_path)
    back = fs.SASolverScheduler.from_pretrained(tmp_path)
    assert type(back) is fs.SASolverScheduler and isinstance(back, diffusers.SASolverScheduler)
    assert type(diffusers.SASolverScheduler.from_pretrained(tmp_path)) is diffusers.SASolverScheduler
    a, _ = trajectory(s, steps=7)
    b, _ = trajectory(back, steps=7)
    torch.testing.assert_close(a[-1], b[-1], rtol=0, atol=0)


@pytest.mark.parametrize("opts", [{}, {"predictor_order": 3, "corrector_order": 3, "prediction_type": "v_prediction"},
                                  {"algorithm_type": "noise_prediction", "use_karras_sigmas": True}],
                         ids=["default", "3-3-v", "noise-karras"])
def test_named_sampler_with_guidance_img2img_and_inpainting(opts):
    noise = noise_for(3)
    sampler = make_sampler("sa_solver", **opts)
    assert sampler.scheduler_name == "SASolverScheduler"
    close(fused(sampler, noise, steps=8, guidance_scale=3.0), diffusers_loop(sampler, noise, steps=8, guidance=3.0))
    if "use_karras_sigmas" in opts:
        return  # img2img: diffusers' add_noise (DDPM's) noises at the integer timestep, not at the step's Karras level
    close(fused(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance=2.0))
    b, _, hgt, wid = IMAGE_SHAPE
    mask = (torch.arange(wid) < 2).to(torch.float32).expand(b, 1, hgt, wid)
    close(fused(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance=2.0))
