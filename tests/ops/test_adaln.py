"""fastdiff.ops adaln family: adaln_modulate, gated_residual, gated_residual_adaln.

Every kernel backend against the float64 reference, values and every gradient; the explicit
backward formulas (what the kernels implement) against autograd; opcheck of every forward and
backward op; determinism of the token sums; large fp16 inputs; clear errors on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import _backend
from fastdiff.ops import (
    InputError,
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual,
    gated_residual_adaln,
    gated_residual_adaln_reference,
    gated_residual_reference,
)
from fastdiff.ops import adaln as A

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, ulps: float = 2.0, floor_ulps: float = 0.05, cond: float = 0.0):
    """Each element within `ulps` ulp of the float64 reference, plus `floor_ulps` ulp of the largest
    |reference| (the float32 arithmetic inside the kernels); fp32 within 1e-5 of the scale. NaN never passes.
    ``cond`` raises the scale to the size of the terms a result is the difference of (a LayerNorm
    gradient is rstd * (g - mean(g) - xhat mean(g xhat)), near 0 over a row of two)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "output holds NaN"
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, cond)
    if out.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * scale)
    else:
        eps = _EPS[out.dtype]
        torch.testing.assert_close(out.double(), ref.double(), rtol=ulps * eps, atol=floor_ulps * eps * scale + 1e-12)


def run(backend: str, fn, *args, **kwargs):
    with fastdiff.backend(backend):
        return fn(*args, **kwargs)


@dataclass
class Inputs:
    x: torch.Tensor
    gate: torch.Tensor
    h: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.gate, self.h, self.shift, self.scale, self.weight, self.bias) if t is not None]

    def map(self, f) -> "Inputs":
        return Inputs(*(None if t is None else f(t) for t in (self.x, self.gate, self.h, self.shift, self.scale, self.weight, self.bias)))


def make(shape, dtype, dev, *, per_token=(False, False, False), affine=False, seed=0) -> Inputs:
    """Random inputs with a nonzero row mean; per_token = (shift, scale, gate)."""
    g = torch.Generator().manual_seed(seed)
    b, n, d = shape

    def r(*s, k=1.0, c=0.0):
        return (torch.randn(*s, generator=g) * k + c).to(dtype).to(dev)

    def mod(pt, k):
        return r(b, n, d, k=k) if pt else r(b, d, k=k)

    return Inputs(
        x=r(b, n, d, k=2.0, c=0.5), gate=mod(per_token[2], 1.0), h=r(b, n, d), shift=mod(per_token[0], 0.5),
        scale=mod(per_token[1], 0.5), weight=r(d, k=0.5, c=1.0) if affine else None, bias=r(d, k=0.5) if affine else None,
    )


# Each op as f(inputs, norm) -> tuple of outputs, for the entry point; the references also take the
# dtype of the kernel under test: the fused op normalises x_out as stored in that dtype.
def op_modulate(fn):
    return lambda i, norm, dtype=None: (fn(i.x, i.shift, i.scale, eps=1e-6, weight=i.weight, bias=i.bias, norm=norm),)


def op_residual(fn):
    return lambda i, norm, dtype=None: (fn(i.x, i.gate, i.h),)


def op_fused(fn, reference=False):
    def call(i, norm, dtype=None):
        kw = {"x_out_dtype": dtype} if reference else {}
        return tuple(fn(i.x, i.gate, i.h, i.shift, i.scale, eps=1e-6, weight=i.weight, bias=i.bias, norm=norm, **kw))

    return call


OPS = {
    "adaln_modulate": (op_modulate(adaln_modulate), op_modulate(adaln_modulate_reference)),
    "gated_residual": (op_residual(gated_residual), op_residual(gated_residual_reference)),
    "gated_residual_adaln": (op_fused(gated_residual_adaln), op_fused(gated_residual_adaln_reference, reference=True)),
}


def used(op: str, i: Inputs) -> list[torch.Tensor]:
    """The inputs each op reads (the ones that get gradients)."""
    if op == "adaln_modulate":
        return [t for t in (i.x, i.shift, i.scale, i.weight, i.bias) if t is not None]
    if op == "gated_residual":
        return [i.x, i.gate, i.h]
    return i.tensors()


