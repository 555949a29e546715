"""A fastdiff scheduler inside a real diffusers pipeline: tiny random-weight Stable Diffusion and SD3
(flow matching) pipelines built offline. Swapping the scheduler gives diffusers' images; the pipeline
saves, and DiffusionPipeline.from_pretrained loads it back with the same fastdiff class and images."""

import json
import string

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import fastdiff.schedulers as fs  # noqa: E402
from tests.samplers.harness import quiet_diffusers  # noqa: E402


def tiny_clip(tmp_path, projection: bool = False):
    """A CLIP text encoder from a config and a character-level tokenizer written here (no download)."""
    chars = list(string.ascii_lowercase + " ")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: i + 2 for i, c in enumerate(chars)},
             **{c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    enc = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(cfg).eval()
    return tok, enc


def tiny_vae(latent_channels: int = 4, **kw):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), latent_channels=latent_channels, norm_num_groups=4,
                                   sample_size=16, **kw).eval()


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    quiet_diffusers()
    tok, enc = tiny_clip(tmp_path_factory.mktemp("clip"))
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                          norm_num_groups=4, attention_head_dim=4).eval()
    return dict(unet=unet, vae=tiny_vae(), text_encoder=enc, tokenizer=tok, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


@pytest.fixture(scope="module")
def sd3_parts(tmp_path_factory):
    quiet_diffusers()
    tok, enc = tiny_clip(tmp_path_factory.mktemp("clip1"), projection=True)
    tok2, enc2 = tiny_clip(tmp_path_factory.mktemp("clip2"), projection=True)
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                                  num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                                  pooled_projection_dim=64, out_channels=4).eval()
    return dict(transformer=transformer, vae=tiny_vae(shift_factor=0.06, scaling_factor=1.5), text_encoder=enc, tokenizer=tok,
                text_encoder_2=enc2, tokenizer_2=tok2, text_encoder_3=None, tokenizer_3=None)


def run(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a red cube", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np",
               height=16, width=16, **kw)
    return out.images


CASES = [
    ("StableDiffusionPipeline", "sd_parts", diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                                    skip_prk_steps=True, steps_offset=1), "DPMSolverMultistepScheduler"),
    ("StableDiffusionPipeline", "sd_parts", diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1),
     "EulerAncestralDiscreteScheduler"),
    ("StableDiffusion3Pipeline", "sd3_parts", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), "FlowMatchEulerDiscreteScheduler"),
]


@pytest.mark.parametrize("pipeline,parts,original,name", CASES, ids=[c[3] + "-" + c[0] for c in CASES])
def test_swap_save_and_reload(request, tmp_path, pipeline, parts, original, name):
    components = request.getfixturevalue(parts)
    pipe = getattr(diffusers, pipeline)(**components, scheduler=original)
    theirs = getattr(diffusers, name).from_config(pipe.scheduler.config)
    ours = getattr(fs, name).from_config(pipe.scheduler.config)
    # diffusers' own from_config rules apply (e.g. SD-1.5-style configs without timestep_spacing get linspace)
    assert dict(ours.config) == dict(theirs.config)
    assert isinstance(ours, getattr(diffusers, name))
    pipe.scheduler = theirs
    want = run(pipe)
    pipe.scheduler = ours
    got = run(pipe)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["fastdiff.schedulers", name]
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == name  # diffusers alone loads this folder into its own class
    assert type(getattr(diffusers, name).from_pretrained(tmp_path, subfolder="scheduler")) is getattr(diffusers, name)

    back = diffusers.DiffusionPipeline.from_pretrained(tmp_path, **{k: None for k, v in components.items() if v is None})
    assert type(back.scheduler) is getattr(fs, name)
    assert type(getattr(fs, name).from_pretrained(tmp_path, subfolder="scheduler")) is getattr(fs, name)
    np.testing.assert_allclose(run(back), want, rtol=1e-4, atol=1e-5)
