"""fastdiff.ops.group_norm: GroupNorm (+ SiLU) for U-Net and VAE ResNet blocks.

Every kernel backend against the float64 reference, values and every gradient, in NCHW, channels-last,
5-D and non-contiguous layouts, with groups that span several partial blocks; the explicit backward
formulas against autograd; fp16 activations with a large mean; the same bits at any thread count;
opcheck, torch.compile and clear errors on bad input.
"""

from __future__ import annotations

import importlib
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff.ops import InputError, group_norm, group_norm_reference

GN = importlib.import_module("fastdiff.ops.group_norm")  # the module (fastdiff.ops.group_norm is the function)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, ulps: float = 2.0, floor_ulps: float = 0.1):
    """fp32 within 1e-5 of the reference's scale; fp16/bf16 within `ulps` ulp plus `floor_ulps` ulp of
    the largest |reference| (float32 arithmetic inside the kernels). NaN never passes."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "output holds NaN"
    scale = ref.abs().max().item() if ref.numel() else 0.0
    if out.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref.double(), rtol=1e-5, atol=1e-5 * scale)
    else:
        eps = _EPS[out.dtype]
        torch.testing.assert_close(out.double(), ref.double(), rtol=ulps * eps, atol=floor_ulps * eps * scale + 1e-12)


def make(shape, groups, dtype, dev="cpu", *, layout="contiguous", affine=True, seed=0, mean=0.5, std=2.0):
    """(x, weight, bias) with random values (never zeros); x stored in `layout`."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(dtype).to(dev)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    elif layout == "strided":  # a non-contiguous view: every other element of a wider last dim
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64).to(dtype).to(dev)
        wide[..., ::2] = x
        x = wide[..., ::2]
    c = shape[1]
    w = (1 + 0.5 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype).to(dev) if affine else None
    b = (0.5 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype).to(dev) if affine else None
    return x, w, b


def run(backend: str, fn, *args, **kwargs):
    with fastdiff.backend(backend):
        return fn(*args, **kwargs)


def leaves(*ts: Optional[torch.Tensor], double: bool = False) -> list[Optional[torch.Tensor]]:
    return [None if t is None else (t.detach().double() if double else t.detach()).requires_grad_() for t in ts]


def check_against_reference(backend, x, groups, w, b, silu, *, seed=0):
    """Forward and every gradient through the backend's autograd vs float64 autograd of the reference."""
    act = "silu" if silu else None
    xs, ws, bs = leaves(x, w, b)
    out = run(backend, group_norm, xs, groups, ws, bs, activation=act)
    xr, wr, br = leaves(x, w, b, double=True)
    ref = group_norm_reference(xr, groups, wr, br, activation=act)
    assert out.dtype == x.dtype
    assert_close(out, ref)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).to(x.dtype).to(x.device)
    inputs = [t for t in (xs, ws, bs) if t is not None]
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], g.double())
    for gg, ww in zip(got, want):
        assert gg.dtype == x.dtype and gg.shape == ww.shape
        assert_close(gg, ww)
    return out


# (shape, groups, layout, affine): U-Net / VAE-like 4-D in both layouts, 5-D video, 3-D, odd sizes,
# a non-contiguous view, one group per channel and one group for all.
SMALL_CASES = [
    ((2, 8, 5, 7), 4, "contiguous", True),
    ((2, 8, 5, 7), 4, "channels_last", True),
    ((1, 6, 3, 4, 5), 3, "contiguous", False),
    ((2, 6, 3, 4, 5), 2, "channels_last", True),
    ((3, 4, 11), 4, "contiguous", True),
    ((2, 6, 3, 9), 1, "strided", True),
    ((1, 12, 1, 3), 4, "contiguous", True),
]
# Groups that span several partial blocks (16384 elements; 65536 for the CPU's channels-last rows), in
# both CPU NCHW paths: whole groups per task (C/G * S <= 2^18) and the three-phase path; channels-last
# rows of 4 vectors, of single vectors and of a padded last vector (C = 40, 20).
LARGE_CASES = [
    ((1, 4, 130, 130), 2, "contiguous", True),
    ((1, 4, 130, 130), 2, "channels_last", True),
    ((1, 8, 256, 260), 1, "contiguous", True),
    ((2, 32, 40, 40), 8, "channels_last", False),
    ((1, 40, 64, 50), 10, "channels_last", True),
    ((1, 20, 70, 70), 5, "channels_last", True),
]