# (shape, (shift, scale, gate) per token, affine, norm): odd D, D not a power of two, N = 1.
CASES = [
    ((2, 5, 37), (False, False, False), False, "layer"),
    ((3, 4, 48), (True, True, True), True, "layer"),
    ((2, 1, 100), (False, True, False), True, "rms"),
    ((1, 6, 33), (True, False, True), False, "rms"),
]
CPU_ONLY_CASES = [((2, 7, 1152), (False, False, False), True, "layer"), ((2, 3, 1536), (True, False, False), False, "rms")]


def _case_id(c):
    shape, pt, affine, norm = c
    return f"{'x'.join(map(str, shape))}-{''.join('t' if p else 's' for p in pt)}-{'affine' if affine else 'plain'}-{norm}"


def _cases(backend):
    return CASES + (CPU_ONLY_CASES if backend != "triton" else [])


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_gradients_match_float64_reference(backend_device, op, dtype):
    """Forward outputs and the gradient of every input, through the kernels' autograd, vs float64 autograd."""
    backend, dev = backend_device
    fn, ref_fn = OPS[op]
    for k, (shape, pt, affine, norm) in enumerate(_cases(backend)):
        if backend == "triton" and dtype != torch.float32 and k >= 2:
            continue  # the Triton interpreter is slow: low precision on the first two cases only
        inp = make(shape, dtype, dev, per_token=pt, affine=affine, seed=k)
        leaves = inp.map(lambda t: t.detach().requires_grad_())
        outs = run(backend, fn, leaves, norm)
        ref_leaves = inp.map(lambda t: t.detach().double().requires_grad_())
        refs = ref_fn(ref_leaves, norm, dtype)
        # The Triton interpreter truncates float32 -> bfloat16 (compiled Triton rounds to nearest), so its
        # x_out may sit 1 ulp from the reference's; the normalisation scales that by rstd.
        tol = {"ulps": 2, "floor_ulps": 0.05}
        if op == "gated_residual_adaln" and backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreting():
            tol = {"ulps": 4, "floor_ulps": 1.0}
        for o, r in zip(outs, refs):
            assert o.dtype == dtype
            assert_close(o, r, **tol)
        grads_out = [torch.randn(o.shape, generator=torch.Generator().manual_seed(k + 7)).to(dtype).to(dev) for o in outs]
        got = torch.autograd.grad(outs, used(op, leaves), grads_out)
        want = torch.autograd.grad(refs, used(op, ref_leaves), [g.double() for g in grads_out])
        for g, w in zip(got, want):
            assert g.dtype == dtype and g.shape == w.shape
            assert_close(g, w, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_op_equals_gated_residual_then_modulate(backend_device, dtype):
    backend, dev = backend_device
    i = make((2, 4, 40), dtype, dev, per_token=(False, True, False), affine=True, seed=11)
    for norm in ("layer", "rms"):
        x_out, out = run(backend, gated_residual_adaln, i.x, i.gate, i.h, i.shift, i.scale, weight=i.weight, bias=i.bias, norm=norm)
        x_new = run(backend, gated_residual, i.x, i.gate, i.h)
        assert torch.equal(x_out, x_new)
        torch.testing.assert_close(out, run(backend, adaln_modulate, x_new, i.shift, i.scale, weight=i.weight, bias=i.bias, norm=norm))


def _stats_ref_args(i: Inputs):
    return [None if t is None else t.double() for t in (i.weight, i.bias)]


@pytest.mark.parametrize("case", CASES[:2] + CASES[3:], ids=_case_id)
def test_backward_ops_compute_what_the_schema_documents(backend_device, case):
    """Each backward op, called directly with the forward's saved statistics, vs its float64 reference."""
    backend, dev = backend_device
    shape, pt, affine, norm = case
    rms = norm == "rms"
    i = make(shape, torch.float32, dev, per_token=pt, affine=affine, seed=3)
    sfx = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastdiff
    w64, b64 = _stats_ref_args(i)
    g = torch.randn(shape).to(dev)
    g2 = torch.randn(shape).to(dev)

    out, mean, rstd = getattr(ops, "adaln_modulate" + sfx)(i.x, i.shift, i.scale, i.weight, i.bias, 1e-6, rms)
    r_out, r_mean, r_rstd = A.adaln_modulate_forward_reference(i.x.double(), i.shift.double(), i.scale.double(), w64, b64, 1e-6, rms)
    for a, b in zip((out, mean, rstd), (r_out, r_mean, r_rstd)):
        assert_close(a, b)
    got = getattr(ops, "adaln_modulate_backward" + sfx)(g, i.x, i.scale, i.weight, i.bias, mean, rstd, rms, pt[0])
    want = A.adaln_modulate_backward_reference(g.double(), i.x.double(), i.scale.double(), w64, b64, mean.double(),
                                               rstd.double(), rms, pt[0])
    for a, b in zip(got, want):
        assert_close(a, b)

    got = getattr(ops, "gated_residual_backward" + sfx)(g, i.gate, i.h)
    for a, b in zip(got, A.gated_residual_backward_reference(g.double(), i.gate.double(), i.h.double())):
        assert_close(a, b)

    x_out, out, mean, rstd = getattr(ops, "gated_residual_adaln" + sfx)(i.x, i.gate, i.h, i.shift, i.scale, i.weight, i.bias, 1e-6, rms)
    refs = A.gated_residual_adaln_forward_reference(i.x.double(), i.gate.double(), i.h.double(), i.shift.double(),
                                                    i.scale.double(), w64, b64, 1e-6, rms)
    for a, b in zip((x_out, out, mean, rstd), refs):
        assert_close(a, b)
    got = getattr(ops, "gated_residual_adaln_backward" + sfx)(g2, g, x_out, i.gate, i.h, i.scale, i.weight, i.bias,
                                                              mean, rstd, rms, pt[0])
    want = A.gated_residual_adaln_backward_reference(g2.double(), g.double(), x_out.double(), i.gate.double(),
                                                     i.h.double(), i.scale.double(), w64, b64, mean.double(),
                                                     rstd.double(), rms, pt[0])
    for a, b in zip(got, want):
        assert_close(a, b)


class _ExplicitBackward(torch.autograd.Function):
    """The reference forward with the explicit reference backward (the formulas the kernels implement)."""

    @staticmethod
    def forward(ctx, x, gate, h, shift, scale, weight, bias, rms):
        x_out, out, mean, rstd = A.gated_residual_adaln_forward_reference(x, gate, h, shift, scale, weight, bias, 1e-6, rms)
        ctx.save_for_backward(x_out, gate, h, scale, weight, bias, mean, rstd)
        ctx.rms, ctx.spt = rms, shift.dim() == 3
        return x_out, out

    @staticmethod
    def backward(ctx, g_xo, g_out):
        x_out, gate, h, scale, weight, bias, mean, rstd = ctx.saved_tensors
        gx, gg, gh, gs, gsc, gw, gb = A.gated_residual_adaln_backward_reference(
            g_xo, g_out, x_out, gate, h, scale, weight, bias, mean, rstd, ctx.rms, ctx.spt)
        return gx, gg, gh, gs, gsc, gw, gb, None


class _ExplicitModulateBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, weight, bias, rms):
        out, mean, rstd = A.adaln_modulate_forward_reference(x, shift, scale, weight, bias, 1e-6, rms)
        ctx.save_for_backward(x, scale, weight, bias, mean, rstd)
        ctx.rms, ctx.spt = rms, shift.dim() == 3
        return out

    @staticmethod
    def backward(ctx, g):
        x, scale, weight, bias, mean, rstd = ctx.saved_tensors
        return (*A.adaln_modulate_backward_reference(g, x, scale, weight, bias, mean, rstd, ctx.rms, ctx.spt), None)


