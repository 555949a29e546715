"""fastdiff.sample: the fused loop reproduces a diffusers sampling loop (scheduler + guidance +
scale_model_input + step) for every named sampler, with guidance, img2img and inpainting; plus
callbacks, progress, seeded generators and argument checks."""

import pytest
import torch

import fastdiff
from fastdiff.samplers import NAMED, make_sampler
from tests.samplers.harness import quiet_diffusers

diffusers = pytest.importorskip("diffusers")
SHAPE = (2, 3, 6, 5)
COND = torch.tensor([0.0, 0.05]).repeat_interleave(SHAPE[0]).reshape(-1, 1, 1, 1)


def model(x, t):
    """Unconditional / conditional toy outputs on a doubled batch; a single output otherwise."""
    out = torch.tanh(x) * 0.5 + 0.1 * x + 0.01 * float(t) / 1000
    return out + COND.to(x) if x.shape[0] == 2 * SHAPE[0] else out


def flow_model(x, t):
    return 0.8 * x - 0.3 * torch.tanh(x) + 0.02 * float(t) / 1000


def diffusers_loop(sampler, noise, *, steps, guidance=None, rescale=0.0, seed=1, image=None, strength=1.0, mask=None, fn=model,
                   step_kw=None, set_kw=None):
    """What a diffusers pipeline does with the same scheduler configuration."""
    quiet_diffusers()
    s = getattr(diffusers, sampler.scheduler_name).from_config(sampler.config)
    if sampler.scheduler_name == "LCMScheduler":
        s.set_timesteps(steps, strength=strength if image is not None else 1.0)
    elif set_kw:
        s.set_timesteps(**set_kw)
    else:
        s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    ts = s.timesteps
    if image is not None and sampler.scheduler_name != "LCMScheduler":
        init = min(int(steps * strength), steps)
        start = max(steps - init, 0) * s.order
        ts = ts[start:]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(start)
    if image is not None and (mask is None or strength < 1.0):
        x = s.scale_noise(image, ts[:1], noise) if hasattr(s, "scale_noise") else s.add_noise(image, noise, ts[:1])
    else:
        x = noise * getattr(s, "init_noise_sigma", 1.0)
    kw = dict(step_kw or {})
    if "generator" in __import__("inspect").signature(s.step).parameters:
        kw["generator"] = g
    for i, t in enumerate(ts):
        xi = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
        if guidance is None:
            out = fn(xi, t)
        else:
            u, c = fn(torch.cat([xi, xi]), t).chunk(2)
            out = u + guidance * (c - u)
            if rescale:
                std_c = c.std(dim=list(range(1, c.dim())), keepdim=True)
                std_g = out.std(dim=list(range(1, out.dim())), keepdim=True)
                out = rescale * (out * (std_c / std_g)) + (1 - rescale) * out
        x = s.step(out, t, x, **kw).prev_sample
        if mask is not None:
            proper = image
            if i < len(ts) - 1:
                nt = ts[i + 1 : i + 2]
                proper = s.scale_noise(image, nt, noise) if hasattr(s, "scale_noise") else s.add_noise(image, noise, nt)
            x = (1 - mask) * proper + mask * x
    return x


