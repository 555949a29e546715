"""The Triton guidance kernels beyond what test_guidance.py covers through the public entry point:
multi-block tiling and the two-stage rescale reduction (forced small blocks keep the interpreter
fast), int64 offsets, numerical stability, and the checks of direct torch.ops calls."""

import pytest
import torch

from fastdiff import _backend
from fastdiff.ops import InputError, guidance_combine_reference
from fastdiff.ops.guidance import rescale_factor_reference
from tests.helpers import assert_close_to_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    _backend.device_reason("triton", torch.device(DEV)) is not None, reason="triton cannot run here"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def kernels():
    from fastdiff.triton import guidance

    return guidance


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [16, 64])
def test_combine_tiles_odd_samples_over_many_blocks(kernels, dtype, block):
    m = torch.randn(6, 3, 37, device=DEV).to(dtype)  # 111 elements per sample: a ragged last block
    scale = torch.tensor([1.0, 4.5, -2.0], device=DEV)
    factor = torch.rand(3, device=DEV) + 0.5
    out = kernels.guidance_combine(m, 0.0, scale, factor, block=block)
    ref = guidance_combine_reference(m.double(), scale.double()) * factor.double()[:, None, None]
    assert_close_to_reference(out, ref, ulps=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rescale_factor_folds_many_partials(kernels, monkeypatch, dtype):
    # 16-element partials, folded 4 per loop step: 24 partials per sample, several fold steps.
    monkeypatch.setattr("fastdiff.triton._common.COMBINE_BLOCK", 4)
    m = (torch.randn(4, 5, 75, device=DEV) * 2 + 0.5).to(dtype)
    scale = torch.tensor([3.0, 7.5], device=DEV)
    f = kernels.guidance_rescale_factor(m, 0.0, scale, 0.7, block=16)
    assert f.dtype == torch.float32 and f.shape == (2,)
    torch.testing.assert_close(f.double(), rescale_factor_reference(m.double(), scale.double(), 0.7), rtol=1e-5, atol=0)


def test_default_blocks_span_several_blocks_per_sample(kernels):
    m = torch.randn(2, 3, 2741, device=DEV)  # 8223 elements: 5 combine blocks and 3 partials, the last ones short
    f = kernels.guidance_rescale_factor(m, 5.0, None, 1.0)
    ref_f = rescale_factor_reference(m.double(), 5.0, 1.0)
    torch.testing.assert_close(f.double(), ref_f, rtol=1e-5, atol=0)
    out = kernels.guidance_combine(m, 5.0, None, f)
    assert_close_to_reference(out, guidance_combine_reference(m.double(), 5.0, rescale=1.0))


def test_rescale_factor_is_stable_when_the_mean_dwarfs_the_spread(kernels):
    # A one-pass E[x^2] - E[x]^2 in float32 would lose every digit here (mean 1000, std 0.01), and
    # folding block moments about rounded block means without their residual sum(x - m) loses ~4.
    m = 1000.0 + 0.01 * torch.randn(4, 1500, device=DEV)
    ref = rescale_factor_reference(m.double(), 2.0, 1.0)
    for block in (32, 4096):
        f = kernels.guidance_rescale_factor(m, 2.0, None, 1.0, block=block)
        torch.testing.assert_close(f.double(), ref, rtol=1e-5, atol=0)


def test_rescale_factor_is_deterministic(kernels):
    m = torch.randn(4, 1000, device=DEV)
    runs = [kernels.guidance_rescale_factor(m, 4.0, None, 0.5, block=128) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_rescale_factor_of_empty_samples_is_one(kernels):
    assert torch.equal(kernels.guidance_rescale_factor(torch.randn(4, 0, device=DEV), 2.0, None, 0.5), torch.ones(2, device=DEV))
    assert kernels.guidance_rescale_factor(torch.randn(0, 3, device=DEV), 2.0, None, 0.5).shape == (0,)


def test_int64_offset_variant_matches(kernels, monkeypatch):
    # Samples of 2**31 elements do not fit here; force the wide-offset specialisation instead.
    monkeypatch.setattr(kernels, "wide", lambda n, block: True)
    m = torch.randn(6, 50, device=DEV)
    assert_close_to_reference(kernels.guidance_combine(m, 3.0, None, None, block=16), guidance_combine_reference(m.double(), 3.0))
    f = kernels.guidance_rescale_factor(m, 3.0, None, 0.6, block=16)
    torch.testing.assert_close(f.double(), rescale_factor_reference(m.double(), 3.0, 0.6), rtol=1e-5, atol=0)


def test_block_sizes_must_be_powers_of_two(kernels):
    with pytest.raises(ValueError, match="powers of two"):
        kernels.guidance_combine(torch.randn(2, 8, device=DEV), 2.0, None, None, block=48)


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEV, dtype=dtype)


@pytest.mark.parametrize(
    "name, args, match",
    [
        ("guidance_combine_triton", lambda: (_t(3, 4), 2.0, None, None), "argument 'model_out' expected an even batch"),
        ("guidance_combine_triton", lambda: (_t(4, 6)[:, ::2], 2.0, None, None), "argument 'model_out' expected a contiguous tensor"),
        ("guidance_combine_triton", lambda: (_t(4, 4, dtype=torch.float64), 2.0, None, None), "argument 'model_out' expected dtype float32, float16, bfloat16"),
        ("guidance_combine_triton", lambda: (_t(4, 4), 2.0, _t(2, dtype=torch.float64), None), "argument 'scale_per_sample' expected dtype float32"),
        ("guidance_combine_triton", lambda: (_t(4, 4), 2.0, None, _t(3)), r"argument 'factor' expected a float32 tensor of shape \(2,\)"),
        ("guidance_rescale_factor_triton", lambda: (_t(4, 4), 2.0, _t(1, 2), 0.5), "argument 'scale_per_sample' expected a float32 tensor of shape"),
        ("guidance_rescale_factor_triton", lambda: (_t(4, 4), 2.0, None, 1.5), r"argument 'rescale' expected a number in \[0, 1\]"),
    ],
)
def test_direct_op_calls_refuse_bad_input_clearly(name, args, match):
    op = name.removesuffix("_triton")
    with pytest.raises(InputError, match=rf"fastdiff\.{op}: " + match):
        getattr(torch.ops.fastdiff, name)(*args())


def test_cpu_tensors_without_the_interpreter_are_refused_clearly(monkeypatch):
    # Import the kernels first: Triton 3.6 picks interpreter or compiler when a kernel is defined.
    import fastdiff.triton.guidance  # noqa: F401
    import fastdiff.triton.sampler_update  # noqa: F401

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match=r"fastdiff\.guidance_combine: argument 'model_out' expected a CUDA tensor .*got a tensor on cpu"):
        torch.ops.fastdiff.guidance_combine_triton(torch.randn(4, 3), 2.0, None, None)
    with pytest.raises(InputError, match=r"fastdiff\.sampler_update: argument 'x' expected a CUDA tensor"):
        torch.ops.fastdiff.sampler_update_triton(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(6), None, None, 1.0, None, None)
