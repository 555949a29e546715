"""The Triton sampler_update kernel beyond what test_sampler_update.py covers through the public entry
point: multi-block tiling, long histories, slot values only the device sees (the row is never read on
the host), int64 offsets, and the checks of direct torch.ops calls."""

import pytest
import torch

from fastdiff import _backend
from fastdiff.ops import InputError, sampler_update_reference
from fastdiff.ops.guidance import rescale_factor_reference
from tests.helpers import assert_close_to_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    _backend.device_reason("triton", torch.device(DEV)) is not None, reason="triton cannot run here"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def kernel():
    from fastdiff.triton import sampler_update

    return sampler_update


def row(k, slot, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(6 + k, generator=g) * 2 - 1
    r[5] = slot
    return r.to(DEV)


def inputs(shape, dtype, k, *, guided=True, mdtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    x = torch.randn(shape, generator=g).to(DEV, dtype)
    m = torch.randn((2 * b if guided else b, *shape[1:]), generator=g).to(DEV, mdtype or dtype)
    h = torch.randn((k, *shape), generator=g).to(DEV, dtype) if k else None
    z = torch.randn(shape, generator=g).to(DEV, dtype)
    return x, m, h, z


def reference(x, m, coeffs, h, z, scale=None, rescale=0.0):
    h_ref = h.double().clone() if h is not None else None
    out = sampler_update_reference(
        x.double(), m.double(), coeffs.double(), history=h_ref, noise=z.double(),
        guidance_scale=scale.double() if isinstance(scale, torch.Tensor) else scale, guidance_rescale=rescale,
    )
    return out, h_ref


@pytest.mark.parametrize("xdtype", DTYPES)
@pytest.mark.parametrize("mdtype", [torch.float32, torch.bfloat16])
def test_tiles_odd_samples_over_many_blocks(kernel, xdtype, mdtype):
    x, m, h, z = inputs((3, 5, 23), xdtype, 2, mdtype=mdtype)  # 115 elements per sample, ragged last block
    coeffs = row(2, 1)
    scale = torch.tensor([1.0, 5.0, 9.0], device=DEV)
    ref, h_ref = reference(x, m, coeffs, h, z, scale)
    out = kernel.sampler_update(x, m, coeffs, h, z, 0.0, scale, None, block=16)
    assert_close_to_reference(out, ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)


def test_default_blocks_span_several_blocks_per_sample(kernel):
    x, m, h, z = inputs((2, 3, 1733), torch.float16, 2)  # 5199 elements: three blocks, the last one short
    coeffs = row(2, 0, seed=4)
    ref, h_ref = reference(x, m, coeffs, h, z, 6.0)
    assert_close_to_reference(kernel.sampler_update(x, m, coeffs, h, z, 6.0, None, None), ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)


def test_rescale_factor_is_applied_to_the_guided_output(kernel):
    x, m, h, z = inputs((2, 3, 7), torch.float32, 1)
    coeffs = row(1, 0, seed=2)
    factor = rescale_factor_reference(m.double(), 4.0, 0.7).float()
    ref, h_ref = reference(x, m, coeffs, h, z, 4.0, 0.7)
    out = kernel.sampler_update(x, m, coeffs, h, z, 4.0, None, factor, block=16)
    assert_close_to_reference(out, ref)
    assert_close_to_reference(h, h_ref)


@pytest.mark.parametrize("k", [4, 8])
def test_long_histories_read_every_slot_and_write_one(kernel, k):
    x, m, h, z = inputs((2, 9), torch.float16, k, guided=False)
    coeffs = row(k, k - 2, seed=k)
    ref, h_ref = reference(x, m, coeffs, h, z)
    before = h.clone()
    out = kernel.sampler_update(x, m, coeffs, h, z, 1.0, None, None)
    assert_close_to_reference(out, ref, ulps=3)
    assert_close_to_reference(h, h_ref, ulps=1)
    changed = [i for i in range(k) if not torch.equal(h[i], before[i])]
    assert changed == [k - 2]


@pytest.mark.parametrize("slot", [-1.0, 2.0, 7.0, 0.5, -0.5, float("nan")])
def test_slots_outside_the_buffer_or_not_whole_write_nothing(kernel, slot):
    # The typed entry point refuses these only for rows on the CPU; a row on the GPU reaches the kernel.
    x, m, h, z = inputs((2, 3, 4), torch.float32, 2)
    coeffs = row(2, 0)
    coeffs[5] = slot
    before = h.clone()
    out = kernel.sampler_update(x, m, coeffs, h, z, 3.0, None, None)
    assert torch.equal(h, before)
    coeffs[5] = -1.0
    assert_close_to_reference(out, reference(x, m, coeffs, before, z, 3.0)[0])


def test_int64_offset_variant_matches(kernel, monkeypatch):
    # Samples of 2**31 elements do not fit here; force the wide-offset specialisation instead.
    monkeypatch.setattr(kernel, "wide", lambda n, block: True)
    x, m, h, z = inputs((2, 40), torch.float32, 3)
    coeffs = row(3, 2, seed=5)
    ref, h_ref = reference(x, m, coeffs, h, z, 2.5)
    assert_close_to_reference(kernel.sampler_update(x, m, coeffs, h, z, 2.5, None, None, block=16), ref)
    assert_close_to_reference(h, h_ref)


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEV, dtype=dtype)


def _args(**over):
    args = dict(x=_t(2, 3), model_out=_t(4, 3), coeffs=row(1, 0), history=_t(1, 2, 3), noise=_t(2, 3),
                scale=3.0, scale_per_sample=None, factor=None)
    args.update(over)
    return tuple(args.values())


@pytest.mark.parametrize(
    "over, match",
    [
        (lambda: {"model_out": _t(4, 4)}, r"argument 'model_out' expected shape \(2 or 4, 3\) matching x"),
        (lambda: {"model_out": _t(3, 3)}, r"argument 'model_out' expected shape \(2 or 4, 3\) matching x"),
        (lambda: {"x": _t(2, 6)[:, ::2], "model_out": _t(4, 3)}, "argument 'x' expected a contiguous tensor"),
        (lambda: {"coeffs": row(2, 0)}, "argument 'coeffs' expected a 1-D row of 7 coefficients"),
        (lambda: {"coeffs": row(1, 0).double()}, "argument 'coeffs' expected dtype float32"),
        (lambda: {"history": _t(1, 2, 3, dtype=torch.float16)}, "argument 'history' expected dtype float32"),
        (lambda: {"history": _t(9, 2, 3), "coeffs": row(9, 0)}, r"argument 'history' expected a \(K, 2, 3\) buffer with 1 <= K <= 8"),
        (lambda: {"noise": _t(2, 4)}, r"argument 'noise' expected x's shape \(2, 3\)"),
        (lambda: {"scale_per_sample": _t(3)}, r"argument 'scale_per_sample' expected a float32 tensor of shape \(2,\)"),
        (lambda: {"factor": _t(2, dtype=torch.float16)}, "argument 'factor' expected dtype float32"),
    ],
)
def test_direct_op_calls_refuse_bad_input_clearly_and_leave_history_untouched(over, match):
    args = _args(**over())
    hist = args[3]
    before = hist.clone()
    with pytest.raises(InputError, match=r"fastdiff\.sampler_update: " + match):
        torch.ops.fastdiff.sampler_update_triton(*args)
    assert torch.equal(hist, before)
