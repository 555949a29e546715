"""fastdiff.ops.attention: kernels against float64 SDPA, masks, odd sizes, autograd, bad input.

Accuracy criterion (as in flash-attention's tests): against float64 SDPA, a kernel's max error is at
most 2x the error of a plain PyTorch implementation run in the same precision (matmul, softmax,
matmul in fp16/bf16: what SDPA's math backend computes on a GPU; on CPU that backend upcasts to
float32, so it would not be a same-precision baseline), plus a tiny absolute floor (5% of the
dtype's epsilon) for cases where the baseline happens to be exact.

Under TRITON_INTERPRET=1 the Triton kernels run on CPU through numpy; fp16 tl.dot is emulated there
with float32 accumulation. Triton 3.9's interpreter mishandles bfloat16 (tl.dot multiplies bit
patterns, float32 -> bf16 casts truncate), so for bfloat16 the interpreted kernels multiply in
float32 (exact for bf16 inputs) and round to nearest even themselves (fastdiff/triton/attention.py). Shapes stay tiny (B <= 2, H <= 2, N <= 80) to keep this fast.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fastdiff
from fastdiff import _backend
from fastdiff.ops import InputError, attention, attention_reference
from tests.conftest import kernel_backends

attn_mod = __import__("fastdiff.ops.attention", fromlist=["_"])

HALF = [torch.float16, torch.bfloat16]
_EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _attention_backends():
    """(backend, device) pairs that serve attention kernels here."""
    out = []
    for name, dev in kernel_backends():
        if name == "triton" or (name in ("cuda", "cpu") and attn_mod.FAMILY.carried(name)):
            out.append((name, dev))
    return out


BACKENDS = _attention_backends()
backend_param = pytest.mark.parametrize("backend, dev", BACKENDS, ids=[f"{b}-{d}" for b, d in BACKENDS])


@pytest.fixture(params=["one_block", "tiled"])
def kv_path(request, monkeypatch):
    """Run the Triton forward through its one-key-block path, or force the tiled online softmax."""
    if request.param == "tiled":
        tri = pytest.importorskip("fastdiff.triton.attention")
        monkeypatch.setattr(tri, "SHORT_KV_MAX", 0)
    return request.param


def run(backend, q, k, v, **kw):
    with fastdiff.backend(backend):
        return attention(q, k, v, **kw)


def rand_qkv(b, nq, nk, h, d, dtype, dev, *, requires_grad=False):
    g = torch.Generator().manual_seed(b * 1000003 + nq * 1009 + nk * 101 + h * 11 + d)
    q, k, v = (torch.randn(b, n, h, d, generator=g).to(dev, dtype) for n in (nq, nk, nk))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def same_precision(q, k, v, *, mask=None, scale=None):
    """Eager matmul-softmax-matmul in the inputs' dtype: the accuracy baseline (module docstring)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    s = (qt @ kt.transpose(-1, -2)) * scale
    if mask is not None and mask.dtype == torch.bool:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    elif mask is not None:
        s = s + mask.to(s.dtype)
    alive = ~torch.isneginf(s).all(-1, keepdim=True)
    p = torch.where(alive, torch.softmax(torch.where(alive, s, 0), -1), 0)
    return (p @ vt).transpose(1, 2)


def float64_sdpa(q, k, v, *, mask=None, scale=None):
    """The float64 reference: PyTorch SDPA in float64 (fully masked rows defined as zeros)."""
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    return attention_reference(q.double(), k.double(), v.double(), mask=mask, scale=scale)


def max_err(a, b):
    assert not torch.isnan(a).any(), "NaN in result"
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_2x(out, base, ref, dtype, what="output"):
    err, base_err = max_err(out, ref), max_err(base, ref)
    bound = 2 * base_err + 0.05 * _EPS[dtype] * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{what}: error {err:.3g} > 2 x same-precision error {base_err:.3g} (+ floor)"


