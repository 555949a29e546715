"""KDPM2 (DPM-Solver-2), KDPM2-ancestral, TCD and DPM-Solver-SDE: fastdiff's class reproduces
diffusers' class of the same name step for step (float32, 1e-5 relative) over the options that
change their math and over the call patterns diffusers' tests and pipelines use; each model
evaluation is one fused sampler_update launch; save/load round trips; fastdiff.sample's names for
them match a diffusers loop with guidance, img2img and inpainting."""

import tempfile

import pytest
import torch

from fastdiff.samplers import make_sampler
from tests.helpers import DispatchedOps
from tests.samplers.harness import SD, compare, quiet_diffusers, toy_model
from tests.samplers.test_sample import IMAGE, SHAPE, close, diffusers_loop, fused, noise_for

pytest.importorskip("diffusers")

import fastdiff.schedulers as fs  # noqa: E402
from tests.schedulers.test_pipelines_roundtrip import run, sd_parts  # noqa: E402,F401 - sd_parts is a fixture

SPACING = ["leading", "trailing", "linspace"]
X0 = torch.linspace(-1, 1, 120).reshape(2, 3, 5, 4)
KDPM2 = ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"]


def scaled_input_loop(s, *, steps, seed=0, step_kw=None, model=toy_model):
    """diffusers' own tests' loop: the ``scale_model_input`` result is passed to step as the sample."""
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g) * s.init_noise_sigma
    kw = dict(step_kw or {})
    if "generator" in __import__("inspect").signature(s.step).parameters:
        kw["generator"] = g
    for t in s.timesteps:
        x = s.scale_model_input(x, t)
        x = s.step(model(x, t), t, x, **kw).prev_sample
    return x


def launches_per_step(s, *, steps, step_kw=None):
    """The number of fused sampler_update ops each step() dispatches."""
    s.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * s.init_noise_sigma
    counts = []
    for t in s.timesteps:
        xi = s.scale_model_input(x, t)
        m = toy_model(xi, t)
        with DispatchedOps() as rec:
            x = s.step(m, t, x, **(step_kw or {})).prev_sample
        counts.append(sum("sampler_update" in op for op in rec.ops))
    return counts


# ---------------------------------------------------------------------------------------------
# KDPM2 and KDPM2-ancestral
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KDPM2)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", SPACING)
def test_kdpm2_prediction_types_and_spacings(name, prediction_type, spacing):
    compare(name, dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1), steps=7)


@pytest.mark.parametrize("name", KDPM2)
@pytest.mark.parametrize("sig", [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True}],
                         ids=["karras", "exponential", "beta"])
def test_kdpm2_sigma_spacings(name, sig):
    compare(name, dict(SD, **sig), steps=9)


@pytest.mark.parametrize("name", KDPM2)
@pytest.mark.parametrize("steps", [1, 2, 3, 25])
def test_kdpm2_short_and_long_runs(name, steps):
    # Few steps make the second stage's factor (target - sigma) / sigma_mid large (-500 at 2 steps), and
    # diffusers' float32 (x - x0) / sigma_mid cancellation grows with it: compare relative to that.
    compare(name, dict(SD), steps=steps, rtol=1e-5 if steps > 3 else 1e-4)


@pytest.mark.parametrize("name", KDPM2)
def test_kdpm2_linear_betas_as_diffusers_tests_configure(name):
    compare(name, dict(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02), steps=10)


@pytest.mark.parametrize("name", KDPM2)
def test_kdpm2_started_mid_schedule(name):
    compare(name, dict(SD), steps=10, begin=4, x0=X0)
    compare(name, dict(SD, use_karras_sigmas=True), steps=10, begin=8, x0=X0)


@pytest.mark.parametrize("name", KDPM2)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_kdpm2_second_stage_steps_from_the_sample_the_first_stage_was_given(name, prediction_type):
    """diffusers' tests pass the scaled model input as ``sample``; the second stage then re-takes the
    step from the first stage's (scaled) sample, not from a state recovered from its own input."""
    diffusers = quiet_diffusers()
    cfg = dict(SD, prediction_type=prediction_type)
    ref = scaled_input_loop(getattr(diffusers, name)(**cfg), steps=6)
    ours = scaled_input_loop(getattr(fs, name)(**cfg), steps=6)
    close(ours, ref)


