"""The C++ CPU attention kernel (csrc/cpu/kernels/attention.cpp) against the float64 reference.

float32: forward and every gradient within 1e-5 of the largest reference value (DESIGN.md), plus
2x the error of the path the kernel replaces, PyTorch's float32 SDPA (`attention_reference`), for
ill-conditioned inputs (logits in the hundreds) where float32 itself is off by more.
fp16/bf16: at most 2x the error of eager attention computed in that dtype (tests/ops/test_attention.py).
Outputs and the kernel's float32 scratch come from torch's allocator, which the conftest fills with
NaN: an element the kernel forgets to write, or scratch it reads before writing, shows up as NaN.
"""

import pytest
import torch

import fastdiff
from fastdiff.ops import attention, attention_reference
from tests.ops.test_attention import assert_within_2x, float64_sdpa, max_err, rand_qkv, same_precision

attn_mod = __import__("fastdiff.ops.attention", fromlist=["_"])
pytestmark = pytest.mark.skipif(not attn_mod.FAMILY.carried("cpu"), reason="fastdiff._C carries no CPU attention")

fwd_op = torch.ops.fastdiff.attention_fwd.default
bwd_op = torch.ops.fastdiff.attention_bwd.default


def run(q, k, v, **kw):
    with fastdiff.backend("cpu"):
        return attention(q, k, v, **kw)


def check(q, k, v, *, mask=None, scale=None, grads=True):
    """Forward and gradients of the cpu backend against float64 (module docstring); returns them."""
    dtype = q.dtype
    q, k, v = (t.detach().requires_grad_(grads) for t in (q, k, v))
    out = run(q, k, v, mask=mask, scale=scale)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    r64 = [t.detach().double().requires_grad_(grads) for t in (q, k, v)]
    ref = float64_sdpa(*r64, mask=mask, scale=scale)
    got = [out]
    want = [ref]
    if grads:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
        got += list(torch.autograd.grad(out, (q, k, v), g))
        want += list(torch.autograd.grad(ref, r64, g.double(), allow_unused=True))
        want = [torch.zeros_like(w) if w is None else w for w in want]
    qb, kb, vb = (t.detach().clone().requires_grad_(grads) for t in (q, k, v))
    if dtype == torch.float32:
        base = attention_reference(qb, kb, vb, mask=mask, scale=scale)
    else:
        base = same_precision(qb, kb, vb, mask=mask, scale=scale)
    bases = [base] + (list(torch.autograd.grad(base, (qb, kb, vb), g)) if grads else [])
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), got, bases, want):
        assert a.dtype == dtype and a.shape == r.shape
        if dtype == torch.float32:
            err, bound = max_err(a, r), 1e-5 * max(1.0, r.abs().max().item()) + 2 * max_err(b, r)
            assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"
        else:
            assert_within_2x(a, b, r, dtype, name)
    return got


# ---------------------------------------------------------------------------------------------
# Accuracy over head dims, lengths and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [8, 16, 40, 64, 72, 128, 12, 100, 3])
def test_head_dims(d):
    check(*rand_qkv(2, 37, 77, 2, d, torch.float32, "cpu"))


@pytest.mark.parametrize("nq, nk", [(1, 1), (7, 1), (1, 7), (7, 77), (77, 7), (1003, 1030), (130, 1)])
def test_odd_lengths(nq, nk):
    check(*rand_qkv(1, nq, nk, 2, 8, torch.float32, "cpu"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [8, 16, 40, 72])
def test_half_dtypes(dtype, d):
    check(*rand_qkv(2, 33, 70, 2, d, dtype, "cpu"))


def test_large_scores_and_explicit_scale():
    q, k, v = rand_qkv(1, 50, 300, 2, 16, torch.float32, "cpu")
    check(q * 6, k * 6, v, scale=0.9)  # logits in the hundreds: the online softmax must rescale


def test_log_sum_exp_in_natural_log_units():
    q, k, v = rand_qkv(2, 9, 70, 3, 16, torch.float32, "cpu")
    out, lse = fwd_op(q, k, v, None, None, 0.3)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * 0.3
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), rtol=1e-6, atol=1e-6)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 9) and lse.is_contiguous()