@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_gradients_match_float64_reference(backend_device, dtype, silu):
    backend, dev = backend_device
    cases = SMALL_CASES + LARGE_CASES
    if backend == "triton" and dev == "cpu":  # the interpreter is slow: both layouts, 5-D and one multi-block case
        cases = SMALL_CASES[:4] + LARGE_CASES[:1] if dtype == torch.float32 else SMALL_CASES[:2]
    for k, (shape, groups, layout, affine) in enumerate(cases):
        x, w, b = make(shape, groups, dtype, dev, layout=layout, affine=affine, seed=k)
        out = check_against_reference(backend, x, groups, w, b, silu, seed=k)
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=GN.memory_format(x)) and not out.is_contiguous()


def test_explicit_backward_formulas_match_autograd():
    """group_norm_backward_reference (what the kernels implement) equals autograd of the forward reference."""
    for k, (shape, groups, _, affine) in enumerate(SMALL_CASES):
        for silu in (False, True):
            x, w, b = make(shape, groups, torch.float64, affine=affine, seed=k)
            xr, wr, br = leaves(x, w, b)
            out, mean, rstd = GN.group_norm_forward_reference(xr, groups, wr, br, 1e-5, silu)
            g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
            want = torch.autograd.grad(out, [t for t in (xr, wr, br) if t is not None], g)
            gx, gw, gb = GN.group_norm_backward_reference(g, x, w, b, mean.detach(), rstd.detach(), groups, silu)
            got = [gx] + ([gw, gb] if affine else [])
            for a, e in zip(got, want):
                torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
            if not affine:
                assert gw.shape == (0,) and gb.shape == (0,)


def test_reference_equals_torch_group_norm_then_silu():
    x, w, b = make((2, 8, 6, 6), 4, torch.float64, seed=3)
    torch.testing.assert_close(group_norm_reference(x, 4, w, b), F.group_norm(x, 4, w, b))
    torch.testing.assert_close(group_norm_reference(x, 4, w, b, activation="silu"), F.silu(F.group_norm(x, 4, w, b)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fp16_with_a_large_mean_keeps_its_precision(backend_device, layout):
    """fp16 activations of mean 1000, std 1: one-pass fp32 sums of x and x^2 would lose every digit."""
    backend, dev = backend_device
    x, w, b = make((2, 8, 24, 24), 4, torch.float16, dev, layout=layout, seed=9, mean=1000.0, std=1.0)
    out = check_against_reference(backend, x, 4, w, b, True)
    assert out.float().std() > 0.3  # normalised to O(1), not flattened


def test_every_backend_agrees_with_torch_at_an_unet_shape(backend_device):
    backend, dev = backend_device
    x, w, b = make((2, 64, 16, 16), 32, torch.float32, dev, seed=4)
    out = run(backend, group_norm, x, 32, w, b, activation="silu")
    torch.testing.assert_close(out, F.silu(F.group_norm(x, 32, w, b)), rtol=1e-5, atol=1e-5)


# Outputs of 4 MiB or more are written with non-temporal stores on the avx2 build (kStreamBytes in
# csrc/cpu/kernels/group_norm.cpp), each channel's segment only where it is aligned for them: H * W
# a multiple of 8 (every segment aligned) and not (alternate segments fall back to plain stores).
@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("shape, dtype", [((1, 64, 128, 130), torch.float32), ((1, 64, 127, 130), torch.float32),
                                          ((1, 32, 256, 256), torch.float16)])
def test_large_outputs_written_by_streaming_stores_match_the_reference(shape, dtype, silu):
    x, w, b = make(shape, 16, dtype, seed=5)
    assert x.numel() * x.element_size() >= 4 << 20
    check_against_reference("cpu", x, 16, w, b, silu, seed=5)


@pytest.mark.parametrize("shape, groups, layout", [((2, 8, 300, 300), 2, "contiguous"), ((1, 8, 40, 40), 4, "contiguous"),
                                                   ((1, 16, 90, 70), 4, "channels_last")])
def test_same_bits_at_any_thread_count(shape, groups, layout):
    """Every sum runs over shape-determined blocks in a fixed order: 1 and 2 threads give equal bits."""
    x, w, b = make(shape, groups, torch.float32, layout=layout, seed=2)
    g = torch.randn(shape).contiguous(memory_format=GN.memory_format(x))
    ops = torch.ops.fastdiff
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, mean, rstd = ops.group_norm(x, groups, w, b, 1e-5, True)
            results.append((out, mean, rstd, *ops.group_norm_backward(g, x, w, b, mean, rstd, groups, True)))
    finally:
        torch.set_num_threads(old)
    for a, c in zip(*results):
        assert torch.equal(a, c)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3), (2, 0, 3, 3)])
