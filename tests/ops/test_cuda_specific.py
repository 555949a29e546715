"""The hand-written CUDA kernels: the paths and promises that only exist on a GPU.

The shared op tests (test_guidance.py, test_sampler_update.py) already run the cuda backend on CUDA
tensors. These add what those cannot see: the scalar fallback for inputs that are not 16-byte
aligned, sizes that do not divide the vector width, mixed-width vector loads, indices past 2**31,
reproducible reductions, no host synchronisation, and a sampling loop replayed from a CUDA graph.
"""

import pytest
import torch

import fastdiff
from fastdiff import _backend
from fastdiff.ops import guidance_combine, guidance_combine_reference, sampler_update, sampler_update_reference
from tests.helpers import assert_close_to_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not _backend.cuda_compiled(), reason="fastdiff._C was built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = "cuda"


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` whose data starts one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    return view


def rand(*shape, dtype=torch.float32):
    return torch.randn(shape, device=DEV).to(dtype)


def coeff_row(k: int, slot: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(6 + k, generator=g) * 2 - 1
    r[5] = slot
    return r.to(DEV)


def run_update(x, m, coeffs, h, z, **kw):
    """cuda-backend step and the float64 reference (on its own copy of the history)."""
    h_ref = h.double().clone() if h is not None else None
    ref = sampler_update_reference(
        x.double(), m.double(), coeffs.double(), history=h_ref, noise=None if z is None else z.double(),
        **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
    )
    with fastdiff.backend("cuda"):
        out = sampler_update(x, m, coeffs, history=h, noise=z, **kw)
    return out, ref, h_ref


# ---- alignment and odd sizes -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.6])
def test_guidance_on_misaligned_input_matches_reference(dtype, rescale):
    m = misaligned(rand(6, 3, 17, 16, dtype=dtype) * 2 + 0.5)
    scale = torch.tensor([1.5, 4.0, 8.0], device=DEV)
    with fastdiff.backend("cuda"):
        out = guidance_combine(m, scale, rescale=rescale)
    assert_close_to_reference(out, guidance_combine_reference(m.double(), scale.double(), rescale=rescale), ulps=3)


@pytest.mark.parametrize("xdtype", DTYPES)
@pytest.mark.parametrize("mdtype", DTYPES)
def test_sampler_update_on_misaligned_inputs_matches_reference(xdtype, mdtype):
    shape = (2, 4, 8, 8)  # n divides every vector width: only the misalignment forces the scalar path
    x, z = misaligned(rand(*shape, dtype=xdtype)), misaligned(rand(*shape, dtype=xdtype))
    m = misaligned(rand(4, *shape[1:], dtype=mdtype))
    h = misaligned(rand(2, *shape, dtype=xdtype))
    out, ref, h_ref = run_update(x, m, coeff_row(2, 1), h, z, guidance_scale=torch.tensor([2.0, 6.0], device=DEV))
    assert_close_to_reference(out, ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (2, 6), (4, 6), (3, 5, 9, 11), (2, 1000003), (5, 1)])
@pytest.mark.parametrize("per_sample", [False, True])
def test_sizes_that_do_not_divide_the_vector_width(dtype, shape, per_sample):
    """(4, 6) float32: the batch divides 4 but no sample does, so groups straddle samples when the
    scale is uniform and the kernel must fall back when it is per-sample."""
    b = shape[0]
    x, z = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype)
    m, h = rand(2 * b, *shape[1:], dtype=dtype), rand(3, *shape, dtype=dtype)
    scale = torch.linspace(1.0, 7.0, b, device=DEV) if per_sample else 5.0
    out, ref, h_ref = run_update(x, m, coeff_row(3, 2, seed=4), h, z, guidance_scale=scale)
    assert_close_to_reference(out, ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)
    with fastdiff.backend("cuda"):
        g = guidance_combine(m, scale)
    assert_close_to_reference(g, guidance_combine_reference(m.double(), scale.double() if per_sample else scale), ulps=3)


@pytest.mark.parametrize("xdtype, mdtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
def test_mixed_width_vector_path(xdtype, mdtype):
    """Eight elements per thread: one 16-byte access of the 16-bit tensor, two of the float32 one."""
    x, z = rand(2, 4, 32, dtype=xdtype), rand(2, 4, 32, dtype=xdtype)
    m, h = rand(4, 4, 32, dtype=mdtype), rand(1, 2, 4, 32, dtype=xdtype)
    out, ref, h_ref = run_update(x, m, coeff_row(1, 0, seed=2), h, z, guidance_scale=3.5, guidance_rescale=0.4)
    assert_close_to_reference(out, ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)


@pytest.mark.parametrize("n", [2**31 + 8, 2**31 + 7], ids=["vector", "scalar"])
def test_indices_past_2_31(n):
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * n:  # model_out (2, n) + out (1, n) in float16, with headroom
        pytest.skip("needs ~16 bytes of free GPU memory per element")
    m = torch.empty(2, n, dtype=torch.float16, device=DEV).normal_()
    with fastdiff.backend("cuda"):
        out = guidance_combine(m, 3.0)
    for lo in (0, 2**31 - 500, n - 1000):
        part = m[:, lo : lo + 1000]
        assert_close_to_reference(out[:, lo : lo + 1000], guidance_combine_reference(part.double(), 3.0))
    del m, out
    torch.cuda.empty_cache()


# ---- rescale reduction ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3 * 4096 + 8, 3 * 4096 + 5, 1, 4096])
def test_rescale_factor_over_several_chunks_is_exact_and_reproducible(n):
    # A large common offset: a one-pass variance without the shift would lose most digits.
    m = torch.randn(6, n, device=DEV, dtype=torch.float64) * 0.5 + 300.0
    scale = torch.tensor([1.0, 3.0, 7.5], device=DEV)
    op = torch.ops.fastdiff.guidance_rescale_factor
    f1 = op(m.float(), 0.0, scale, 0.8)
    f2 = op(m.float(), 0.0, scale, 0.8)
    assert torch.equal(f1, f2), "the two-stage reduction must be bitwise reproducible"
    from fastdiff.ops.guidance import rescale_factor_reference

    ref = rescale_factor_reference(m.float().double(), scale.double(), 0.8)
    torch.testing.assert_close(f1.double(), ref, rtol=1e-5, atol=1e-6)


def test_rescale_factor_of_empty_samples_is_one():
    out = torch.ops.fastdiff.guidance_rescale_factor(torch.empty(4, 0, device=DEV), 2.0, None, 0.7)
    assert torch.equal(out, torch.ones(2, device=DEV))


# ---- the op's own checks (the Python wrapper is bypassed) ------------------------------------------
def test_op_refuses_a_coefficient_row_on_the_host_and_leaves_history_untouched():
    x, m, h = rand(2, 8), rand(4, 8), rand(1, 2, 8)
    before = h.clone()
    with pytest.raises(RuntimeError, match=r"fastdiff\.sampler_update: argument 'coeffs' expected a tensor on cuda"):
        torch.ops.fastdiff.sampler_update(x, m, coeff_row(1, 0).cpu(), h, None, 2.0, None, None)
    with pytest.raises(RuntimeError, match=r"fastdiff\.sampler_update: argument 'model_out' expected a contiguous"):
        torch.ops.fastdiff.sampler_update(x, rand(8, 4).t(), coeff_row(1, 0), h, None, 2.0, None, None)
    assert torch.equal(h, before)
    with pytest.raises(RuntimeError, match=r"fastdiff\.guidance_combine: per-sample tensors must be float32"):
        torch.ops.fastdiff.guidance_combine(m, 0.0, torch.ones(2, device=DEV, dtype=torch.float64), None)


# ---- no host synchronisation ----------------------------------------------------------------------
def test_guided_step_and_combine_never_synchronise_with_the_host():
    x, z, m, h = rand(2, 4, 16, 16), rand(2, 4, 16, 16), rand(4, 4, 16, 16), rand(2, 2, 4, 16, 16)
    coeffs, scale = coeff_row(2, 1), torch.tensor([3.0, 5.0], device=DEV)

    def calls():
        with fastdiff.backend("cuda"):
            sampler_update(x, m, coeffs, history=h, noise=z, guidance_scale=scale, guidance_rescale=0.7)
            sampler_update(x, m[:2], coeffs, history=h, noise=z)
            guidance_combine(m, scale, rescale=0.5)
            guidance_combine(m, 4.0)

    calls()  # first calls load kernels; only the steady state is promised sync-free
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        calls()
        with pytest.raises(RuntimeError):  # the guard is live: a real sync is caught
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---- CUDA graphs -----------------------------------------------------------------------------------
def test_sampling_loop_replayed_from_a_cuda_graph_matches_eager():
    """One captured guided step, replayed per step with a new coefficient row, model output and
    noise copied into static buffers: the row is read on the device at replay time."""
    shape, k, steps = (2, 4, 16, 16), 2, 5
    table = torch.stack([coeff_row(k, i % k, seed=10 + i) for i in range(steps)])
    # Slot i % k is written at step i; until a slot has been written it holds garbage (NaN) and its
    # coefficient is zero, so it is not read.
    table[0, 6:] = 0.0
    table[1, 7] = 0.0
    model_outs = [rand(4, *shape[1:]) for _ in range(steps)]
    noises = [rand(*shape) for _ in range(steps)]
    scale = torch.tensor([2.0, 6.5], device=DEV)
    x0 = rand(*shape)

    def step(x, m, row, h, z):
        with fastdiff.backend("cuda"):
            return sampler_update(x, m, row, history=h, noise=z, guidance_scale=scale, guidance_rescale=0.6)

    x_eager, h_eager = x0.clone(), torch.full((k, *shape), float("nan"), device=DEV)
    for i in range(steps):
        x_eager = step(x_eager, model_outs[i], table[i], h_eager, noises[i])

    x_s, h_s = x0.clone(), torch.full((k, *shape), float("nan"), device=DEV)
    row_s, m_s, z_s = table[0].clone(), model_outs[0].clone(), noises[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture stream, on a scratch history
        for _ in range(2):
            step(x_s, m_s, row_s, h_s.clone(), z_s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_s = step(x_s, m_s, row_s, h_s, z_s)
    for i in range(steps):
        row_s.copy_(table[i])
        m_s.copy_(model_outs[i])
        z_s.copy_(noises[i])
        graph.replay()
        x_s.copy_(out_s)
    torch.cuda.synchronize()
    assert torch.isfinite(x_s).all()
    assert torch.equal(x_s, x_eager)
    assert torch.equal(h_s, h_eager)