def check_forward_and_grads(backend, q, k, v, *, mask=None, scale=None, grads=True):
    dtype = q.dtype
    out = run(backend, q, k, v, mask=mask, scale=scale)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    q64, k64, v64 = (t.detach().double().requires_grad_(grads) for t in (q, k, v))
    ref = float64_sdpa(q64, k64, v64, mask=mask, scale=scale)
    qb, kb, vb = (t.detach().clone().requires_grad_(grads) for t in (q, k, v))
    base = same_precision(qb, kb, vb, mask=mask, scale=scale)
    assert_within_2x(out, base, ref, dtype)
    if not grads:
        return out, None
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, dtype)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), g)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    bq, bk, bv = torch.autograd.grad(base, (qb, kb, vb), g)
    for name, got, b, r in (("dq", gq, bq, rq), ("dk", gk, bk, rk), ("dv", gv, bv, rv)):
        assert got.shape == r.shape and got.dtype == dtype
        assert_within_2x(got, b, r, dtype, name)
    return out, (gq, gk, gv)


# --------------------------------------------------------------------------------------------
# Accuracy: forward and gradients, cross- and self-attention shapes, odd sizes
# --------------------------------------------------------------------------------------------
FORWARD_SHAPES = [  # (B, Nq, Nk, H, D)
    (1, 33, 77, 2, 40),  # SD-1.5 cross-attention shape (77 text tokens), D = 32 + 16 (8 columns padded)
    (1, 1, 20, 2, 72),  # one query, D = 64 + 16 (8 padded; DiT / PixArt)
    (1, 17, 1, 2, 64),  # one key
    (2, 40, 40, 1, 80),  # self-attention, D = 64 + 16
    (1, 9, 30, 1, 160),  # D = 128 + 32
    (1, 20, 50, 1, 120),  # D = 64 + 32 + 32 (only the last chunk pads: 24 -> 32)
    (1, 20, 70, 1, 8),  # smallest head dim: one 16-wide chunk, half padding
    (1, 12, 19, 1, 104),  # D = 64 + 32 + 16 (8 padded)
]


@backend_param
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", FORWARD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_error_at_most_twice_same_precision(backend, dev, dtype, shape, kv_path):
    if kv_path == "tiled" and backend != "triton":
        pytest.skip("the path switch is the Triton launcher's")
    q, k, v = rand_qkv(*shape, dtype, dev)
    check_forward_and_grads(backend, q, k, v, grads=False)


GRAD_CASES = [  # (dtype, (B, Nq, Nk, H, D)); bf16 on two shapes only (interpreter time)
    (torch.float16, (1, 20, 77, 1, 40)),
    (torch.float16, (1, 1, 20, 1, 72)),
    (torch.float16, (1, 17, 1, 1, 64)),
    (torch.float16, (1, 24, 40, 1, 80)),
    (torch.bfloat16, (1, 20, 77, 1, 40)),
    (torch.bfloat16, (1, 24, 40, 1, 80)),
]


@backend_param
@pytest.mark.parametrize("dtype, shape", GRAD_CASES, ids=lambda c: str(c).replace("torch.", "") if isinstance(c, torch.dtype) else "x".join(map(str, c)))
def test_gradients_error_at_most_twice_same_precision(backend, dev, dtype, shape):
    q, k, v = rand_qkv(*shape, dtype, dev, requires_grad=True)
    check_forward_and_grads(backend, q, k, v)


@backend_param
def test_tiled_path_gradients(backend, dev, kv_path):
    q, k, v = rand_qkv(1, 20, 45, 2, 72, torch.float16, dev, requires_grad=True)
    check_forward_and_grads(backend, q, k, v, scale=0.3)