def test_empty_tensors(backend_device, shape):
    backend, dev = backend_device
    groups = 2 if shape[1] else 1
    x = torch.randn(shape, device=dev, requires_grad=True)
    w = torch.randn(shape[1], device=dev, requires_grad=True)
    out = run(backend, group_norm, x, groups, w, None, activation="silu")
    assert out.shape == shape
    (gx, gw) = torch.autograd.grad(out.sum(), [x, w])
    assert gx.shape == shape and gw.shape == (shape[1],)
    assert not gw.isnan().any() and torch.equal(gw, torch.zeros_like(gw))


def test_float64_runs_the_reference():
    x, w, b = make((2, 4, 3, 3), 2, torch.float64)
    torch.testing.assert_close(group_norm(x, 2, w, b, activation="silu"), group_norm_reference(x, 2, w, b, activation="silu"))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3), groups=st.sampled_from([1, 2, 3, 8]), cg=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 9), min_size=0, max_size=3), dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "channels_last", "strided"]), affine=st.booleans(), silu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_cpu(n, groups, cg, spatial, dtype, layout, affine, silu, seed):
    # Groups of 1 or 2 elements normalise to constants (0, +-1): their true gradient is a cancellation
    # residue that no float32 kernel reproduces to 1e-5 of itself.
    assume(cg * math.prod(spatial) >= 4)
    shape = (n, groups * cg, *spatial)
    if layout == "channels_last" and len(shape) not in (4, 5) or layout == "strided" and not spatial:
        layout = "contiguous"
    x, w, b = make(shape, groups, dtype, layout=layout, affine=affine, seed=seed)
    check_against_reference("cpu", x, groups, w, b, silu, seed=seed)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(backend_device, layout):
    backend, dev = backend_device
    sfx = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastdiff
    x, w, b = make((2, 6, 4, 5), 3, torch.float32, dev, layout=layout)
    torch.library.opcheck(getattr(ops, "group_norm" + sfx), (x.requires_grad_(), 3, w.requires_grad_(), b, 1e-5, True))
    torch.library.opcheck(getattr(ops, "group_norm" + sfx), (x, 3, None, None, 1e-6, False))
    x = x.detach()
    _, mean, rstd = getattr(ops, "group_norm" + sfx)(x, 3, w.detach(), b, 1e-5, True)
    g = torch.randn(x.shape, device=dev).contiguous(memory_format=GN.memory_format(x))
    torch.library.opcheck(getattr(ops, "group_norm_backward" + sfx), (g, x, w.detach(), b, mean, rstd, 3, True))
    torch.library.opcheck(getattr(ops, "group_norm_backward" + sfx), (g, x, None, None, mean, rstd, 3, False))


