"""fastdiff.nn.AdaLNZero and DiTBlock: diffusers weights load unchanged and give the same results."""

from __future__ import annotations

import pytest
import torch

import fastdiff
from fastdiff.nn import AdaLNZero, DiTBlock

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
from diffusers.models.normalization import AdaLayerNormZero  # noqa: E402

DIM, HEADS, HEAD_DIM, CLASSES = 48, 3, 16, 10


def diffusers_block(affine: bool = False, activation: str = "gelu-approximate", seed: int = 0) -> torch.nn.Module:
    """A DiT-style diffusers block (as DiTTransformer2DModel builds them) with random, non-zero weights."""
    torch.manual_seed(seed)
    block = BasicTransformerBlock(DIM, HEADS, HEAD_DIM, num_embeds_ada_norm=CLASSES, norm_type="ada_norm_zero",
                                  activation_fn=activation, attention_bias=True, norm_elementwise_affine=affine,
                                  norm_eps=1e-5).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.15)
    return block


def ours_from(ref: torch.nn.Module, affine: bool = False, activation: str = "gelu-approximate") -> DiTBlock:
    block = DiTBlock(DIM, HEADS, HEAD_DIM, num_embeds_ada_norm=CLASSES, activation_fn=activation,
                     norm_elementwise_affine=affine).eval()
    block.load_state_dict(ref.state_dict(), strict=True)
    return block


def block_inputs(dtype=torch.float32, n=11):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, n, DIM, generator=g).to(dtype), torch.tensor([4.0, 873.0]), torch.tensor([2, 9])


@pytest.mark.parametrize("affine, activation", [(False, "gelu-approximate"), (True, "geglu"), (False, "gelu")])
def test_diffusers_weights_load_unchanged_and_match_in_float64(affine, activation):
    ref = diffusers_block(affine, activation).double()
    ours = ours_from(ref, affine, activation).double()
    assert set(ours.state_dict()) == set(ref.state_dict())
    x, t, y = block_inputs(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, timestep=t, class_labels=y), ref(x, timestep=t, class_labels=y),
                                   rtol=1e-10, atol=1e-10)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("affine", [False, True])
def test_float32_kernels_are_as_accurate_as_diffusers(backend_device, affine):
    """Output and every gradient: our float32 error vs float64 at most 2x diffusers' own float32 error (+ a floor)."""
    backend, dev = backend_device
    ref32 = diffusers_block(affine).to(dev)
    ref64 = diffusers_block(affine).double().to(dev)
    ours = ours_from(ref32, affine).to(dev)
    x, t, y = block_inputs(n=5 if backend == "triton" else 11)
    x, t, y = x.to(dev), t.to(dev), y.to(dev)

    def run(block, xx, use_backend=None):
        xx = xx.detach().requires_grad_()
        if use_backend:
            with fastdiff.backend(use_backend):
                out = block(xx, timestep=t, class_labels=y)
        else:
            out = block(xx, timestep=t, class_labels=y)
        # A loss that weights every output element differently.
        w = torch.linspace(-1, 1, out.numel(), device=dev, dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * w).sum(), [xx, *block.parameters()])
        return out, grads

    out64, g64 = run(ref64, x.double())
    out_ref, g_ref = run(ref32, x)
    out, g = run(ours, x, backend)
    floor = 1e-6
    assert _err(out, out64) <= 2 * _err(out_ref, out64) + floor * out64.abs().max().item()
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, b, r in zip(names, g, g_ref, g64):
        assert torch.isfinite(a).all(), name
        assert _err(a, r) <= 2 * _err(b, r) + floor * r.abs().max().item(), name


def test_adaln_zero_matches_diffusers_adalayernormzero():
    torch.manual_seed(0)
    ref = AdaLayerNormZero(DIM, CLASSES).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = AdaLNZero(DIM, CLASSES).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, t, y = block_inputs()
    with torch.no_grad():
        got = ours(x, t, y, hidden_dtype=torch.float32)
        want = ref(x, t, y, hidden_dtype=torch.float32)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    plain_ref, plain = AdaLayerNormZero(DIM).eval(), AdaLNZero(DIM, zero_init=False).eval()
    plain.load_state_dict(plain_ref.state_dict(), strict=True)
    emb = torch.randn(2, DIM)
    with torch.no_grad():
        for a, b in zip(plain(x, emb=emb), plain_ref(x, emb=emb)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_fresh_block_is_the_identity():
    """adaLN-Zero: the modulation linear starts at zero, so every gate is 0 and the block returns its input."""
    block = DiTBlock(DIM, HEADS, HEAD_DIM, num_embeds_ada_norm=CLASSES)
    x, t, y = block_inputs()
    assert torch.equal(block(x, timestep=t, class_labels=y), x)


def test_conditioning_must_be_given():
    with pytest.raises(ValueError, match="pass the conditioning vector emb"):
        DiTBlock(DIM, HEADS, HEAD_DIM)(torch.randn(1, 3, DIM))
    with pytest.raises(ValueError, match="needs timestep and class_labels"):
        DiTBlock(DIM, HEADS, HEAD_DIM, num_embeds_ada_norm=CLASSES)(torch.randn(1, 3, DIM))
    block = DiTBlock(DIM, HEADS, HEAD_DIM)
    assert block(torch.randn(1, 3, DIM), emb=torch.randn(1, DIM)).shape == (1, 3, DIM)


def test_compiled_block_training_step_has_no_graph_breaks():
    """torch.compile(fullgraph=True) of a block's forward and backward on CPU, equal to eager."""
    ref = diffusers_block()
    block = ours_from(ref)
    x, t, y = block_inputs()

    def step(x):
        return block(x, timestep=t, class_labels=y).square().mean()

    xe = x.clone().requires_grad_()
    eager = step(xe)
    eager_grads = torch.autograd.grad(eager, [xe, *block.parameters()])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    loss = compiled(xc)
    torch.testing.assert_close(loss, eager)
    for a, b in zip(torch.autograd.grad(loss, [xc, *block.parameters()]), eager_grads):
        torch.testing.assert_close(a, b)


def test_bfloat16_block_runs_on_the_kernels():
    ref = diffusers_block().double()
    block = ours_from(ref).to(torch.bfloat16)
    x, t, y = block_inputs(torch.bfloat16)
    with torch.no_grad():
        out = block(x, timestep=t, class_labels=y)
        want = ref(x.double(), timestep=t, class_labels=y)
    assert out.dtype == torch.bfloat16
    assert _err(out, want) <= 0.05 * want.abs().max().item()