@backend_param
def test_log_sum_exp_is_saved_in_natural_log_units(backend, dev, kv_path):
    q, k, v = rand_qkv(1, 20, 37, 2, 40, torch.float16, dev)
    mask = torch.ones(1, 37, dtype=torch.bool, device=dev)
    op = torch.ops.fastdiff.attention_fwd_triton if backend == "triton" else torch.ops.fastdiff.attention_fwd
    _, lse = op(q, k, v, mask, None, 0.25)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * 0.25
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 20)
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=1e-3, rtol=1e-3)
    _, lse = op(q, k, v, torch.zeros_like(mask), None, 0.25)
    assert torch.isposinf(lse).all(), "a fully masked row saves lse = +inf"


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
@backend_param
@pytest.mark.parametrize("dtype", HALF)
def test_key_padding_mask_with_a_fully_masked_sample(backend, dev, dtype, kv_path):
    q, k, v = rand_qkv(2, 12, 20, 1, 40, dtype, dev, requires_grad=True)
    mask = torch.rand(2, 20, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[1] = False  # every query of sample 1 is fully masked
    mask = mask.to(dev)
    out, (gq, gk, gv) = check_forward_and_grads(backend, q, k, v, mask=mask)
    assert (out[1] == 0).all()
    assert (gq[1] == 0).all() and (gk[1] == 0).all() and (gv[1] == 0).all()
    assert (gk[0][~mask[0]] == 0).all() and (gv[0][~mask[0]] == 0).all(), "masked keys get zero gradients"


@backend_param
@pytest.mark.parametrize("bias_shape", [(9, 20), (2, 1, 1, 20), (2, 2, 9, 20), (1, 2, 9, 1)], ids=str)
def test_additive_bias_broadcasts(backend, dev, bias_shape):
    q, k, v = rand_qkv(2, 9, 20, 2, 72, torch.float16, dev, requires_grad=True)
    bias = torch.randn(bias_shape, generator=torch.Generator().manual_seed(5)).to(dev, torch.float16)
    check_forward_and_grads(backend, q, k, v, mask=bias)


@backend_param
def test_bias_rows_of_minus_infinity_give_zeros_and_zero_gradients(backend, dev, kv_path):
    q, k, v = rand_qkv(1, 20, 24, 1, 64, torch.bfloat16, dev, requires_grad=True)
    bias = torch.randn(20, 24).to(dev, torch.bfloat16)
    bias[3] = float("-inf")
    bias[5, :20] = float("-inf")  # partially masked row: attends keys 20..23 only
    out, (gq, gk, gv) = check_forward_and_grads(backend, q, k, v, mask=bias)
    assert (out[:, 3] == 0).all() and (gq[:, 3] == 0).all()


@backend_param
def test_float32_bias_is_converted_to_the_query_dtype(backend, dev):
    q, k, v = rand_qkv(1, 9, 12, 1, 16, torch.float16, dev)
    bias = torch.randn(9, 12, device=dev)
    torch.testing.assert_close(run(backend, q, k, v, mask=bias), run(backend, q, k, v, mask=bias.half()))


# --------------------------------------------------------------------------------------------
# Layout: diffusers' (B, H, N, D) through strides, non-contiguous views
# --------------------------------------------------------------------------------------------
@backend_param
def test_bhnd_tensors_are_read_through_strides_without_copies(backend, dev):
    qh, kh, vh = (torch.randn(2, 2, n, 40).to(dev, torch.float16) for n in (18, 25, 25))  # (B, H, N, D)
    q, k, v = (t.transpose(1, 2) for t in (qh, kh, vh))
    assert all(attn_mod._kernel_layout(t) is t for t in (q, k, v)), "a transposed view needs no copy"
    out = run(backend, q, k, v)
    ref = F.scaled_dot_product_attention(qh.double(), kh.double(), vh.double()).transpose(1, 2)
    assert_within_2x(out, same_precision(q, k, v), ref, torch.float16)


@backend_param
def test_fused_qkv_views_and_odd_strides(backend, dev):
    qkv = torch.randn(2, 23, 3, 2, 24).to(dev, torch.bfloat16)  # (B, N, 3, H, D): a fused projection
    q, k, v = qkv.unbind(2)
    out = run(backend, q, k, v)
    assert_within_2x(out, same_precision(q, k, v), float64_sdpa(q, k, v), torch.bfloat16)
    # head dim not contiguous: copied once by the entry point, still correct
    qt = torch.randn(1, 9, 2, 16, device=dev).half().transpose(-1, -2).contiguous().transpose(-1, -2)
    assert qt.stride(-1) != 1
    out = run(backend, qt, qt, qt)
    assert_within_2x(out, same_precision(qt, qt, qt), float64_sdpa(qt, qt, qt), torch.float16)


@backend_param
def test_backward_is_deterministic(backend, dev):
    q, k, v = rand_qkv(1, 20, 35, 1, 40, torch.float16, dev, requires_grad=True)
    g = torch.randn(q.shape).to(dev, torch.float16)
    first = torch.autograd.grad(run(backend, q, k, v), (q, k, v), g)
    second = torch.autograd.grad(run(backend, q, k, v), (q, k, v), g)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@backend_param
def test_empty_inputs(backend, dev):
    for b, nq, nk, h in ((0, 5, 5, 2), (1, 0, 5, 2), (1, 5, 5, 0), (1, 5, 0, 2)):
        q, k, v = rand_qkv(b, nq, nk, h, 16, torch.float16, dev)
        out = run(backend, q, k, v)
        assert out.shape == q.shape and (out == 0).all()


# --------------------------------------------------------------------------------------------
# The reference (what CPU tensors and float32/float64 run) is the specification
# --------------------------------------------------------------------------------------------
def naive(q, k, v, scale, key_mask=None, bias=None):
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if bias is not None:
        s = s + bias
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    dead = torch.isneginf(s).all(-1, keepdim=True)
    p = torch.where(dead, 0.0, torch.softmax(torch.where(dead, 0.0, s), -1))
    return torch.einsum("bhij,bjhd->bihd", p, v)


@pytest.mark.parametrize("kind", ["none", "key_mask", "bias", "both"])
def test_reference_matches_the_formula_in_float64(kind):
    q, k, v = rand_qkv(2, 7, 9, 3, 12, torch.float64, "cpu")
    key_mask = torch.rand(2, 9) > 0.3 if kind in ("key_mask", "both") else None
    if key_mask is not None:
        key_mask[1] = False
    bias = torch.randn(3, 7, 9, dtype=torch.float64) if kind in ("bias", "both") else None
    if bias is not None:
        bias[1, 2] = float("-inf")
    out = attention_reference(q, k, v, key_mask=key_mask, bias=bias, scale=0.4)
    torch.testing.assert_close(out, naive(q, k, v, 0.4, key_mask, bias), rtol=1e-12, atol=1e-12)


def test_cpu_float64_runs_the_reference():
    assert attn_mod.select_backend(torch.randn(1, 2, 1, 8, dtype=torch.float64)) == "reference"
    q, k, v = rand_qkv(1, 5, 6, 2, 12, torch.float64, "cpu")
    out = attention(q, k, v)
    torch.testing.assert_close(out.double(), naive(q.double(), k.double(), v.double(), 12**-0.5), rtol=1e-5, atol=1e-6)


def test_reference_gradcheck_with_mask_and_bias_gradient():
    q, k, v = rand_qkv(1, 3, 5, 2, 8, torch.float64, "cpu", requires_grad=True)
    mask = torch.tensor([[True, False, True, True, False]])
    bias = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, mask=mask), (q, k, v), fast_mode=True)
    assert torch.autograd.gradcheck(lambda q, b: attention(q, k, v, mask=b), (q, bias), fast_mode=True)