def test_compiled_training_step_has_no_graph_breaks():
    x, w, b = make((2, 8, 6, 6), 4, torch.float32, layout="channels_last")
    xs, ws, bs = leaves(x, w, b)

    def step(x, w, b):
        h = group_norm(x, 4, w, b, activation="silu")
        return group_norm(h * x, 2, w, None).square().mean()

    eager = step(xs, ws, bs)
    eager_grads = torch.autograd.grad(eager, [xs, ws, bs])
    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(xs, ws, bs)
    torch.testing.assert_close(loss, eager)
    for a, e in zip(torch.autograd.grad(loss, [xs, ws, bs]), eager_grads):
        torch.testing.assert_close(a, e)


_x = lambda: torch.randn(2, 8, 3, 3)  # noqa: E731


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: group_norm(torch.randn(8), 2), r"argument 'x' expected at least 2 dimension"),
        (lambda: group_norm(_x().int(), 2), r"argument 'x' expected dtype"),
        (lambda: group_norm([1.0], 2), r"argument 'x' expected a torch.Tensor"),
        (lambda: group_norm(_x(), 3), r"argument 'num_groups' expected a positive int dividing the 8 channels of x, got 3"),
        (lambda: group_norm(_x(), 0), r"argument 'num_groups' expected a positive int"),
        (lambda: group_norm(_x(), 2.0), r"argument 'num_groups' expected a positive int"),
        (lambda: group_norm(_x(), 2, torch.randn(7)), r"argument 'weight' expected shape \(8,\)"),
        (lambda: group_norm(_x(), 2, None, torch.randn(8).half()), r"argument 'bias' expected dtype float32"),
        (lambda: group_norm(_x(), 2, torch.randn(8, device="meta")), r"argument 'weight' expected a tensor on cpu"),
        (lambda: group_norm(_x(), 2, eps=-1.0), r"argument 'eps' expected a finite number >= 0"),
        (lambda: group_norm(_x(), 2, eps=float("nan")), r"argument 'eps' expected a finite number >= 0"),
        (lambda: group_norm(_x(), 2, activation="gelu"), r"argument 'activation' expected None or 'silu', got 'gelu'"),
    ],
)
def test_bad_input_is_refused_clearly(call, match):
    with pytest.raises(InputError, match=r"fastdiff\.group_norm: " + match):
        call()


def test_cpu_kernels_refuse_bad_direct_calls():
    """The compiled ops check their own inputs too (they can be called without the entry point)."""
    ops, x = torch.ops.fastdiff, _x()
    stats = torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="group_norm: argument 'num_groups' expected a positive divisor of C = 8, got 3"):
        ops.group_norm(x, 3, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="argument 'x' expected a contiguous or channels-last tensor"):
        ops.group_norm(x.transpose(2, 3), 2, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="argument 'weight' expected a contiguous tensor of shape \\(8\\)"):
        ops.group_norm(x, 2, torch.randn(4), None, 1e-5, False)
    with pytest.raises(RuntimeError, match="argument 'x' expected dtype float32, float16 or bfloat16"):
        ops.group_norm(x.double(), 2, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="group_norm_backward: argument 'grad_out' expected x's layout"):
        ops.group_norm_backward(x.contiguous(memory_format=torch.channels_last).add(0), x, None, None, stats, stats, 2, True)
    with pytest.raises(RuntimeError, match="group_norm_backward: argument 'mean' expected a contiguous float32 tensor of shape \\(2, 2\\)"):
        ops.group_norm_backward(x, x, None, None, stats.double(), stats, 2, True)


def test_forced_backend_that_cannot_serve_says_why():
    with pytest.raises(fastdiff.BackendUnavailable, match="backend 'cuda' cannot serve these inputs"):
        run("cuda", group_norm, _x(), 2)
    with pytest.raises(fastdiff.BackendUnavailable, match="float64"):
        run("cpu", group_norm, _x().double(), 2)