class _ExplicitResidualBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, h):
        ctx.save_for_backward(gate, h)
        return gated_residual_reference(x, gate, h)

    @staticmethod
    def backward(ctx, g):
        gate, h = ctx.saved_tensors
        return (g, *A.gated_residual_backward_reference(g, gate, h))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_formulas_pass_gradcheck_in_float64(case):
    _, pt, affine, norm = case
    i = make((2, 3, 7), torch.float64, "cpu", per_token=pt, affine=True, seed=1).map(lambda t: t.requires_grad_())
    rms = norm == "rms"
    assert torch.autograd.gradcheck(lambda *a: _ExplicitBackward.apply(*a, rms), (i.x, i.gate, i.h, i.shift, i.scale, i.weight, i.bias))
    assert torch.autograd.gradcheck(lambda *a: _ExplicitModulateBackward.apply(*a, rms), (i.x, i.shift, i.scale, i.weight, i.bias))
    assert torch.autograd.gradcheck(_ExplicitResidualBackward.apply, (i.x, i.gate, i.h))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_entry_points_pass_gradcheck_in_float64(norm):
    i = make((2, 3, 10), torch.float64, "cpu", per_token=(False, True, False), affine=True, seed=2)
    i = i.map(lambda t: t.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, s, c, w, b: adaln_modulate(x, s, c, weight=w, bias=b, norm=norm),
                                    (i.x, i.shift, i.scale, i.weight, i.bias))
    assert torch.autograd.gradcheck(gated_residual, (i.x, i.gate, i.h))
    assert torch.autograd.gradcheck(lambda *a: gated_residual_adaln(*a, norm=norm), (i.x, i.gate, i.h, i.shift, i.scale))