# ---------------------------------------------------------------------------------------------
# Masks, bias, fully masked rows, empty inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_mask_with_a_fully_masked_sample(dtype):
    q, k, v = rand_qkv(2, 20, 90, 2, 16, dtype, "cpu")
    mask = torch.rand(2, 90, generator=torch.Generator().manual_seed(0)) > 0.3
    mask[1] = False
    out, dq, dk, dv = check(q, k, v, mask=mask)
    assert (out[1] == 0).all() and (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dk[0][~mask[0]] == 0).all() and (dv[0][~mask[0]] == 0).all()


@pytest.mark.parametrize("shape", [(20, 70), (2, 1, 1, 70), (1, 2, 20, 1), (2, 2, 20, 70)], ids=str)
def test_bias_broadcasts(shape):
    q, k, v = rand_qkv(2, 20, 70, 2, 8, torch.float32, "cpu")
    check(q, k, v, mask=torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def test_bias_rows_of_minus_infinity_give_zeros_and_zero_gradients():
    q, k, v = rand_qkv(1, 6, 40, 2, 16, torch.float32, "cpu")
    bias = torch.randn(1, 2, 6, 40)
    bias[0, 1, 2] = float("-inf")
    bias[0, 0, :, 5:] = float("-inf")
    out, dq, *_ = check(q, k, v, mask=bias)
    assert (out[0, 2, 1] == 0).all() and (dq[0, 2, 1] == 0).all()


def test_key_mask_and_bias_together_on_the_op():
    q, k, v = rand_qkv(2, 5, 30, 2, 8, torch.float32, "cpu")
    mask = torch.rand(2, 30, generator=torch.Generator().manual_seed(2)) > 0.5
    bias = torch.randn(2, 2, 5, 30)
    out, _ = fwd_op(q, k, v, mask, bias, 0.5)
    ref = float64_sdpa(q, k, v, mask=bias.masked_fill(~mask[:, None, None], float("-inf")), scale=0.5)
    assert max_err(out, ref) <= 1e-5


def test_no_key_at_all():
    q, _, _ = rand_qkv(2, 5, 1, 2, 8, torch.float32, "cpu")
    k = torch.randn(2, 0, 2, 8)
    out, lse = fwd_op(q, k, k, None, None, 0.3)
    assert (out == 0).all() and torch.isinf(lse).all() and (lse > 0).all()
    g = torch.randn_like(q)
    dq, dk, dv = bwd_op(g, q, k, k, out, lse, None, None, 0.3)
    assert (dq == 0).all() and dk.shape == (2, 0, 2, 8) and dv.shape == (2, 0, 2, 8)


def test_empty_batch_and_queries():
    for b, nq in ((0, 5), (2, 0)):
        q = torch.randn(b, nq, 2, 8)
        k = torch.randn(b, 4, 2, 8)
        out, lse = fwd_op(q, k, k, None, None, 0.3)
        assert out.shape == q.shape and lse.shape == (b, 2, nq)


# ---------------------------------------------------------------------------------------------
# Strides: diffusers' (B, H, N, D) views, fused projections, a strided head dim
# ---------------------------------------------------------------------------------------------
def test_bhnd_views_are_read_in_place():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for n in (33, 50, 50))
    check(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def test_fused_qkv_and_strided_head_dim():
    qkv = torch.randn(2, 45, 3, 2, 24)
    check(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    wide = torch.randn(2, 30, 2, 32)
    check(wide[..., ::2], wide[..., 1::2], wide[..., ::2].flip(1))


def test_the_cpu_kernel_serves_auto_and_copies_nothing():
    q, k, v = rand_qkv(1, 8, 8, 2, 8, torch.float32, "cpu")
    assert attn_mod.select_backend(q) == "cpu"
    assert attn_mod.select_backend(q.double()) == "reference"
    t = q.transpose(1, 2)
    assert attn_mod._kernel_layout(t) is t


# ---------------------------------------------------------------------------------------------
# Determinism, registration, bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, h, nk", [(1, 1, 1000), (2, 4, 300), (2, 16, 100)])  # key chunks per (b, h): 8, 3, 1
def test_same_bits_at_any_thread_count(b, h, nk):
    q, k, v = rand_qkv(b, 150, nk, h, 16, torch.float32, "cpu")
    g = torch.randn(b, 150, h, 16)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, lse = fwd_op(q, k, v, None, None, 0.25)
            results.append((out, lse, *bwd_op(g, q, k, v, out, lse, None, None, 0.25)))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck(dtype):
    q, k, v = rand_qkv(1, 3, 21, 2, 16, dtype, "cpu", requires_grad=True)
    mask = torch.rand(1, 21, generator=torch.Generator().manual_seed(4)) > 0.3
    bias = torch.randn(1, 1, 3, 21).to(dtype).expand(1, 2, 3, 21)
    torch.library.opcheck(fwd_op, (q, k, v, None, None, 0.25))
    torch.library.opcheck(fwd_op, (q, k, v, mask, bias, 0.25))
    out, lse = fwd_op(q.detach(), k.detach(), v.detach(), mask, None, 0.25)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, mask, None, 0.25)
    torch.library.opcheck(bwd_op, args)


def test_a_bias_that_requires_grad_goes_to_the_reference():
    q, k, v = rand_qkv(1, 4, 6, 2, 8, torch.float32, "cpu", requires_grad=True)
    bias = torch.randn(4, 6, requires_grad=True)
    assert attn_mod.select_backend(q, bias) == "reference"
    with pytest.raises(fastdiff.BackendUnavailable, match="does not differentiate the bias"):
        run(q, k, v, mask=bias)
    attention(q, k, v, mask=bias).sum().backward()
    assert bias.grad is not None


q4 = torch.randn(2, 5, 3, 8)
k4 = torch.randn(2, 6, 3, 8)


@pytest.mark.parametrize(
    "args, match",
    [
        ((q4.double(), k4.double(), k4.double(), None, None, 1.0), "argument 'q' expected dtype float32, float16 or bfloat16"),
        ((q4, k4.half(), k4, None, None, 1.0), "argument 'k' expected dtype Float \\(like q\\)"),
        ((q4, k4[:, :, :2], k4, None, None, 1.0), "arguments 'k' and 'v' expected shape \\(2, Nk, 3, 8\\)"),
        ((q4[0], k4, k4, None, None, 1.0), "argument 'q' expected a 4-D"),
        ((q4, k4, k4, torch.ones(2, 5, dtype=torch.bool), None, 1.0), "argument 'key_mask' expected a bool \\(B, Nk\\)"),
        ((q4, k4, k4, None, torch.zeros(4, 5, 6), 1.0), "argument 'bias' expected a tensor broadcastable"),
        ((q4, k4, k4, None, None, float("nan")), "argument 'scale' expected a finite number"),
        ((q4[..., :0], k4[..., :0], k4[..., :0], None, None, 1.0), "argument .q. expected a head dim D >= 1, got D=0"),
    ],
)
def test_bad_input_is_refused_clearly(args, match):
    with pytest.raises(RuntimeError, match="fastdiff.attention_fwd: " + match):
        fwd_op(*args)


def test_bad_backward_input_is_refused_clearly():
    out, lse = fwd_op(q4, k4, k4, None, None, 1.0)
    with pytest.raises(RuntimeError, match="argument 'lse' expected a float32 \\(B, H, Nq\\)"):
        bwd_op(q4, q4, k4, k4, out, lse[:, :2], None, None, 1.0)
    with pytest.raises(RuntimeError, match="'grad_out' and 'out' expected the shape of q"):
        bwd_op(q4[:, :2], q4, k4, k4, out, lse, None, None, 1.0)


# ---------------------------------------------------------------------------------------------
# A patched diffusers U-Net runs the kernel, forward and backward, and matches the unpatched model
# ---------------------------------------------------------------------------------------------
def test_patched_unet_runs_the_cpu_kernel_and_matches():
    pytest.importorskip("diffusers")
    import copy

    from tests.integrations import tiny

    base = tiny.sd_unet()
    fast = copy.deepcopy(base)
    fastdiff.patch(fast)
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 7, 32, generator=g)
    grads = []
    with torch.profiler.profile() as prof:
        outs = []
        for model in (base, fast):
            model.zero_grad()
            out = model(x, t, ctx).sample
            out.square().mean().backward()
            outs.append(out.detach())
            grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    names = {e.key for e in prof.key_averages()}
    assert {"fastdiff::attention_fwd", "fastdiff::attention_bwd"} <= names
    assert (outs[1] - outs[0]).abs().max() <= 1e-4 * outs[0].abs().max()
    assert grads[0].keys() == grads[1].keys()
    # All parameter gradients as one vector (some, like biases before a GroupNorm, are ~0 and pure rounding).
    want, got = (torch.cat([gr[n].reshape(-1) for n in grads[0]]) for gr in grads)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
