"""FastDiffAttnProcessor: the same outputs as diffusers' AttnProcessor2_0, on tiny models built from configs."""

import copy

import pytest
import torch

import fastdiff

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

from fastdiff.integrations.diffusers_attention import FastDiffAttnProcessor  # noqa: E402
from fastdiff.ops.attention import _kernel_layout as attn_layout  # noqa: E402
from tests.ops.test_attention import BACKENDS  # noqa: E402


def set_processor(model, processor):
    if hasattr(model, "set_attn_processor"):  # the documented way, on models that have it
        model.set_attn_processor(processor)
    else:
        for m in model.modules():
            if isinstance(m, Attention):
                m.set_processor(processor)


def both_processors(module):
    """(default-processor copy, fastdiff-processor copy) of a module."""
    ref, fast = copy.deepcopy(module), copy.deepcopy(module)
    set_processor(ref, AttnProcessor2_0())
    set_processor(fast, FastDiffAttnProcessor())
    assert any(isinstance(m, Attention) and isinstance(m.processor, FastDiffAttnProcessor) for m in fast.modules())
    return ref, fast


@pytest.fixture(scope="module")
def unets():
    """A tiny SD-style UNet2DConditionModel (from a config, no download) with each processor."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    ).eval()
    return both_processors(unet)


def test_unet2d_condition_matches_the_default_processor(unets):
    ref, fast = unets
    assert all(isinstance(p, FastDiffAttnProcessor) for p in fast.attn_processors.values())
    g = torch.Generator().manual_seed(1)
    sample, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(fast(sample, t, context).sample, ref(sample, t, context).sample, rtol=1e-4, atol=1e-5)


def test_unet2d_condition_with_a_text_padding_mask(unets):
    ref, fast = unets
    g = torch.Generator().manual_seed(2)
    sample, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    keep = torch.ones(2, 77)
    keep[0, 20:] = 0  # sample 0 has 20 real tokens; the UNet turns this into a -10000 bias
    with torch.no_grad():
        want = ref(sample, 3, context, encoder_attention_mask=keep).sample
        got = fast(sample, 3, context, encoder_attention_mask=keep).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_transformer2d_matches_the_default_processor():
    torch.manual_seed(0)
    model = diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=1, cross_attention_dim=24, norm_num_groups=8
    ).eval()
    ref, fast = both_processors(model)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 32, 6, 5, generator=g), torch.randn(2, 11, 24, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, context).sample, ref(x, context).sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(query_dim=32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True, rescale_output_factor=2.0, bias=True),
        dict(query_dim=32, heads=4, dim_head=8, cross_attention_dim=24, cross_attention_norm="layer_norm", out_bias=False),
        dict(query_dim=32, heads=2, dim_head=16, qk_norm="rms_norm", bias=True),
        dict(query_dim=32, heads=1, dim_head=32, spatial_norm_dim=6, residual_connection=True),
    ],
    ids=["group_norm+residual+rescale", "norm_cross", "qk_rms_norm", "spatial_norm"],
)
def test_attention_module_options(kwargs):
    torch.manual_seed(0)
    attn = Attention(**kwargs).eval()
    ref, fast = both_processors(attn)
    g = torch.Generator().manual_seed(4)
    four_d = "norm_num_groups" in kwargs or "spatial_norm_dim" in kwargs
    x = torch.randn(2, 32, 5, 3, generator=g) if four_d else torch.randn(2, 9, 32, generator=g)
    call = {}
    if "cross_attention_dim" in kwargs:
        call["encoder_hidden_states"] = torch.randn(2, 7, 24, generator=g)
    if "spatial_norm_dim" in kwargs:
        call["temb"] = torch.randn(2, 6, 5, 3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, **call), ref(x, **call), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["bool_2d", "float_2d", "float_3d_per_query", "float_per_head"])
def test_attention_masks_go_through_like_diffusers(mask_kind):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24).eval()
    ref, fast = both_processors(attn)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 9, 32, generator=g), torch.randn(2, 7, 24, generator=g)
    if mask_kind == "bool_2d":
        mask = torch.rand(2, 7, generator=g) > 0.3
        mask[:, 0] = True
    elif mask_kind == "float_2d":
        mask = torch.randn(2, 7, generator=g)
    elif mask_kind == "float_3d_per_query":
        mask = torch.randn(2, 9, 7, generator=g)
    else:  # already repeated per head, (B * heads, 1, Nk): goes through attn.prepare_attention_mask
        mask = torch.randn(4, 1, 7, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, ctx, attention_mask=mask), ref(x, ctx, attention_mask=mask), rtol=1e-4, atol=1e-5)


def test_fused_projections_are_sliced_without_copies():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, bias=True).eval()
    ref, fast = both_processors(attn)
    fast.fuse_projections()
    x = torch.randn(2, 9, 32)
    q, k, v = (t.unflatten(-1, (2, 16)) for t in fast.to_qkv(x).chunk(3, dim=-1))
    assert all(attn_layout(t) is t for t in (q, k, v)), "the kernels take the fused slices as they are"
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)


def test_gradients_match_the_default_processor():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24, bias=True)
    ref, fast = both_processors(attn)
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 7, 24)
    ref(x, ctx).square().sum().backward()
    fast(x, ctx).square().sum().backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend, dev", BACKENDS, ids=[f"{b}-{d}" for b, d in BACKENDS])
def test_half_precision_kernel_path(backend, dev):
    """The processor on the fp16 kernels (Triton interpreted on CPU) stays near the default processor."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24).eval()
    ref, fast = both_processors(attn)
    x, ctx = torch.randn(1, 20, 32), torch.randn(1, 13, 24)
    with torch.no_grad():
        want = ref.double()(x.double(), ctx.double())
        fast = fast.to(dev, torch.float16)
        with fastdiff.backend(backend):
            got = fast(x.to(dev, torch.float16), ctx.to(dev, torch.float16))
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-2, atol=5e-3)