def test_modulation_of_shape_b_1_d_equals_b_d(backend_device):
    backend, dev = backend_device
    i = make((2, 3, 24), torch.float32, dev)
    a = run(backend, adaln_modulate, i.x, i.shift, i.scale)
    b = run(backend, adaln_modulate, i.x, i.shift[:, None], i.scale[:, None])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = run(backend, gated_residual, i.x, i.gate[:, None], i.h)
    torch.testing.assert_close(c, run(backend, gated_residual, i.x, i.gate, i.h), rtol=0, atol=0)


def test_non_contiguous_inputs(backend_device):
    backend, dev = backend_device
    base = make((2, 6, 40), torch.float32, dev, per_token=(True, True, True), affine=True)
    nc = base.map(lambda t: t.transpose(0, -1).contiguous().transpose(0, -1) if t.dim() > 1 else t[::1])
    nc.x = torch.randn(2, 40, 12, device=dev).transpose(1, 2)[:, ::2]
    assert not nc.x.is_contiguous() and not nc.shift.is_contiguous()
    for op, (fn, ref_fn) in OPS.items():
        outs = run(backend, fn, nc, "layer")
        for o, r in zip(outs, ref_fn(nc.map(lambda t: t.double()), "layer")):
            assert_close(o, r)


def test_empty_tensors_give_empty_outputs_and_zero_token_sums(backend_device):
    backend, dev = backend_device
    for shape in [(0, 3, 8), (2, 0, 8), (2, 3, 0)]:
        i = make(shape, torch.float32, dev, affine=True).map(lambda t: t.requires_grad_())
        x_out, out = run(backend, gated_residual_adaln, i.x, i.gate, i.h, i.shift, i.scale, weight=i.weight, bias=i.bias)
        assert x_out.shape == out.shape == shape
        loss = out.sum() + x_out.sum() + run(backend, adaln_modulate, i.x, i.shift, i.scale).sum()
        loss = loss + run(backend, gated_residual, i.x, i.gate, i.h).sum()
        grads = torch.autograd.grad(loss, i.tensors())
        for t, gr in zip(i.tensors(), grads):
            assert gr.shape == t.shape
            assert torch.equal(gr, torch.zeros_like(gr)), "a sum over no tokens must be 0"


