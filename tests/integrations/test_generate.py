"""fastdiff.generate: the pipeline's own images, from fastdiff's loop (tiny random pipelines, fp32, CPU).

Each pipeline runs its own __call__ with a diffusers scheduler, then fastdiff.generate with the
sampler of the same class and config (sampler=None); the final latents agree to 1e-4 relative."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import fastdiff  # noqa: E402
from tests.integrations import tiny  # noqa: E402

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def close(got, want, rtol=1e-4):
    got, want = torch.as_tensor(np.asarray(got)), torch.as_tensor(np.asarray(want))
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item(), f"max abs error {err:.3g} vs max |ref| {want.abs().max().item():.3g}"


def seeded():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    tok, enc = tiny.clip(tmp_path_factory.mktemp("clip"))
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny.vae(), text_encoder=enc, tokenizer=tok, unet=tiny.sd_unet(), safety_checker=None,
        scheduler=diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_sd_prompt_matches_the_pipeline(sd, scheduler):
    sd.scheduler = getattr(diffusers, scheduler).from_config(sd.scheduler.config)
    kw = dict(height=16, width=16, guidance_scale=5.0, num_images_per_prompt=2, negative_prompt=["blurry"])
    want = sd(["a cat"], num_inference_steps=5, generator=seeded(), output_type="latent", **kw).images
    got = fastdiff.generate(sd, ["a cat"], steps=5, generator=seeded(), output_type="latent", **kw).images
    close(got, want)


@pytest.mark.parametrize("scheduler, config, call", [
    ("EulerAncestralDiscreteScheduler", {}, {}),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3), {}),
    ("DDPMScheduler", {}, {}),
    ("DDIMScheduler", {}, dict(eta=1.0)),
    ("LCMScheduler", {}, {}),
])
def test_stochastic_samplers_draw_the_pipelines_noise(sd, scheduler, config, call):
    """Same generator, same noise, in the same order as diffusers' schedulers draw it: same images."""
    original = sd.scheduler
    sd.scheduler = getattr(diffusers, scheduler).from_config(original.config, **config)
    try:
        kw = dict(height=16, width=16, guidance_scale=5.0, num_images_per_prompt=2, output_type="latent", **call)
        want = sd(["a cat"], num_inference_steps=5, generator=seeded(), **kw).images
        got = fastdiff.generate(sd, ["a cat"], steps=5, generator=seeded(), **kw).images
        close(got, want)
        other = fastdiff.generate(sd, ["a cat"], steps=5, generator=torch.Generator().manual_seed(1), **kw).images
        assert (other - want).abs().max() > 1e-2 * want.abs().max()  # the noise matters
    finally:
        sd.scheduler = original


def test_eta_goes_where_the_pipeline_sends_it(sd):
    original = sd.scheduler
    sd.scheduler = diffusers.EulerDiscreteScheduler.from_config(original.config)
    try:
        kw = dict(height=16, width=16, output_type="latent")
        plain = fastdiff.generate(sd, "a cat", steps=3, generator=seeded(), **kw).images
        close(fastdiff.generate(sd, "a cat", steps=3, generator=seeded(), eta=1.0, **kw).images, plain, rtol=0)  # Euler: no eta
        with pytest.raises(TypeError, match="eta given twice"):
            fastdiff.generate(sd, "a cat", sampler="ddim", sampler_options={"eta": 0.5}, eta=1.0, steps=3, **kw)
    finally:
        sd.scheduler = original


def test_sd_images_and_output_class(sd):
    sd.scheduler = diffusers.DDIMScheduler.from_config(sd.scheduler.config)
    want = sd("a dog", num_inference_steps=4, height=16, width=16, generator=seeded(), output_type="np")
    got = fastdiff.generate(sd, "a dog", steps=4, height=16, width=16, generator=seeded(), output_type="np")
    assert type(got) is type(want) and got.nsfw_content_detected == want.nsfw_content_detected
    close(got.images, want.images)


def test_sd_prompt_embeds_unguided(sd):
    sd.scheduler = diffusers.DDIMScheduler.from_config(sd.scheduler.config)
    emb = torch.randn(2, 16, 32, generator=seeded())
    kw = dict(prompt_embeds=emb, height=16, width=16, guidance_scale=1.0, output_type="latent")
    want = sd(num_inference_steps=3, generator=seeded(), **kw).images
    close(fastdiff.generate(sd, steps=3, generator=seeded(), **kw).images, want)


