"""The hand-written CUDA attention kernels (csrc/cuda/attention_*.cu) on a GPU.

Same criterion as tests/ops/test_attention.py (which also runs the cuda backend on CUDA tensors):
against float64 SDPA, the kernel's max error on the output and on every gradient is at most 2x the
error of an eager fp16/bf16 matmul-softmax-matmul, plus a tiny floor. These tests add what only the
CUDA kernels have: every compiled head-dim width (40, 64, 72, 80, 96, 128, 160 exactly, and the
generic path for other multiples of 8: 24 -> 32, 136 -> 160, 256), the short-K/V forward
(Nk <= 320 when K and V of a head fit shared memory) and the tiled one (longer Nk, or wide heads),
boundary tiles (Nq, Nk in {1, 77, 300, 1031}), the split dK/dV launches of wide heads, rows the
binding must copy to align, bitwise-reproducible gradients, opcheck and CUDA-graph capture.

The kernels' index and fragment arithmetic is also exercised without a GPU by
tests/cuda_emu/ (a host emulator of the warp primitives).
"""

import pytest
import torch

import fastdiff
from fastdiff.ops import attention
from tests.ops.test_attention import (
    assert_within_2x,
    check_forward_and_grads,
    float64_sdpa,
    rand_qkv,
    same_precision,
)

attn_mod = __import__("fastdiff.ops.attention", fromlist=["_"])

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not attn_mod.FAMILY.carried("cuda"), reason="fastdiff._C holds no CUDA attention kernel"),
]

DEV = "cuda"
HALF = [torch.float16, torch.bfloat16]
SPECIALISED_D = [40, 64, 72, 80, 96, 128, 160]
GENERIC_D = [24, 136, 256]
# (Nq, Nk): one query, one key, cross-attention on 77 tokens (short path), 300 keys (short path for
# narrow heads, tiled for wide ones), and a self-attention length that is odd in every tile size.
LENGTHS = [(1, 77), (77, 1), (300, 77), (77, 300), (1031, 1031)]


def _ids(x):
    return "x".join(map(str, x)) if isinstance(x, tuple) else str(x).replace("torch.", "")


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("d", SPECIALISED_D + GENERIC_D)
@pytest.mark.parametrize("lengths", LENGTHS, ids=_ids)
def test_forward_and_gradients_within_twice_same_precision_error(dtype, d, lengths):
    nq, nk = lengths
    b, h = (1, 2) if nq * nk > 100_000 else (2, 3)
    q, k, v = rand_qkv(b, nq, nk, h, d, dtype, DEV, requires_grad=True)
    check_forward_and_grads("cuda", q, k, v)


def test_auto_backend_is_cuda_for_half_precision_cuda_tensors():
    q = torch.randn(1, 4, 2, 64, device=DEV, dtype=torch.float16)
    assert attn_mod.select_backend(q) == "cuda"