def test_token_sums_are_deterministic(backend_device):
    """Per-sample and parameter gradients are bitwise identical across runs (and thread counts on CPU)."""
    backend, dev = backend_device
    n = 9 if backend == "triton" else 700
    i = make((2, n, 64), torch.float32, dev, affine=True)
    g = torch.randn(2, n, 64, device=dev)
    ops = torch.ops.fastdiff
    sfx = "_triton" if backend == "triton" else ""
    x_out, _, mean, rstd = getattr(ops, "gated_residual_adaln" + sfx)(i.x, i.gate, i.h, i.shift, i.scale, i.weight, i.bias, 1e-6, False)

    def grads():
        return getattr(ops, "gated_residual_adaln_backward" + sfx)(g, g, x_out, i.gate, i.h, i.scale, i.weight, i.bias,
                                                                   mean, rstd, False, False)

    first = grads()
    threads = torch.get_num_threads()
    try:
        for t in ([1, 2, 3] if backend == "cpu" else [threads]):
            torch.set_num_threads(t)
            for a, b in zip(first, grads()):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_large_fp16_inputs_stay_finite(backend_device):
    """fp16 rows with |x| up to 4e4 (and x + gate*h up to 5e4): float32 statistics keep every output and gradient finite."""
    backend, dev = backend_device
    i = make((2, 5, 96), torch.float16, dev, affine=True)
    i.x = (torch.randn(2, 5, 96) * 2e4).clamp(-4e4, 4e4).half().to(dev)
    i.h = (torch.randn(2, 5, 96) * 1e4).clamp(-2e4, 2e4).half().to(dev)
    i.gate = (torch.rand(2, 96) * 0.5).half().to(dev)
    leaves = i.map(lambda t: t.detach().requires_grad_())
    ref_leaves = i.map(lambda t: t.detach().double().requires_grad_())
    outs = run(backend, OPS["gated_residual_adaln"][0], leaves, "layer") + run(backend, OPS["adaln_modulate"][0], leaves, "layer")
    refs = OPS["gated_residual_adaln"][1](ref_leaves, "layer", torch.float16) + OPS["adaln_modulate"][1](ref_leaves, "layer")
    # Small upstream gradients keep every reference gradient within fp16 range (the gate's sums h * g over tokens).
    gs = [(torch.randn(o.shape) * 0.1).half().to(dev) for o in outs]
    grads = torch.autograd.grad(outs, leaves.tensors(), gs)
    want = torch.autograd.grad(refs, ref_leaves.tensors(), [g.double() for g in gs])
    for o, r in list(zip(outs, refs)) + list(zip(grads, want)):
        assert (r.abs() < torch.finfo(torch.float16).max).all()
        assert torch.isfinite(o).all()
        assert_close(o, r, ulps=4, floor_ulps=1.0)
    for norm in ("layer", "rms"):
        out = run(backend, adaln_modulate, i.x, i.shift, i.scale, norm=norm)
        assert torch.isfinite(out).all()


def test_rms_norm_has_no_mean_subtraction(backend_device):
    backend, dev = backend_device
    x = torch.full((1, 2, 16), 3.0, device=dev)
    zero = torch.zeros(1, 16, device=dev)
    torch.testing.assert_close(run(backend, adaln_modulate, x, zero, zero, norm="rms"), torch.ones_like(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(backend, adaln_modulate, x, zero, zero), torch.zeros_like(x))


def test_matches_torch_layer_norm_expression():
    """The spec in plain words: F.layer_norm(x) * (1 + scale) + shift, and RMSNorm * weight."""
    i = make((2, 9, 72), torch.float64, "cpu", affine=True)
    f = torch.nn.functional
    expected = f.layer_norm(i.x, (72,), eps=1e-6) * (1 + i.scale[:, None]) + i.shift[:, None]
    torch.testing.assert_close(adaln_modulate(i.x, i.shift, i.scale), expected)
    rms = i.x * torch.rsqrt(i.x.pow(2).mean(-1, keepdim=True) + 1e-6) * i.weight
    torch.testing.assert_close(adaln_modulate(i.x, i.shift, i.scale, weight=i.weight, norm="rms"),
                               rms * (1 + i.scale[:, None]) + i.shift[:, None])


def test_float64_falls_back_to_the_reference():
    i = make((2, 3, 8), torch.float64, "cpu")
    torch.testing.assert_close(gated_residual_adaln(i.x, i.gate, i.h, i.shift, i.scale),
                               gated_residual_adaln_reference(i.x, i.gate, i.h, i.shift, i.scale), rtol=0, atol=0)


def test_forced_backend_that_cannot_serve_says_why():
    i = make((2, 3, 8), torch.float32, "cpu")
    with pytest.raises(fastdiff.BackendUnavailable, match="backend 'cuda' cannot serve these inputs"):
        run("cuda", adaln_modulate, i.x, i.shift, i.scale)
    with pytest.raises(fastdiff.BackendUnavailable, match="float64"):
        run("cpu", gated_residual, i.x.double(), i.gate.double(), i.h.double())


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3), n=st.integers(1, 12), d=st.sampled_from([1, 2, 7, 32, 33, 96, 130, 257]),
    dtype=st.sampled_from(DTYPES), norm=st.sampled_from(["layer", "rms"]),
    per_token=st.tuples(st.booleans(), st.booleans(), st.booleans()), affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_cpu(b, n, d, dtype, norm, per_token, affine, seed):
    inp = make((b, n, d), dtype, "cpu", per_token=per_token, affine=affine, seed=seed)
    leaves = inp.map(lambda t: t.detach().requires_grad_())
    ref_leaves = inp.map(lambda t: t.detach().double().requires_grad_())
    fn, ref_fn = OPS["gated_residual_adaln"]
    outs = run("cpu", fn, leaves, norm)
    refs = ref_fn(ref_leaves, norm, dtype)
    for o, r in zip(outs, refs):
        assert_close(o, r)
    gs = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).to(dtype) for o in outs]
    x_out = refs[0].detach()
    rstd = (x_out.var(-1, unbiased=False) if norm == "layer" else x_out.square().mean(-1)).add(1e-6).rsqrt().max().item()
    cond = rstd * max(g.abs().max().item() for g in gs)
    for g, w in zip(torch.autograd.grad(outs, leaves.tensors(), gs),
                    torch.autograd.grad(refs, ref_leaves.tensors(), [g.double() for g in gs])):
        assert_close(g, w, cond=cond)