@pytest.mark.parametrize("name", KDPM2)
def test_kdpm2_one_fused_launch_per_model_evaluation(name):
    s = getattr(fs, name)(**SD)
    assert launches_per_step(s, steps=5) == [1] * 9
    assert s._program(0, ("stored",)).history == 1  # the first stage's sample


def test_kdpm2_refuses_sample_prediction_at_step_as_diffusers():
    for name in KDPM2:
        s = getattr(fs, name)(prediction_type="sample")
        s.set_timesteps(3)
        with pytest.raises(NotImplementedError, match="prediction_type not implemented yet: sample"):
            s.step(torch.ones(1, 2), s.timesteps[0], torch.ones(1, 2))


# ---------------------------------------------------------------------------------------------
# TCD
# ---------------------------------------------------------------------------------------------
def compare_tcd(cfg, *, steps, eta, set_kw=None):
    """compare() plus pred_noised_sample at every step (TCD's second output)."""
    diffusers = quiet_diffusers()
    ref = diffusers.TCDScheduler(**cfg)
    ours = fs.TCDScheduler.from_config(ref.config)
    outs = []
    for s in (ref, ours):
        s.set_timesteps(steps, **(set_kw or {})) if steps is not None else s.set_timesteps(**set_kw)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE, generator=g)
        run = []
        for t in s.timesteps:
            out = s.step(toy_model(x, t), t, x, eta=eta, generator=g)
            x = out.prev_sample
            run.append((x.clone(), out.pred_noised_sample.clone()))
        outs.append(run)
    assert torch.equal(ours.timesteps, ref.timesteps)
    for (xr, nr), (xo, no) in zip(*outs):
        close(xo, xr)
        close(no, nr)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_tcd_prediction_types_gammas_and_step_counts(prediction_type, eta, steps):
    compare_tcd(dict(prediction_type=prediction_type), steps=steps, eta=eta)


def test_tcd_schedules_custom_timesteps_original_steps_and_strength():
    compare_tcd(dict(beta_schedule="linear", set_alpha_to_one=False), steps=6, eta=0.7)
    compare_tcd(dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", original_inference_steps=100), steps=10, eta=0.5)
    compare_tcd({}, steps=None, eta=0.3, set_kw={"timesteps": [999, 759, 499, 259, 9]})
    compare_tcd({}, steps=None, eta=0.3, set_kw={"timesteps": [999, 759, 499, 259, 9], "strength": 0.6})
    compare_tcd({}, steps=6, eta=0.4, set_kw={"original_inference_steps": 100})  # every training timestep a candidate
    compare_tcd({}, steps=4, eta=0.4, set_kw={"strength": 0.5})


def test_tcd_one_fused_launch_per_step_and_gamma_checked():
    s = fs.TCDScheduler()
    assert launches_per_step(s, steps=4, step_kw={"eta": 0.5}) == [1] * 4
    s.set_timesteps(4)
    with pytest.raises(AssertionError, match="gamma"):
        s.step(torch.ones(1, 2), s.timesteps[0], torch.ones(1, 2), eta=1.5)


# ---------------------------------------------------------------------------------------------
# DPM-Solver-SDE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", SPACING)
def test_dpm_sde_prediction_types_and_spacings(prediction_type, spacing):
    compare("DPMSolverSDEScheduler", dict(SD, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1,
                                          noise_sampler_seed=11), steps=7)


@pytest.mark.parametrize("sig", [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True}],
                         ids=["karras", "exponential", "beta"])
def test_dpm_sde_sigma_spacings_and_s_noise(sig):
    compare("DPMSolverSDEScheduler", dict(SD, noise_sampler_seed=2, **sig), steps=8)
    compare("DPMSolverSDEScheduler", dict(SD, noise_sampler_seed=2, **sig), steps=5, step_kw={"s_noise": 0.6})
    compare("DPMSolverSDEScheduler", dict(SD, noise_sampler_seed=2, **sig), steps=4, step_kw={"s_noise": 0.0})


