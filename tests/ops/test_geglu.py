"""fastdiff.ops.geglu: ``a * gelu(gate)`` with ``a, gate = x.chunk(2, -1)``, forward and backward.

Every kernel backend against the float64 reference (values and gradients, hypothesis shapes,
odd half-widths, non-contiguous and empty inputs, both GELU forms); the explicit backward formula
against autograd; diffusers' GEGLU semantics; opcheck; torch.compile(fullgraph=True); determinism;
clear errors on bad input.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import fastdiff
from fastdiff.ops import InputError, geglu, geglu_reference
from tests.helpers import assert_close_to_reference

# The module (fastdiff.ops.geglu the attribute is the function).
G = importlib.import_module("fastdiff.ops.geglu")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
APPROX = ["none", "tanh"]


def make(shape, dtype, seed=0, device="cpu", scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)


def run(backend, fn, *args, **kwargs):
    with fastdiff.backend(backend):
        return fn(*args, **kwargs)


def reference(x, approximate):
    """float64 reference of the values the kernel sees (x as stored)."""
    return geglu_reference(x.double(), approximate=approximate)


# ---- the specification itself ---------------------------------------------------------------------
@pytest.mark.parametrize("approximate", APPROX)
def test_reference_is_diffusers_geglu_after_the_projection(approximate):
    x = make((2, 5, 12), torch.float64)
    a, gate = x.chunk(2, -1)  # diffusers: hidden_states, gate = proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(geglu_reference(x, approximate=approximate), a * F.gelu(gate, approximate=approximate))


@pytest.mark.parametrize("tanh", [False, True])
def test_explicit_backward_formula_matches_autograd(tanh):
    x = make((3, 4, 18), torch.float64).requires_grad_()
    go = make((3, 4, 9), torch.float64, seed=1)
    (auto,) = torch.autograd.grad(G.geglu_forward_reference(x, tanh), x, go)
    torch.testing.assert_close(G.geglu_backward_reference(go, x.detach(), tanh), auto, rtol=1e-12, atol=1e-12)


# ---- kernels against the float64 reference ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("shape", [(2, 3, 16), (7, 2), (1, 1, 2), (5, 1003 * 2), (3, 4, 2, 26)])
def test_forward_and_backward_match_float64(backend_device, dtype, approximate, shape):
    backend, device = backend_device
    x = make(shape, dtype, device=device).requires_grad_()
    out = run(backend, geglu, x, approximate=approximate)
    assert out.dtype == dtype and out.shape == (*shape[:-1], shape[-1] // 2)
    assert_close_to_reference(out.cpu(), reference(x.detach().cpu(), approximate))
    go = make(out.shape, dtype, seed=1, device=device, scale=1.0)
    (gx,) = torch.autograd.grad(out, x, go)
    want = G.geglu_backward_reference(go.double().cpu(), x.detach().double().cpu(), approximate == "tanh")
    assert_close_to_reference(gx.cpu(), want, ulps=2.0)


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(0, 5), min_size=0, max_size=3),
    half=st.integers(0, 70),
    dtype=st.sampled_from(DTYPES),
    approximate=st.sampled_from(APPROX),
    scale=st.sampled_from([0.5, 3.0, 12.0]),
)
def test_cpu_kernel_any_shape(lead, half, dtype, approximate, scale):
    x = make((*lead, 2 * half), dtype, scale=scale).requires_grad_()
    out = run("cpu", geglu, x, approximate=approximate)
    assert_close_to_reference(out, reference(x.detach(), approximate))
    go = make(out.shape, dtype, seed=2, scale=1.0)
    (gx,) = torch.autograd.grad(out, x, go) if out.numel() else (torch.zeros_like(x),)
    assert_close_to_reference(gx, G.geglu_backward_reference(go.double(), x.detach().double(), approximate == "tanh"))


@pytest.mark.parametrize("approximate", APPROX)
def test_float32_tails_are_relatively_accurate(backend_device, approximate):
    """Large negative gates, where gelu is tiny: float32 relative accuracy, measured against the
    written-out float64 formulas (F.gelu's 0.5 g (1 + erf) form itself cancels there, even in float64)."""
    backend, device = backend_device
    gate = torch.linspace(-9.0, 9.0, 4001, dtype=torch.float64)
    x = torch.cat([torch.ones_like(gate), gate]).reshape(1, -1)
    out = run(backend, geglu, x.float().to(device), approximate=approximate).double().cpu()
    want, _ = G._gelu_and_slope(gate.float().double(), approximate == "tanh")
    # exp(-g^2/2) and exp(-2y) inherit g^2/2 (40 at g = -9) or 2y (64) ulps from rounding their
    # arguments in float32: a few 1e-6 relative, where 1 + erf(...) in float32 would be off by 100%.
    torch.testing.assert_close(out[0], want, rtol=1e-5 if approximate == "none" else 2e-5, atol=1e-37)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(backend_device, dtype):
    backend, device = backend_device
    base = make((4, 40, 6), dtype, device=device)
    x = base.transpose(1, 2)  # (4, 6, 40), last dim strided
    out = run(backend, geglu, x)
    assert_close_to_reference(out.cpu(), reference(x.cpu(), "none"))
    sliced = make((3, 50), dtype, device=device)[:, 3:43]  # rows with a gap: row stride 50
    assert_close_to_reference(run(backend, geglu, sliced).cpu(), reference(sliced.cpu(), "none"))


@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (2, 0, 6)])
def test_empty_inputs(backend_device, shape):
    backend, device = backend_device
    x = torch.empty(shape, device=device).requires_grad_()
    out = run(backend, geglu, x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    (gx,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    assert gx is None or gx.shape == x.shape


def test_float64_runs_on_the_reference_and_passes_gradcheck():
    x = make((3, 10), torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda t: geglu(t), (x,))
    torch.autograd.gradcheck(lambda t: geglu(t, approximate="tanh"), (x,))


def test_same_bits_at_any_thread_count():
    x = make((64, 2 * 1000), torch.float32)
    go = make((64, 1000), torch.float32, seed=3)
    old = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((run("cpu", geglu, x), torch.ops.fastdiff.geglu_backward(go, x, False)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ---- registration --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(backend_device, suffix):
    backend, device = backend_device
    if (suffix == "_triton") != (backend == "triton"):
        pytest.skip("each op variant is checked with its own backend")
    x = make((3, 5, 14), torch.float32, device=device).requires_grad_()
    go = make((3, 5, 7), torch.float32, seed=1, device=device)
    ops = torch.ops.fastdiff
    for tanh in (False, True):
        torch.library.opcheck(getattr(ops, "geglu" + suffix).default, (x, tanh))
        torch.library.opcheck(getattr(ops, "geglu_backward" + suffix).default, (go, x.detach(), tanh))


def test_torch_compile_fullgraph():
    x = make((2, 6, 20), torch.float32).requires_grad_()
    fn = torch.compile(lambda t: geglu(t, approximate="tanh") * 2, fullgraph=True, backend="aot_eager")
    out = fn(x)
    torch.testing.assert_close(out, geglu(x, approximate="tanh") * 2)
    (g1,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad((geglu(x, approximate="tanh") * 2).sum(), x)
    torch.testing.assert_close(g1, g2)


# ---- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, approximate, match",
    [
        (torch.zeros(2, 7), "none", r"fastdiff\.geglu: argument 'x' expected an even last dim"),
        (torch.zeros(()), "none", r"argument 'x' expected at least 1 dimension"),
        (torch.zeros(2, 4, dtype=torch.int32), "none", r"argument 'x' expected dtype"),
        ("not a tensor", "none", r"argument 'x' expected a torch.Tensor"),
        (torch.zeros(2, 4), "erf", r"argument 'approximate' expected 'none' or 'tanh', got 'erf'"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, approximate, match):
    with pytest.raises(InputError, match=match):
        geglu(x, approximate=approximate)


def test_raw_ops_refuse_bad_inputs_and_write_nothing():
    x = torch.zeros(2, 7)
    with pytest.raises(RuntimeError, match=r"fastdiff\.geglu: argument 'x' expected an even last dim"):
        torch.ops.fastdiff.geglu(x, False)
    go = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"fastdiff\.geglu_backward: argument 'grad_out' expected shape \[2, 2\]"):
        torch.ops.fastdiff.geglu_backward(go, torch.zeros(2, 4), False)
    with pytest.raises(RuntimeError, match=r"argument 'grad_out' expected dtype"):
        torch.ops.fastdiff.geglu_backward(torch.zeros(2, 2, dtype=torch.float16), torch.zeros(2, 4), False)
    with pytest.raises(RuntimeError, match=r"argument 'x' expected a contiguous tensor"):
        torch.ops.fastdiff.geglu(torch.zeros(4, 6).t(), False)


@pytest.mark.parametrize("approximate", APPROX)
def test_nan_and_inf_propagate(backend_device, approximate):
    """NaN in stays NaN; infinities and huge gates follow the written-out formulas (gelu(inf) = inf,
    gelu(-1e30) = -0), which F.gelu's exact form does not (it gives NaN at +inf)."""
    backend, device = backend_device
    gate = torch.tensor([float("nan"), float("inf"), 0.0, 1.0, 200.0, -200.0, 1e30, -1e30])
    a = torch.tensor([1.0, 1.0, float("nan"), float("inf"), 1.0, 1.0, 1.0, 1.0])
    x = torch.cat([a, gate]).reshape(1, -1)
    out = run(backend, geglu, x.to(device), approximate=approximate).cpu()
    value, _ = G._gelu_and_slope(gate.double(), approximate == "tanh")
    torch.testing.assert_close(out[0], (a.double() * value).float(), equal_nan=True)
