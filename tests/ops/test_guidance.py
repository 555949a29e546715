"""fastdiff.ops.guidance_combine: every backend against the float64 reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff.ops import InputError, guidance_combine, guidance_combine_reference
from tests.helpers import assert_close_to_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(2, 1), (2, 7), (4, 4, 8, 8), (2, 1000003), (6, 3, 5, 7)]


def _small(backend, shape):
    # The Triton interpreter runs ~1000x slower than compiled code: keep its inputs small.
    return backend == "triton" and torch.Size(shape).numel() > 300_000


def run(backend, *args, **kwargs):
    with fastdiff.backend(backend):
        return guidance_combine(*args, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_device, dtype, shape):
    backend, dev = backend_device
    if _small(backend, shape):
        pytest.skip("too large for the Triton interpreter")
    m = torch.randn(shape, device=dev).to(dtype)
    out = run(backend, m, 7.5)
    assert out.dtype == dtype and out.shape == (shape[0] // 2, *shape[1:])
    assert_close_to_reference(out, guidance_combine_reference(m.double(), 7.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_per_sample_scale_and_rescale(backend_device, dtype, rescale):
    backend, dev = backend_device
    m = torch.randn(6, 4, 9, 9, device=dev).to(dtype) * 3 + 1.5
    scale = torch.tensor([1.0, 4.5, 9.0], device=dev)
    out = run(backend, m, scale, rescale=rescale)
    ref = guidance_combine_reference(m.double(), scale.double(), rescale=rescale)
    assert_close_to_reference(out, ref, ulps=3)


def test_rescale_matches_the_paper_formula(backend_device):
    backend, dev = backend_device
    m = torch.randn(4, 3, 16, 16, device=dev, dtype=torch.float64)
    u, c = m.chunk(2)
    g = u + 5.0 * (c - u)
    std_c, std_g = c.std(dim=(1, 2, 3), keepdim=True), g.std(dim=(1, 2, 3), keepdim=True)
    phi = 0.7
    expected = phi * g * std_c / std_g + (1 - phi) * g  # Lin et al. 2024, eq. 15-16 (diffusers' rescale_noise_cfg)
    out = run(backend, m.float(), 5.0, rescale=phi)
    assert_close_to_reference(out, expected)


def test_rescale_of_a_constant_output_is_finite(backend_device):
    backend, dev = backend_device
    m = torch.ones(4, 2, 3, device=dev)
    out = run(backend, m, 3.0, rescale=0.5)
    assert torch.isfinite(out).all()
    assert_close_to_reference(out, guidance_combine_reference(m.double(), 3.0, rescale=0.5))


def test_non_contiguous_input(backend_device):
    backend, dev = backend_device
    m = torch.randn(8, 5, 6, device=dev).transpose(1, 2)[:, ::2]
    assert not m.is_contiguous()
    assert_close_to_reference(run(backend, m, 2.0, rescale=0.3), guidance_combine_reference(m.double(), 2.0, rescale=0.3))


def test_empty(backend_device):
    backend, dev = backend_device
    assert run(backend, torch.randn(0, 4, device=dev), 3.0).shape == (0, 4)
    assert run(backend, torch.randn(4, 0, 3, device=dev), 3.0).shape == (2, 0, 3)
    assert run(backend, torch.randn(4, 0, device=dev), 3.0, rescale=0.5).shape == (2, 0)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    inner=st.lists(st.integers(1, 40), min_size=0, max_size=3),
    scale=st.floats(-5, 20),
    dtype=st.sampled_from(DTYPES),
)
def test_random_shapes_cpu(batch, inner, scale, dtype):
    m = (torch.randn(2 * batch, *inner) * 4).to(dtype)
    with fastdiff.backend("cpu"):
        out = guidance_combine(m, scale)
    assert_close_to_reference(out, guidance_combine_reference(m.double(), scale), ulps=3)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.randn(3, 4), 2.0), {}, "argument 'model_out' expected an even batch"),
        ((torch.randn(4, 4), torch.ones(3)), {}, r"argument 'scale' expected a per-sample tensor of shape \(2,\)"),
        ((torch.randn(4, 4), torch.tensor(2.0)), {}, "argument 'scale' expected a number or a per-sample"),
        ((torch.randn(4, 4), float("nan")), {}, "argument 'scale' expected a finite number"),
        ((torch.randn(4, 4), 2.0), {"rescale": 1.5}, r"argument 'rescale' expected a number in \[0, 1\]"),
        ((torch.randint(0, 3, (4, 4)), 2.0), {}, "argument 'model_out' expected dtype"),
        (([1.0, 2.0], 2.0), {}, "argument 'model_out' expected a torch.Tensor"),
    ],
)
def test_bad_input_is_refused_clearly(args, kwargs, match):
    with pytest.raises(InputError, match=r"fastdiff\.guidance_combine: " + match):
        guidance_combine(*args, **kwargs)


def test_forced_backend_that_cannot_serve_says_why():
    with pytest.raises(fastdiff.BackendUnavailable, match="backend 'cuda' cannot serve these inputs: .*CUDA tensors"):
        run("cuda", torch.randn(4, 4), 2.0)
    with pytest.raises(fastdiff.BackendUnavailable, match="float64"):
        run("cpu", torch.randn(4, 4, dtype=torch.float64), 2.0)


def test_float64_falls_back_to_the_reference():
    m = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(guidance_combine(m, 3.0), guidance_combine_reference(m, 3.0))


def test_gradients_flow_through_the_reference():
    m = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: guidance_combine(t, 3.0, rescale=0.5), (m,))


@pytest.mark.parametrize("rescale", [0.0, 0.5])
def test_opcheck(backend_device, rescale):
    backend, dev = backend_device
    m = torch.randn(4, 3, 5, device=dev)
    scale = torch.tensor([2.0, 3.0], device=dev)
    name = "guidance_combine" if backend != "triton" else "guidance_combine_triton"
    op = getattr(torch.ops.fastdiff, name)
    torch.library.opcheck(op, (m, 2.0, None, None))
    torch.library.opcheck(op, (m, 0.0, scale, torch.rand(2, device=dev)))
    rname = "guidance_rescale_factor" + ("_triton" if backend == "triton" else "")
    torch.library.opcheck(getattr(torch.ops.fastdiff, rname), (m, 2.0, scale, 0.7))