def test_compiles_fullgraph_on_cpu():
    q, k, v = rand_qkv(2, 6, 7, 2, 16, torch.float32, "cpu")
    mask = torch.rand(2, 7) > 0.2
    fn = torch.compile(lambda q, k, v, m: attention(q, k, v, mask=m, scale=0.3), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(q, k, v, mask), attention(q, k, v, mask=mask, scale=0.3))


# --------------------------------------------------------------------------------------------
# Registration: opcheck on the kernel ops
# --------------------------------------------------------------------------------------------
@backend_param
def test_opcheck(backend, dev):
    name = "attention_fwd_triton" if backend == "triton" else "attention_fwd"
    op = getattr(torch.ops.fastdiff, name)
    q, k, v = rand_qkv(1, 3, 5, 1, 16, torch.float16, dev, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, False]], device=dev)
    bias = torch.randn(1, 1, 3, 5, device=dev).half().expand(1, 1, 3, 5)
    torch.library.opcheck(op, (q, k, v, None, None, 0.25))
    torch.library.opcheck(op, (q, k, v, mask, bias, 0.25))


# --------------------------------------------------------------------------------------------
# Backend choice and bad input
# --------------------------------------------------------------------------------------------
def test_forced_backends_that_cannot_serve_say_why():
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(fastdiff.BackendUnavailable, match="the cpu kernels of attention take float32, float16 or bfloat16, got torch.float64"):
        run("cpu", q.double(), q.double(), q.double())
    with pytest.raises(fastdiff.BackendUnavailable, match="backend 'cuda' cannot serve"):
        run("cuda", q, q, q)
    if _backend.device_reason("triton", q.device) is None:
        with pytest.raises(fastdiff.BackendUnavailable, match="triton attention needs fp16/bf16 and D a multiple of 8 <= 256, got torch.float32"):
            run("triton", q, q, q)
        h = torch.randn(1, 4, 2, 12).half()
        with pytest.raises(fastdiff.BackendUnavailable, match="D a multiple of 8 <= 256, got torch.float16 and D=12"):
            run("triton", h, h, h)
        h = torch.randn(1, 4, 2, 264).half()
        with pytest.raises(fastdiff.BackendUnavailable, match="D=264"):
            run("triton", h, h, h)
        h = torch.randn(1, 4, 2, 16).half()
        b = torch.zeros(4, 4, dtype=torch.half, requires_grad=True)
        with pytest.raises(fastdiff.BackendUnavailable, match="does not differentiate the bias"):
            run("triton", h, h, h, mask=b)