def _opcheck_inputs(dev):
    """Both layouts at once: shift per token, scale and gate per sample (and the other way round below)."""
    return make((2, 3, 24), torch.float32, dev, per_token=(True, False, False), affine=True, seed=5)


def test_opcheck_forward_ops(backend_device):
    backend, dev = backend_device
    i = _opcheck_inputs(dev).map(lambda t: t.requires_grad_())
    sfx = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastdiff
    per_token = torch.randn(i.x.shape, device=dev, requires_grad=True)
    torch.library.opcheck(getattr(ops, "adaln_modulate" + sfx), (i.x, i.shift, i.scale, i.weight, i.bias, 1e-6, False))
    torch.library.opcheck(getattr(ops, "adaln_modulate" + sfx), (i.x, i.scale, per_token, None, None, 1e-5, True))
    torch.library.opcheck(getattr(ops, "gated_residual" + sfx), (i.x, i.gate, i.h))
    torch.library.opcheck(getattr(ops, "gated_residual" + sfx), (i.x, per_token, i.h))
    torch.library.opcheck(getattr(ops, "gated_residual_adaln" + sfx),
                          (i.x, per_token, i.h, i.scale, i.shift, i.weight, None, 1e-6, True))


def test_opcheck_backward_ops(backend_device):
    backend, dev = backend_device
    i = _opcheck_inputs(dev)
    sfx = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastdiff
    g = torch.randn(i.x.shape, device=dev)
    _, mean, rstd = getattr(ops, "adaln_modulate" + sfx)(i.x, i.shift, i.scale, i.weight, i.bias, 1e-6, False)
    torch.library.opcheck(getattr(ops, "adaln_modulate_backward" + sfx),
                          (g, i.x, i.scale, i.weight, i.bias, mean, rstd, False, True))
    torch.library.opcheck(getattr(ops, "adaln_modulate_backward" + sfx),
                          (g, i.x, i.shift, None, None, mean, rstd, True, False))
    torch.library.opcheck(getattr(ops, "gated_residual_backward" + sfx), (g, i.gate, i.h))
    torch.library.opcheck(getattr(ops, "gated_residual_backward" + sfx), (g, i.shift, i.h))
    torch.library.opcheck(getattr(ops, "gated_residual_adaln_backward" + sfx),
                          (g, g, i.x, i.shift, i.h, i.scale, None, i.bias, mean, rstd, True, False))