def test_sdxl_added_time_ids():
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=tiny.vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=tiny.sd_unet(sdxl=True), scheduler=diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading",
                                                                                   steps_offset=1), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    g = seeded()
    embeds = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), negative_prompt_embeds=torch.randn(1, 6, 32, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=g), negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    kw = dict(height=16, width=16, guidance_scale=4.0, output_type="latent", original_size=(64, 48), **embeds)
    want = pipe(num_inference_steps=4, generator=seeded(), **kw).images
    close(fastdiff.generate(pipe, steps=4, generator=seeded(), **kw).images, want)


def test_dit_class_labels():
    pipe = diffusers.DiTPipeline(transformer=tiny.dit(), vae=tiny.vae(),
                                 scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    want = pipe([3, 7], guidance_scale=3.0, num_inference_steps=5, generator=seeded(), output_type="np").images
    got = fastdiff.generate(pipe, class_labels=[3, 7], guidance_scale=3.0, steps=5, generator=seeded(), output_type="np")
    close(got.images, want)


@pytest.mark.parametrize("cls", ["PixArtAlphaPipeline", "PixArtSigmaPipeline"])
def test_pixart_with_a_text_mask(cls):
    pipe = getattr(diffusers, cls)(tokenizer=None, text_encoder=None, vae=tiny.vae(), transformer=tiny.pixart(),
                                   scheduler=diffusers.DPMSolverMultistepScheduler(**SD_BETAS))
    pipe.set_progress_bar_config(disable=True)
    g = seeded()
    mask = torch.ones(1, 5, dtype=torch.long)
    mask[:, 3:] = 0
    kw = dict(prompt_embeds=torch.randn(1, 5, 12, generator=g), negative_prompt_embeds=torch.randn(1, 5, 12, generator=g),
              prompt_attention_mask=mask, negative_prompt_attention_mask=torch.ones(1, 5, dtype=torch.long),
              height=16, width=16, guidance_scale=4.5, output_type="latent", use_resolution_binning=False)
    want = pipe(num_inference_steps=5, generator=seeded(), negative_prompt=None, **kw).images
    kw.pop("use_resolution_binning")
    close(fastdiff.generate(pipe, steps=5, generator=seeded(), **kw).images, want)


def test_sd3_flow_matching():
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=tiny.sd3(), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny.vae(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = seeded()
    kw = dict(prompt_embeds=torch.randn(1, 5, 12, generator=g), negative_prompt_embeds=torch.randn(1, 5, 12, generator=g),
              pooled_prompt_embeds=torch.randn(1, 10, generator=g), negative_pooled_prompt_embeds=torch.randn(1, 10, generator=g),
              height=16, width=16, guidance_scale=5.0)
    want = pipe(num_inference_steps=5, generator=seeded(), output_type="latent", **kw).images
    close(fastdiff.generate(pipe, steps=5, generator=seeded(), output_type="latent", **kw).images, want)


def test_named_sampler_and_accelerated_pipeline(sd):
    """sampler="dpmpp_2m" on a DDIM pipeline equals the pipeline with DPM-Solver++(2M) swapped in;
    an accelerated pipeline (patched models, fastdiff scheduler) generates the same latents."""
    sd.scheduler = diffusers.DDIMScheduler.from_config(sd.scheduler.config)
    kw = dict(height=16, width=16, guidance_scale=5.0, output_type="latent")
    got = fastdiff.generate(sd, "a cat", sampler="dpmpp_2m", steps=5, generator=seeded(), **kw).images
    sd.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(sd.scheduler.config)
    close(got, sd("a cat", num_inference_steps=5, generator=seeded(), **kw).images)
    fastdiff.accelerate(sd)
    try:
        close(fastdiff.generate(sd, "a cat", steps=5, generator=seeded(), **kw).images, got)
    finally:
        fastdiff.unaccelerate(sd)


def test_refuses_other_pipelines():
    with pytest.raises(TypeError, match="not a supported pipeline"):
        fastdiff.generate(object(), "x")