def test_unsupported_head_dims_fall_back_to_the_reference_when_not_forced():
    h = torch.randn(1, 4, 2, 12).half()
    torch.testing.assert_close(attention(h, h, h).double(), naive(*(t.double() for t in (h, h, h)), 12**-0.5), atol=2e-3, rtol=2e-3)


def test_info_lists_the_attention_kernels():
    table = fastdiff.info()["attention"]
    assert set(table) == {"cuda", "triton", "cpu", "reference"}
    assert "fp16/bf16" in table["triton"] and "80" in table["triton"]


q4 = torch.randn(2, 5, 3, 8)
k4 = torch.randn(2, 6, 3, 8)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((q4[0], k4, k4), {}, r"argument 'q' expected a 4-D \(B, Nq, H, D\) tensor"),
        ((q4, k4[:, :, :2], k4), {}, r"argument 'k' expected a 4-D \(B, Nk, H, D\) = \(2, Nk, 3, 8\) tensor"),
        ((q4, k4, k4[:, :5]), {}, r"argument 'v' expected the shape of k \(2, 6, 3, 8\)"),
        ((q4, k4.half(), k4), {}, "argument 'k' expected dtype torch.float32 \\(like q\\)"),
        ((q4.long(), k4, k4), {}, "argument 'q' expected dtype"),
        ((q4, k4, k4), {"mask": torch.ones(2, 5, dtype=torch.bool)}, r"argument 'mask' expected a bool key-padding mask of shape \(B, Nk\) = \(2, 6\)"),
        ((q4, k4, k4), {"mask": torch.zeros(4, 6)}, r"argument 'mask' expected a float bias broadcastable to \(B, H, Nq, Nk\)"),
        ((q4, k4, k4), {"mask": torch.zeros(2, 6, dtype=torch.long)}, "argument 'mask' expected a bool key-padding mask or a floating-point"),
        ((q4, k4, k4), {"mask": [True]}, "argument 'mask' expected None, a bool"),
        ((q4, k4, k4), {"scale": float("inf")}, "argument 'scale' expected None or a finite number"),
        ((q4, k4, k4), {"scale": torch.tensor(1.0)}, "argument 'scale' expected None or a finite number"),
        ((q4[..., :0], k4[..., :0], k4[..., :0]), {}, "argument 'q' expected a head dim D >= 1"),
    ],
)
def test_bad_input_is_refused_clearly(args, kwargs, match):
    with pytest.raises(InputError, match=r"fastdiff\.attention: " + match):
        attention(*args, **kwargs)


def test_head_dims_split_into_power_of_two_chunks_of_at_least_16():
    tri = pytest.importorskip("fastdiff.triton.attention")
    assert tri.head_dim_chunks(80) == (64, 16, 0) and tri.head_dim_chunks(160) == (128, 32, 0)
    assert tri.head_dim_chunks(112) == (64, 32, 16) and tri.head_dim_chunks(120) == (64, 32, 32)
    # Triton 3.6 takes no tl.dot shallower than 16: 8-wide remainders pad to 16 (masked columns).
    assert tri.head_dim_chunks(72) == (64, 16, 0) and tri.head_dim_chunks(40) == (32, 16, 0)
    assert tri.head_dim_chunks(8) == (16, 0, 0) and tri.head_dim_chunks(104) == (64, 32, 16)
    for d in range(8, 257, 8):
        chunks = [c for c in tri.head_dim_chunks(d) if c]
        assert all(c & (c - 1) == 0 and c >= 16 for c in chunks) and sum(chunks) >= d
        assert (sum(chunks) == d) == (d in attn_mod.TRITON_EXACT_HEAD_DIMS), d
    for d in (64, 80, 96, 128, 160, 256):
        assert d in attn_mod.TRITON_EXACT_HEAD_DIMS