@pytest.mark.parametrize("steps", [1, 2, 25])
def test_dpm_sde_short_and_long_runs_and_a_mid_schedule_start(steps):
    compare("DPMSolverSDEScheduler", dict(SD, noise_sampler_seed=5), steps=steps)
    if steps > 2:
        compare("DPMSolverSDEScheduler", dict(SD, noise_sampler_seed=5), steps=steps, begin=6, x0=X0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_sde_second_stage_steps_from_the_sample_the_first_stage_was_given(prediction_type):
    diffusers = quiet_diffusers()
    cfg = dict(SD, prediction_type=prediction_type, noise_sampler_seed=9)
    close(scaled_input_loop(fs.DPMSolverSDEScheduler(**cfg), steps=6),
          scaled_input_loop(diffusers.DPMSolverSDEScheduler(**cfg), steps=6))


def test_dpm_sde_one_fused_launch_per_model_evaluation():
    s = fs.DPMSolverSDEScheduler(**SD, noise_sampler_seed=0)
    assert launches_per_step(s, steps=4) == [1] * 7


def test_brownian_noise_is_diffusers_noise_for_the_same_seed_and_levels():
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from fastdiff.solvers.brownian import BrownianNoise

    x = torch.zeros(2, 3, 4)
    ours, ref = BrownianNoise(x, 0.03, 14.6, seed=42), BrownianTreeNoiseSampler(x, 0.03, 14.6, 42)
    for a, b in [(14.6, 3.2), (3.2, 1.7), (14.6, 0.5), (0.5, 0.03)]:
        a, b = torch.tensor(a), torch.tensor(b)
        torch.testing.assert_close(ours(a, b), ref(a, b), rtol=1e-6, atol=1e-6)
        w, scale = ours.raw(a, b)
        torch.testing.assert_close(w * scale, ref(a, b), rtol=1e-6, atol=1e-6)


def test_brownian_noise_draws_through_fastdiff_randn_with_torchsde_values_and_restores_torchsde():
    import torchsde
    from torchsde._brownian import brownian_interval

    from fastdiff.solvers.brownian import BrownianNoise

    original = brownian_interval._randn
    x = torch.zeros(2, 4, 5, 7)  # 280 values: past the 16-value minimum, not a multiple of 16
    ours = BrownianNoise(x, 0.03, 14.6, seed=7)
    plain = torchsde.BrownianInterval(t0=torch.as_tensor(0.03), t1=torch.as_tensor(14.6), size=x.shape, dtype=x.dtype,
                                      entropy=7, tol=1e-6, pool_size=24, halfway_tree=True)  # torchsde's own draws
    for a, b in [(14.6, 9.1), (9.1, 2.0), (2.0, 0.03)]:
        a, b = torch.tensor(a), torch.tensor(b)
        w, _ = ours.raw(a, b)
        torch.testing.assert_close(w, plain(b, a), rtol=0, atol=0)
    assert brownian_interval._randn is original
    assert ours.tree._cache_size == 90  # a larger cache than torchsde's default 45: the same values, above


def test_brownian_noise_cache_stays_under_64_mib():
    from fastdiff.solvers.brownian import BrownianNoise

    assert BrownianNoise.cache_size(torch.empty(4, 4, 64, 64)) == 90  # 512 KiB an entry: 45 MiB
    assert BrownianNoise.cache_size(torch.empty(8, 4, 128, 128)) == 45  # 4 MiB an entry: torchsde's default


def test_without_torchsde_a_clear_import_error():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torchsde'] = None\n"
            "from fastdiff.solvers.scheduling import DPMSolverSDEScheduler\n"
            "try:\n    DPMSolverSDEScheduler()\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n"
            "import fastdiff.schedulers as fs\n"
            "try:\n    fs.DPMSolverSDEScheduler()\nexcept ImportError as e:\n    print('DROP-IN', 'pip install torchsde' in str(e))\n"
            "import fastdiff, torch\n"
            "print(fastdiff.sample(lambda x, t: x, torch.ones(1, 2), sampler='euler', steps=2, progress=False).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORT-ERROR fastdiff: DPMSolverSDEScheduler (sampler 'dpmpp_sde') draws Brownian-tree noise with torchsde: " \
           "pip install torchsde" in out.stdout, out.stderr
    assert "DROP-IN True" in out.stdout  # the drop-in: diffusers' own ImportError, as its class gives
    assert "torch.Size([1, 2])" in out.stdout  # the rest of fastdiff works without it


def test_dpmpp_sde_sample_seeds_its_tree_from_the_generator_and_refuses_cuda_graphs():
    noise = noise_for(1)
    a, b = fused("dpmpp_sde", noise, steps=4, seed=3), fused("dpmpp_sde", noise, steps=4, seed=3)
    c = fused("dpmpp_sde", noise, steps=4, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="cuda_graph=True cannot replay"):
        fused("dpmpp_sde", noise, steps=4, cuda_graph=True)


# ---------------------------------------------------------------------------------------------
# Save / load and fastdiff.sample names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", [
    ("KDPM2DiscreteScheduler", dict(SD, use_karras_sigmas=True)),
    ("KDPM2AncestralDiscreteScheduler", dict(SD, prediction_type="v_prediction")),
    ("TCDScheduler", dict(prediction_type="v_prediction", original_inference_steps=40)),
    ("DPMSolverSDEScheduler", dict(SD, use_karras_sigmas=True, noise_sampler_seed=8)),
])
def test_save_load_roundtrip_keeps_class_config_and_results(name, cfg):
    diffusers = quiet_diffusers()
    s = getattr(fs, name)(**cfg)
    with tempfile.TemporaryDirectory() as d:
        s.save_pretrained(d)
        back = getattr(fs, name).from_pretrained(d)
        theirs = getattr(diffusers, name).from_pretrained(d)
    assert type(back) is type(s) and isinstance(back, getattr(diffusers, name))
    assert dict(back.config) == {k: v for k, v in s.config.items() if k != "_use_default_values"}
    assert type(theirs).__module__.startswith("diffusers.")
    close(scaled_input_loop(back, steps=5), scaled_input_loop(theirs, steps=5))