def fused(name_or_sampler, noise, *, steps, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    return fastdiff.sample(kw.pop("fn", model), noise, sampler=name_or_sampler, steps=steps, generator=g, progress=False, **kw)


def close(a, b, rtol=1e-5):
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


VP_NAMES = [n for n in NAMED if n != "flow_euler"]
IMAGE = torch.linspace(-1, 1, torch.Size(SHAPE).numel()).reshape(SHAPE)


def noise_for(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VP_NAMES)
@pytest.mark.parametrize("guidance", [None, 4.5])
def test_named_samplers_match_a_diffusers_loop(name, guidance):
    steps = 4 if name == "lcm" else 7
    noise = noise_for()
    # dpmpp_sde's Brownian tree is seeded from the config in diffusers (its step takes no generator)
    sampler = make_sampler(name, **({"noise_sampler_seed": 0} if name == "dpmpp_sde" else {}))
    ref = diffusers_loop(sampler, noise, steps=steps, guidance=guidance)
    out = fused(sampler if name == "dpmpp_sde" else name, noise, steps=steps, guidance_scale=guidance)
    close(out, ref)


@pytest.mark.parametrize("name,opts", [
    ("euler", {"prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("heun", {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}),
    ("dpmpp_3m_sde", {"use_exponential_sigmas": True, "solver_type": "heun"}),
    ("unipc", {"order": 3, "variant": "bh1", "final_sigmas_type": "sigma_min"}),
    ("ddim", {"eta": 0.6, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}),
    ("euler", {"s_churn": 2.0, "s_noise": 1.01}),
    ("dpmpp_2m", {"final_sigmas_type": "sigma_min", "euler_at_final": True}),
], ids=["euler-v-karras", "heun-sample-leading", "3m-sde-exp-heun", "unipc-3-bh1", "ddim-eta-zsnr", "euler-churn", "2m-sigma-min"])
def test_sampler_options_match_diffusers(name, opts):
    noise = noise_for(1)
    sampler = make_sampler(name, **opts)
    step_kw = sampler.step_kwargs
    ref = diffusers_loop(sampler, noise, steps=6, guidance=3.0, step_kw=step_kw)
    out = fused(sampler, noise, steps=6, guidance_scale=3.0)
    close(out, ref)


def test_flow_matching_samplers_match_diffusers():
    noise = noise_for(2)
    for name, opts in [("flow_euler", {"shift": 3.0}), ("flow_euler", {"shift": 3.0, "stochastic_sampling": True}),
                       ("unipc", {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}),
                       ("dpmpp_2m", {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"})]:
        sampler = make_sampler(name, **opts)
        ref = diffusers_loop(sampler, noise, steps=6, fn=flow_model)
        out = fused(sampler, noise, steps=6, fn=flow_model)
        close(out, ref)


def test_flow_euler_dynamic_shift_with_mu():
    noise = noise_for(2)
    sampler = make_sampler("flow_euler", use_dynamic_shifting=True)
    ref = diffusers_loop(sampler, noise, steps=5, fn=flow_model, set_kw={"num_inference_steps": 5, "mu": 0.9})
    close(fused(sampler, noise, steps=5, fn=flow_model, mu=0.9), ref)


def test_guidance_rescale_and_per_sample_scales():
    noise = noise_for(3)
    sampler = make_sampler("dpmpp_2m")
    ref = diffusers_loop(sampler, noise, steps=6, guidance=6.0, rescale=0.7)
    close(fused("dpmpp_2m", noise, steps=6, guidance_scale=6.0, guidance_rescale=0.7), ref)
    per = fused("dpmpp_2m", noise, steps=6, guidance_scale=torch.tensor([6.0, 6.0]))
    close(per, fused("dpmpp_2m", noise, steps=6, guidance_scale=6.0))


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_3m", "unipc", "euler_ancestral", "lcm"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_matches_a_diffusers_img2img_loop(name, strength):
    noise, image = noise_for(4), IMAGE
    sampler = make_sampler(name)
    steps = 4 if name == "lcm" else 8
    ref = diffusers_loop(sampler, noise, steps=steps, image=image, strength=strength, guidance=2.0)
    out = fused(name, noise, steps=steps, image=image, strength=strength, guidance_scale=2.0)
    close(out, ref)


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral"])
def test_inpainting_matches_a_diffusers_inpainting_loop(name):
    """A binary mask; the known region is re-noised from the initial noise after every step."""
    noise, image = noise_for(5), IMAGE
    mask = (torch.arange(SHAPE[-1]) < 2).to(torch.float32).expand(SHAPE[0], 1, SHAPE[2], SHAPE[3])
    sampler = make_sampler(name)
    ref = diffusers_loop(sampler, noise, steps=6, image=image, mask=mask, guidance=2.0)
    out = fused(name, noise, steps=6, image=image, mask=mask, guidance_scale=2.0)
    close(out, ref)
    keep = mask.expand(SHAPE) == 0
    torch.testing.assert_close(out[keep], image[keep])  # the known region ends exactly on the image


def test_inpainting_known_region_formed_per_step_when_the_table_would_be_large(monkeypatch):
    from fastdiff.samplers import inpaint

    noise, image = noise_for(5), IMAGE
    mask = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    table = fused("euler", noise, steps=5, image=image, mask=mask, strength=0.8)
    monkeypatch.setattr(inpaint, "INPAINT_TABLE_BYTES", 0)
    close(fused("euler", noise, steps=5, image=image, mask=mask, strength=0.8), table)


def test_callback_sees_every_evaluation_and_progress_bar_runs(capsys):
    noise = noise_for(6)
    seen = []
    out = fastdiff.sample(model, noise, sampler="heun", steps=4, progress=True,
                          callback=lambda i, t, x: seen.append((i, float(t), x.clone())))
    assert [i for i, _, _ in seen] == list(range(7))  # Heun: 2 evaluations per step but the last
    torch.testing.assert_close(seen[-1][2], out)
    quiet = fastdiff.sample(model, noise, sampler="heun", steps=4, progress=False)
    torch.testing.assert_close(out, quiet, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "lcm"])
def test_seeded_generator_reproduces_stochastic_samplers(name):
    noise = noise_for(7)
    a = fused(name, noise, steps=4, seed=11)
    b = fused(name, noise, steps=4, seed=11)
    c = fused(name, noise, steps=4, seed=12)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_sampler_classes_are_callable_and_configurable():
    noise = noise_for(8)
    s = fastdiff.samplers.DPMSolverPP(order=3, use_karras_sigmas=True)
    assert s.config["solver_order"] == 3 and s.config["use_karras_sigmas"]
    close(s(model, noise, steps=6, progress=False), fused("dpmpp_3m", noise, steps=6, use_karras_sigmas=True))
    cfg = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    e = fastdiff.samplers.Euler(config=cfg)
    assert e.config["timestep_spacing"] == "linspace"  # the model's config wins over fastdiff's defaults
    close(e(model, noise, steps=5, progress=False), diffusers_loop(e, noise, steps=5))


def test_plans_are_fixed_shape_device_tables():
    plan = fastdiff.samplers.UniPC(order=3).plan(10, torch.device("cpu"))
    assert plan.table.dtype == torch.float32 and plan.table.shape == (10, 6 + plan.history)
    # the corrector at step i re-reads what the order-3 predictor at i-1 read: D_{i-1}, D_{i-2}, D_{i-3}
    assert plan.history == 3
    assert plan.timesteps.shape == (10,) and plan.timesteps.dtype == torch.int64
    heun = fastdiff.samplers.Heun().plan(5, torch.device("cpu"))
    assert len(heun) == 9 and heun.history == 1


def test_bad_arguments_are_refused_with_clear_messages():
    noise = noise_for()
    with pytest.raises(ValueError, match="sampler expected one of"):
        fastdiff.sample(model, noise, sampler="nope")
    with pytest.raises(TypeError, match="unexpected option 'orderr'"):
        fastdiff.sample(model, noise, sampler="dpmpp_2m", orderr=3)
    with pytest.raises(ValueError, match="mask needs image"):
        fastdiff.sample(model, noise, mask=torch.ones_like(noise))
    with pytest.raises(ValueError, match="image expected a tensor of noise's shape"):
        fastdiff.sample(model, noise, image=noise[:1])
    with pytest.raises(ValueError, match="strength expected a number in"):
        fastdiff.sample(model, noise, image=noise, strength=0.0)
    with pytest.raises(ValueError, match="guidance_rescale needs guidance_scale"):
        fastdiff.sample(model, noise, guidance_rescale=0.5)
    with pytest.raises(ValueError, match="steps expected a positive integer"):
        fastdiff.sample(model, noise, steps=0)
    with pytest.raises(TypeError, match="configure a named sampler"):
        fastdiff.sample(model, noise, sampler=fastdiff.samplers.DDIM(), eta=0.5)


def test_cuda_graph_needs_cuda_tensors():
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors"):
        fastdiff.sample(model, noise_for(), steps=3, cuda_graph=True, progress=False)


@pytest.mark.parametrize("name", ["dpmpp_3m", "heun", "euler_ancestral", "unipc"])
def test_graphed_step_logic_replays_the_eager_loop(name):
    """The captured step reads its row, timestep and inpainting level through a device counter; with
    a recorder that just calls the step (CUDA graph capture itself is tested on a GPU), replaying it
    must give the eager loop's result, noise draws and inpainting included."""
    from fastdiff.samplers import inpaint, loop
    from fastdiff.samplers.graph import Recorder, run_graphed

    noise = noise_for(9)
    mask = (torch.arange(SHAPE[-1]) < 2).float().expand(SHAPE)
    plan = make_sampler(name).plan(6, noise.device, strength=0.8)
    p, q = plan.levels[0]
    x = IMAGE * p + q * noise
    kw = dict(guidance_scale=3.0, guidance_rescale=0.3, progress=False)
    eager = loop.run(plan, model, x, generator=torch.Generator().manual_seed(4),
                     inpaint=inpaint.Inpaint(plan, IMAGE, mask, noise), **kw)
    seen = []
    graphed = run_graphed(plan, model, x, generator=torch.Generator().manual_seed(4), recorder=Recorder(),
                          inpaint=inpaint.Inpaint(plan, IMAGE, mask, noise), callback=lambda i, t, s: seen.append(int(t)), **kw)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
    assert seen == [int(t) for t in plan.timesteps]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_tracks_float32(dtype):
    """The state and history live in the noise's dtype; the update itself runs in float32."""
    noise = noise_for(10)
    ref = fused("dpmpp_2m", noise, steps=8, guidance_scale=3.0)
    out = fused("dpmpp_2m", noise.to(dtype), steps=8, guidance_scale=3.0, fn=lambda x, t: model(x.float(), t).to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=(2e-2 if dtype == torch.bfloat16 else 4e-3) * ref.abs().max().item())


def test_plans_are_cached_by_value_and_distinct_settings_get_their_own():
    first = make_sampler("dpmpp_2m").plan(12, torch.device("cpu"))
    assert make_sampler("dpmpp_2m").plan(12, "cpu") is first  # a new Sampler, the same settings
    others = [make_sampler("dpmpp_2m").plan(13, "cpu"), make_sampler("dpmpp_2m", order=3).plan(12, "cpu"),
              make_sampler("dpmpp_2m").plan(12, "cpu", strength=0.5), make_sampler("dpmpp_2m", use_karras_sigmas=True).plan(12, "cpu"),
              make_sampler("ddim", eta=0.5).plan(12, "cpu")]
    assert all(p is not first for p in others) and len({id(p) for p in others}) == len(others)
    betas = torch.linspace(1e-4, 2e-2, 1000).tolist()  # a list-valued config still caches
    a = make_sampler("ddim", trained_betas=betas).plan(6, "cpu")
    assert make_sampler("ddim", trained_betas=list(betas)).plan(6, "cpu") is a
    assert make_sampler("ddim", trained_betas=betas[:-1] + [3e-2]).plan(6, "cpu") is not a


def test_a_config_from_an_older_diffusers_takes_the_schedulers_defaults():
    # SD-1.5's config (PNDM, written by diffusers 0.6) has no timestep_spacing: like diffusers' from_config,
    # fastdiff.sample(config=...) uses the DPM-Solver scheduler's own default (linspace), not PNDM's "leading"
    old = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                                  steps_offset=1).config
    s = make_sampler("dpmpp_2m", old)
    want = diffusers.DPMSolverMultistepScheduler.from_config(old)
    assert s.config["timestep_spacing"] == want.config.timestep_spacing == "linspace"
    want.set_timesteps(10)
    assert s.plan(10, torch.device("cpu")).timesteps.tolist() == want.timesteps.tolist()
