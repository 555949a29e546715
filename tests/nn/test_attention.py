"""fastdiff.nn.Attention: the same function and parameters as diffusers' Attention."""

import pytest
import torch

import fastdiff
from fastdiff.nn import Attention
from tests.ops.test_attention import BACKENDS

diffusers_attention = pytest.importorskip("diffusers.models.attention_processor")


def pair(**kwargs):
    """A diffusers Attention and a fastdiff one holding the same weights."""
    torch.manual_seed(0)
    theirs = diffusers_attention.Attention(**kwargs).eval()
    theirs.set_processor(diffusers_attention.AttnProcessor2_0())
    ours = Attention(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(query_dim=32, heads=2, dim_head=16),
        dict(query_dim=32, heads=4, dim_head=8, cross_attention_dim=24, bias=True),
        dict(query_dim=32, heads=2, dim_head=16, qk_norm="layer_norm", out_dim=48, out_bias=False),
        dict(query_dim=32, heads=2, dim_head=16, cross_attention_dim=20, qk_norm="rms_norm", eps=1e-6),
    ],
    ids=["self", "cross", "qk_layer_norm", "cross_qk_rms_norm"],
)
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
def test_matches_diffusers_attention(kwargs, fused):
    theirs, ours = pair(**kwargs)
    if fused:
        ours.fuse_projections()
        assert ours.fused_projections and not hasattr(ours, "to_k")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 32, generator=g)
    ctx = torch.randn(2, 6, kwargs["cross_attention_dim"], generator=g) if "cross_attention_dim" in kwargs else None
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ctx), theirs(x, ctx), rtol=1e-4, atol=1e-5)


def test_key_padding_mask_matches_diffusers_bool_mask():
    theirs, ours = pair(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    keep = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ctx, keep), theirs(x, ctx, attention_mask=keep), rtol=1e-4, atol=1e-5)


def test_fully_masked_sample_gives_the_output_bias_only():
    _, ours = pair(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    keep = torch.tensor([[True] * 7, [False] * 7])
    out = ours(x, ctx, keep)
    torch.testing.assert_close(out[1], ours.to_out[0].bias.expand(5, 32))  # attention output 0, then projected


def test_trains_like_diffusers():
    theirs, ours = pair(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24, bias=True)
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 7, 24)
    theirs(x, ctx).square().mean().backward()
    ours(x, ctx).square().mean().backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_self_attention_trains():
    ours = Attention(32, heads=2, dim_head=16, fused_projections=True)
    ours(torch.randn(1, 4, 32)).sum().backward()
    assert ours.to_qkv.weight.grad is not None and ours.to_qkv.weight.grad.abs().sum() > 0


def test_compiles_fullgraph():
    ours = Attention(32, heads=2, dim_head=16, cross_attention_dim=24, fused_projections=True).eval()
    x, ctx = torch.randn(1, 5, 32), torch.randn(1, 6, 24)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, ctx), ours(x, ctx))


@pytest.mark.parametrize("backend, dev", BACKENDS, ids=[f"{b}-{d}" for b, d in BACKENDS])
def test_half_precision_on_the_kernels(backend, dev):
    theirs, ours = pair(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24)
    ours = ours.to(dev, torch.float16)
    x, ctx = torch.randn(1, 20, 32), torch.randn(1, 9, 24)
    with torch.no_grad(), fastdiff.backend(backend):
        got = ours(x.to(dev, torch.float16), ctx.to(dev, torch.float16))
    with torch.no_grad():
        want = theirs.double()(x.double(), ctx.double())
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-2, atol=5e-3)


def test_misuse_is_refused():
    with pytest.raises(ValueError, match="encoder_hidden_states given to a self-attention module"):
        Attention(32, heads=2, dim_head=16)(torch.randn(1, 3, 32), torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match=r"hidden_states must be \(B, N, C\)"):
        Attention(32, heads=2, dim_head=16)(torch.randn(3, 32))
    with pytest.raises(ValueError, match="qk_norm must be"):
        Attention(32, qk_norm="group_norm")