def test_compiled_training_step_has_no_graph_breaks():
    """Forward and backward of the three ops traced whole by torch.compile(fullgraph=True) on CPU."""
    i = make((2, 5, 32), torch.float32, "cpu", per_token=(False, True, False), affine=True)
    leaves = i.map(lambda t: t.detach().requires_grad_())

    def step(x, gate, h, shift, scale, w, b):
        y = adaln_modulate(x, shift, scale, weight=w, bias=b)
        x2, z = gated_residual_adaln(x, gate, y * h, shift, scale, norm="rms")
        return gated_residual(x2, gate, z).square().mean()

    eager = step(*leaves.tensors())
    eager_grads = torch.autograd.grad(eager, leaves.tensors())
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves.tensors())
    torch.testing.assert_close(loss, eager)
    for a, b in zip(torch.autograd.grad(loss, leaves.tensors()), eager_grads):
        torch.testing.assert_close(a, b)


B, N, D = 2, 3, 8
_x = lambda **k: torch.randn(B, N, D, **k)  # noqa: E731


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: adaln_modulate(torch.randn(N, D), torch.randn(B, D), torch.randn(B, D)), r"adaln_modulate: argument 'x' expected a \(B, N, D\) tensor"),
        (lambda: adaln_modulate(_x(), torch.randn(B + 1, D), torch.randn(B, D)), r"adaln_modulate: argument 'shift' expected shape \(2, 8\) per sample"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D), torch.randn(B, D + 1)), r"adaln_modulate: argument 'scale' expected shape \(2, 8\)"),
        (lambda: adaln_modulate(_x(), torch.randn(B, N + 1, D), torch.randn(B, D)), r"adaln_modulate: argument 'shift' expected .*\(2, 3, 8\) per token"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D).half(), torch.randn(B, D)), r"adaln_modulate: argument 'shift' expected dtype float32, got torch.float16"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D, device="meta"), torch.randn(B, D)), r"adaln_modulate: argument 'shift' expected a tensor on cpu"),
        (lambda: adaln_modulate(_x().int(), torch.randn(B, D), torch.randn(B, D)), r"adaln_modulate: argument 'x' expected dtype"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D), torch.randn(B, D), weight=torch.randn(D + 1)), r"adaln_modulate: argument 'weight' expected shape \(8,\)"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D), torch.randn(B, D), bias=torch.randn(D).double()), r"adaln_modulate: argument 'bias' expected dtype float32"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D), torch.randn(B, D), eps=-1.0), r"adaln_modulate: argument 'eps' expected a finite number >= 0"),
        (lambda: adaln_modulate(_x(), torch.randn(B, D), torch.randn(B, D), norm="batch"), r"adaln_modulate: argument 'norm' expected 'layer' or 'rms'"),
        (lambda: adaln_modulate(_x(), [0.0] * D, torch.randn(B, D)), r"adaln_modulate: argument 'shift' expected a torch.Tensor"),
        (lambda: gated_residual(_x(), torch.randn(B, D), torch.randn(B, N, D + 1)), r"gated_residual: argument 'h' expected shape \(2, 3, 8\)"),
        (lambda: gated_residual(_x(), torch.randn(B + 1, D), _x()), r"gated_residual: argument 'gate' expected shape"),
        (lambda: gated_residual_adaln(_x(), torch.randn(B, D), _x().half(), torch.randn(B, D), torch.randn(B, D)), r"gated_residual_adaln: argument 'h' expected dtype float32"),
        (lambda: gated_residual_adaln(_x(), torch.randn(B, D), _x(), torch.randn(B, D), torch.randn(3, D)), r"gated_residual_adaln: argument 'scale' expected shape"),
    ],
)
def test_bad_input_is_refused_clearly(call, match):
    with pytest.raises(InputError, match=r"fastdiff\." + match):
        call()


def test_cpu_kernels_refuse_bad_direct_calls():
    """The compiled ops check their own inputs too (they can be called without the entry points)."""
    x = _x()
    with pytest.raises(RuntimeError, match="argument 'shift' expected shape"):
        torch.ops.fastdiff.adaln_modulate(x, torch.randn(B + 1, D), torch.randn(B, D), None, None, 1e-6, False)
    with pytest.raises(RuntimeError, match="expected a contiguous tensor"):
        torch.ops.fastdiff.gated_residual(x.transpose(0, 1), torch.randn(N, D), x.transpose(0, 1))
    with pytest.raises(RuntimeError, match="argument 'mean' expected float32"):
        torch.ops.fastdiff.adaln_modulate_backward(x, x, torch.randn(B, D), None, None, torch.zeros(B, N).double(),
                                                   torch.zeros(B, N), False, False)