@pytest.mark.parametrize("nk", [37, 1031], ids=["short", "tiled"])
def test_log_sum_exp_in_natural_log_units_and_inf_on_fully_masked_rows(nk):
    q, k, v = rand_qkv(2, 70, nk, 2, 72, torch.float16, DEV)
    mask = torch.ones(2, nk, dtype=torch.bool, device=DEV)
    mask[1] = False
    out, lse = torch.ops.fastdiff.attention_fwd(q, k, v, mask, None, 0.25)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * 0.25
    torch.testing.assert_close(lse[0].double(), torch.logsumexp(s[0], -1), atol=1e-3, rtol=1e-3)
    assert torch.isposinf(lse[1]).all()
    assert (out[1] == 0).all()


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("d, nk", [(40, 77), (128, 1031), (256, 300)])
def test_key_mask_fully_masked_sample_gives_exact_zeros(dtype, d, nk):
    q, k, v = rand_qkv(2, 100, nk, 2, d, dtype, DEV, requires_grad=True)
    mask = torch.rand(2, nk, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[1] = False
    mask = mask.to(DEV)
    out, (gq, gk, gv) = check_forward_and_grads("cuda", q, k, v, mask=mask)
    assert (out[1] == 0).all() and (gq[1] == 0).all() and (gk[1] == 0).all() and (gv[1] == 0).all()
    assert (gk[0][~mask[0]] == 0).all() and (gv[0][~mask[0]] == 0).all()


@pytest.mark.parametrize("bias_shape", [(77, 300), (2, 1, 1, 300), (2, 3, 77, 300), (1, 3, 77, 1)], ids=_ids)
@pytest.mark.parametrize("d", [64, 160])
def test_additive_bias_broadcasts(bias_shape, d):
    q, k, v = rand_qkv(2, 77, 300, 3, d, torch.float16, DEV, requires_grad=True)
    bias = torch.randn(bias_shape, generator=torch.Generator().manual_seed(5)).to(DEV, torch.float16)
    check_forward_and_grads("cuda", q, k, v, mask=bias)


@pytest.mark.parametrize("nk", [24, 1031])
def test_bias_rows_of_minus_infinity(nk):
    q, k, v = rand_qkv(1, 70, nk, 2, 80, torch.bfloat16, DEV, requires_grad=True)
    bias = torch.randn(70, nk).to(DEV, torch.bfloat16)
    bias[3] = float("-inf")
    bias[5, : nk - 4] = float("-inf")
    out, (gq, _, _) = check_forward_and_grads("cuda", q, k, v, mask=bias)
    assert (out[:, 3] == 0).all() and (gq[:, 3] == 0).all()


@pytest.mark.parametrize("d", [40, 72, 128])
def test_bhnd_views_are_read_through_strides(d):
    qh, kh, vh = (torch.randn(2, 3, n, d, device=DEV, dtype=torch.float16) for n in (300, 1031, 1031))
    q, k, v = (t.transpose(1, 2).requires_grad_() for t in (qh, kh, vh))
    check_forward_and_grads("cuda", q, k, v)


def test_fused_qkv_views():
    qkv = torch.randn(2, 300, 3, 4, 64, device=DEV, dtype=torch.bfloat16)
    q, k, v = (t.requires_grad_() for t in qkv.clone().unbind(2))
    check_forward_and_grads("cuda", q, k, v)


def test_op_copies_rows_that_are_not_16_byte_aligned():
    base = torch.randn(1 * 77 * 2 * 40 + 1, device=DEV, dtype=torch.float16)
    q = base[1:].view(1, 77, 2, 40)  # storage offset 1 element: rows not 16-byte aligned
    assert q.data_ptr() % 16 != 0
    out, _ = torch.ops.fastdiff.attention_fwd(q, q, q, None, None, 40**-0.5)
    assert_within_2x(out, same_precision(q, q, q), float64_sdpa(q, q, q), torch.float16)


def test_backward_is_bitwise_reproducible():
    q, k, v = rand_qkv(2, 1031, 1031, 4, 64, torch.float16, DEV, requires_grad=True)
    g = torch.randn(q.shape, device=DEV, dtype=torch.float16)
    with fastdiff.backend("cuda"):
        first = torch.autograd.grad(attention(q, k, v), (q, k, v), g)
        second = torch.autograd.grad(attention(q, k, v), (q, k, v), g)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_opcheck_forward_and_backward():
    q, k, v = rand_qkv(1, 33, 77, 2, 40, torch.float16, DEV, requires_grad=True)
    mask = torch.rand(1, 77, device=DEV) > 0.3
    bias = torch.randn(1, 1, 33, 77, device=DEV).half().expand(1, 2, 33, 77)
    for args in ((q, k, v, None, None, 0.25), (q, k, v, mask, bias, 0.25)):
        torch.library.opcheck(torch.ops.fastdiff.attention_fwd, args)
    out, lse = torch.ops.fastdiff.attention_fwd(q.detach(), k.detach(), v.detach(), mask, None, 0.25)
    g = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.fastdiff.attention_bwd, (g, q.detach(), k.detach(), v.detach(), out, lse, mask, None, 0.25)
    )


def test_forward_and_backward_replay_from_a_cuda_graph():
    q, k, v = rand_qkv(2, 300, 77, 4, 64, torch.float16, DEV)
    g = torch.randn(q.shape, device=DEV, dtype=torch.float16)
    fwd, bwd = torch.ops.fastdiff.attention_fwd, torch.ops.fastdiff.attention_bwd
    out, lse = fwd(q, k, v, None, None, 0.125)  # warm-up: kernels loaded, shared-memory opt-in set
    expected = bwd(g, q, k, v, out, lse, None, None, 0.125)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = fwd(q, k, v, None, None, 0.125)
        g_grads = bwd(g, q, k, v, g_out, g_lse, None, None, 0.125)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_out, out)
    for a, b in zip(g_grads, expected):
        assert torch.equal(a, b)