@pytest.mark.parametrize("name,opts", [
    ("dpm2", {}),
    ("dpm2", {"prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("dpm2_ancestral", {}),
    ("dpm2_ancestral", {"timestep_spacing": "leading", "steps_offset": 1, "use_exponential_sigmas": True}),
    ("tcd", {}),
    ("tcd", {"eta": 0.0, "prediction_type": "v_prediction"}),
    ("tcd", {"eta": 0.9, "beta_schedule": "linear"}),
    ("dpmpp_sde", {"noise_sampler_seed": 4}),
    ("dpmpp_sde", {"noise_sampler_seed": 7, "prediction_type": "v_prediction", "use_karras_sigmas": True, "s_noise": 0.8}),
], ids=["dpm2", "dpm2-v-karras", "dpm2_ancestral", "dpm2_ancestral-leading-exp", "tcd", "tcd-0-v", "tcd-0.9-linear",
        "dpmpp_sde", "dpmpp_sde-v-karras-s_noise"])
def test_named_samplers_with_guidance_img2img_and_inpainting(name, opts):
    noise = noise_for(3)
    sampler = make_sampler(name, **opts)
    kw = {"step_kw": dict(sampler.step_kwargs)}
    close(fused(sampler, noise, steps=8, guidance_scale=3.0), diffusers_loop(sampler, noise, steps=8, guidance=3.0, **kw))
    close(fused(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=8, image=IMAGE, strength=0.6, guidance=2.0, **kw))
    mask = (torch.arange(SHAPE[-1]) < 2).to(torch.float32).expand(SHAPE[0], 1, SHAPE[2], SHAPE[3])
    close(fused(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance_scale=2.0),
          diffusers_loop(sampler, noise, steps=6, image=IMAGE, mask=mask, guidance=2.0, **kw))


@pytest.mark.parametrize("name,extra", [
    ("KDPM2DiscreteScheduler", {}),
    ("KDPM2AncestralDiscreteScheduler", {}),
    ("TCDScheduler", {}),
    ("DPMSolverSDEScheduler", {"noise_sampler_seed": 3}),
])
def test_stable_diffusion_swap_save_and_reload(sd_parts, tmp_path, name, extra):  # noqa: F811
    """A tiny random-weight StableDiffusionPipeline (SD-1.5's PNDM config) with the scheduler swapped
    gives diffusers' images; saved and reloaded, it carries fastdiff's class and gives them again."""
    import json

    import numpy as np

    diffusers = quiet_diffusers()
    pndm = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                                   steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(**sd_parts, scheduler=pndm)
    pipe.scheduler = getattr(diffusers, name).from_config(pndm.config, **extra)
    want = run(pipe)
    pipe.scheduler = getattr(fs, name).from_config(pndm.config, **extra)
    np.testing.assert_allclose(run(pipe), want, rtol=1e-4, atol=1e-5)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == ["fastdiff.schedulers", name]
    back = diffusers.DiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, feature_extractor=None)
    assert type(back.scheduler) is getattr(fs, name)
    np.testing.assert_allclose(run(back), want, rtol=1e-4, atol=1e-5)
