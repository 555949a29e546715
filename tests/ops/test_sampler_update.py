"""fastdiff.ops.sampler_update: the fused solver step, every backend against the float64 reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff.ops import InputError, sampler_update, sampler_update_reference
from fastdiff.ops._common import kernel_op
from tests.helpers import assert_close_to_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def row(k: int, slot: int, *, seed: int = 0, zero=()) -> torch.Tensor:
    """A random coefficient row [a, b, c_x, c_d, c_z, slot, c_h...] with chosen entries zeroed."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(6 + k, generator=g) * 2 - 1
    r[5] = slot
    for i in zero:
        r[i] = 0.0
    return r


def make(shape, dtype, dev, *, k=2, guided=True, noise=True, mdtype=None):
    b = shape[0]
    x = torch.randn(shape, device=dev).to(dtype)
    m = torch.randn((2 * b if guided else b, *shape[1:]), device=dev).to(mdtype or dtype)
    h = torch.randn((k, *shape), device=dev).to(dtype) if k else None
    z = torch.randn(shape, device=dev).to(dtype) if noise else None
    return x, m, h, z


def check(backend, x, m, coeffs, h, z, *, compare_history=True, **kw):
    h_ref = h.double().clone() if h is not None else None
    ref = sampler_update_reference(
        x.double(), m.double(), coeffs.double(), history=h_ref, noise=z.double() if z is not None else None,
        **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
    )
    with fastdiff.backend(backend):
        out = sampler_update(x, m, coeffs.to(x.device), history=h, noise=z, **kw)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert_close_to_reference(out, ref, ulps=3)
    if h is not None and compare_history:
        assert_close_to_reference(h, h_ref, ulps=1)
    return out, h_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (2, 4, 8, 8), (3, 5, 9, 11), (1, 1000003)])
def test_guided_step_with_history_and_noise(backend_device, dtype, shape):
    backend, dev = backend_device
    if backend == "triton" and torch.Size(shape).numel() > 300_000:
        pytest.skip("too large for the Triton interpreter")
    x, m, h, z = make(shape, dtype, dev)
    check(backend, x, m, row(2, 1), h, z, guidance_scale=7.5)


@pytest.mark.parametrize("xdtype", DTYPES)
@pytest.mark.parametrize("mdtype", DTYPES)
def test_model_output_dtype_may_differ_from_the_sample(backend_device, xdtype, mdtype):
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 7, 5), xdtype, dev, mdtype=mdtype)
    check(backend, x, m, row(2, 0, seed=1), h, z, guidance_scale=4.0)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])  # up to 3 history reads take one pass; more, a staged chunk
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("noise", [False, True])
def test_every_optional_part(backend_device, k, guided, noise):
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 6, 6), torch.float32, dev, k=k, guided=guided, noise=noise)
    kw = {"guidance_scale": 3.0} if guided else {}
    check(backend, x, m, row(k, k - 1 if k else -1, seed=k), h, z, **kw)


def test_per_sample_scale_and_rescale(backend_device):
    backend, dev = backend_device
    x, m, h, z = make((3, 4, 8, 8), torch.float32, dev)
    scale = torch.tensor([1.0, 5.0, 9.0], device=dev)
    check(backend, x, m, row(2, 1, seed=3), h, z, guidance_scale=scale, guidance_rescale=0.7)


def test_no_write_slot_leaves_history_untouched(backend_device):
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 4, 4), torch.float32, dev)
    before = h.clone()
    check(backend, x, m, row(2, -1), h, z, guidance_scale=2.0)
    assert torch.equal(h, before)


def test_only_the_written_slot_changes(backend_device):
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 4, 4), torch.float16, dev, k=3)
    before = h.clone()
    check(backend, x, m, row(3, 2), h, z, guidance_scale=2.0)
    assert torch.equal(h[:2], before[:2]) and not torch.equal(h[2], before[2])


def test_terms_with_zero_coefficient_are_not_read(backend_device):
    """A first multistep step: the history holds garbage (NaN) and its coefficients are zero."""
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 4, 4), torch.float32, dev, k=2)
    h.fill_(float("nan"))
    z.fill_(float("inf"))
    out, h_ref = check(backend, x, m, row(2, 0, zero=(4, 6, 7)), h, z, compare_history=False, guidance_scale=2.0)
    assert torch.isfinite(out).all()
    assert_close_to_reference(h[0], h_ref[0])
    assert torch.isnan(h[1]).all()


def test_non_contiguous_inputs(backend_device):
    backend, dev = backend_device
    x = torch.randn(4, 6, 5, device=dev).transpose(1, 2)
    m = torch.randn(8, 6, 5, device=dev).transpose(1, 2)
    z = torch.randn(4, 6, 5, device=dev).transpose(1, 2)
    h = torch.randn(2, 4, 5, 6, device=dev)
    check(backend, x, m, row(2, 0), h, z, guidance_scale=3.0)


def test_empty(backend_device):
    backend, dev = backend_device
    x, m, h, z = make((0, 3, 4), torch.float32, dev)
    with fastdiff.backend(backend):
        assert sampler_update(x, m, row(2, 1).to(dev), history=h, noise=z, guidance_scale=3.0).shape == (0, 3, 4)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    inner=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    k=st.integers(0, 3),
    guided=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 1000),
)
def test_random_shapes_cpu(batch, inner, k, guided, dtype, seed):
    x, m, h, z = make((batch, *inner), dtype, "cpu", k=k, guided=guided)
    check("cpu", x, m, row(k, seed % (k + 1) - 1, seed=seed), h, z, **({"guidance_scale": 6.0} if guided else {}))


def _bad(**over):
    x = torch.randn(2, 3, 4)
    args = dict(x=x, model_out=torch.randn(4, 3, 4), coeffs=row(1, 0), history=torch.randn(1, 2, 3, 4),
                noise=torch.randn(2, 3, 4), guidance_scale=3.0)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, match",
    [
        ({"model_out": torch.randn(3, 3, 4)}, r"argument 'model_out' expected the \[uncond; cond\] batched output of shape \(4, 3, 4\)"),
        ({"guidance_scale": None}, r"argument 'model_out' expected the model output .* of shape \(2, 3, 4\)"),
        ({"guidance_scale": torch.ones(3)}, r"argument 'guidance_scale' expected a per-sample tensor of shape \(2,\)"),
        ({"coeffs": row(2, 0)}, r"argument 'coeffs' expected a 1-D row of 7 coefficients"),
        ({"coeffs": row(1, 0).double().half()}, "argument 'coeffs' expected dtype float32, float64"),
        ({"coeffs": torch.tensor([1.0, 0.5, float("nan"), 1, 0, 0, 1])}, r"argument 'coeffs' expected finite coefficients, got non-finite values at positions \[2\]"),
        ({"coeffs": torch.tensor([1.0, 0.5, 1, 1, 0, 1, 1])}, r"argument 'coeffs' expected an integer slot in \[-1, 0\]"),
        ({"history": torch.randn(1, 2, 3, 5)}, r"argument 'history' expected a \(K, 2, 3, 4\) buffer"),
        ({"history": torch.randn(1, 2, 3, 4).half()}, "argument 'history' expected dtype float32"),
        ({"history": torch.randn(1, 2, 4, 3).transpose(2, 3)}, "argument 'history' expected a contiguous buffer"),
        ({"noise": torch.randn(2, 3, 5)}, r"argument 'noise' expected shape \(2, 3, 4\)"),
        ({"guidance_rescale": 0.5, "guidance_scale": None, "model_out": torch.randn(2, 3, 4)}, "argument 'guidance_rescale' expected 0 without guidance_scale"),
        ({"x": torch.randn(2, 3, 4).long()}, "argument 'x' expected dtype"),
    ],
)
def test_bad_input_is_refused_clearly_and_history_untouched(over, match):
    args = _bad(**over)
    hist = args["history"]
    before = hist.clone() if hist is not None else None
    with pytest.raises(InputError, match=r"fastdiff\.sampler_update: " + match):
        sampler_update(args.pop("x"), args.pop("model_out"), args.pop("coeffs"), **args)
    if hist is not None:
        assert torch.equal(hist, before)


def test_opcheck(backend_device):
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 4, 4), torch.float32, dev)
    name = "sampler_update" + ("_triton" if backend == "triton" else "")
    op = getattr(torch.ops.fastdiff, name)
    torch.library.opcheck(op, (x, m, row(2, 1).to(dev), h, z, 3.0, None, None))
    torch.library.opcheck(op, (x, m[:2], row(2, 0).to(dev), h, None, 1.0, None, None))


def test_compiled_sampling_step_has_no_graph_breaks():
    """A guided DPM-Solver++(2M)-shaped step traced whole by torch.compile(fullgraph=True) on CPU."""
    x, m, h, z = make((2, 4, 8, 8), torch.float32, "cpu", k=1)
    coeffs = row(1, 0)

    def step(x, h, coeffs):
        model_out = torch.cat([x, x]) * 0.5 + m  # stands in for the model call on the doubled batch
        return sampler_update(x, model_out, coeffs, history=h, guidance_scale=5.0)

    h_eager = h.clone()
    eager = step(x, h_eager, coeffs)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x, h, coeffs)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(h, h_eager)



def test_a_fractional_slot_writes_nothing(backend_device):
    """The wrapper only value-checks rows on the CPU (elsewhere that would sync), so the kernels
    themselves ignore a slot that is not a whole number in [0, K), as the reference does."""
    backend, dev = backend_device
    x, m, h, z = make((2, 3, 4, 4), torch.float32, dev)
    coeffs = row(2, 0)
    coeffs[5] = 0.5
    before = h.clone()
    kernel_op("sampler_update", backend)(x, m, coeffs.to(dev), h, z, 2.0, None, None)
    assert torch.equal(h, before)


# ---------------------------------------------------------------------------------------------
# LoopUpdate: checked once, then launched directly
# ---------------------------------------------------------------------------------------------
def test_loop_update_matches_the_checked_op_step_for_step(backend_device):
    from fastdiff.ops.sampler_update import LoopUpdate

    backend, dev = backend_device
    x, m, h, z = make((2, 3, 5, 7), torch.float32, dev)
    h_ref = h.clone()
    with fastdiff.backend(backend):
        update = LoopUpdate(h, 4.0)
        x_ref = x.clone()
        for j in range(4):
            r = row(2, j % 2, seed=j).to(dev)
            x = update(x, m * (j + 1), r, z)
            x_ref = sampler_update(x_ref, m * (j + 1), r, history=h_ref, noise=z, guidance_scale=4.0)
            assert torch.equal(x, x_ref) and torch.equal(h, h_ref)
    assert (update._bound is None) == (backend == "reference")


def test_loop_update_checks_again_when_a_call_differs_from_the_first():
    from fastdiff.ops.sampler_update import LoopUpdate

    x, m, h, _ = make((2, 4), torch.float32, "cpu", noise=False)
    update = LoopUpdate(h, 3.0)
    update(x, m, row(2, 0))
    assert update._bound is not None
    with pytest.raises(InputError, match="fastdiff.sampler_update: argument 'model_out' expected"):
        update(x, m[:2], row(2, 0))  # an unguided-size output on a guided loop
    h_before = h.clone()
    out = update(x.T.contiguous().T, m, row(2, 1))  # a non-contiguous x still works, through the checked path
    torch.testing.assert_close(out, sampler_update(x, m, row(2, 1), history=h_before, guidance_scale=3.0))
    with fastdiff.backend("reference"):  # a backend forced after the first step is honoured
        update(x, m, row(2, -1))
        assert update._bound is None or update._bound[0][-1] != "reference"
    xg = x.clone().requires_grad_(True)
    update(xg, m, row(2, -1)).sum().backward()  # needs a gradient: the reference path, differentiable
    assert xg.grad is not None


def test_loop_update_with_per_sample_scale_or_rescale_always_checks():
    from fastdiff.ops.sampler_update import LoopUpdate

    x, m, h, _ = make((2, 4), torch.float32, "cpu", noise=False)
    for update in (LoopUpdate(h, torch.tensor([1.0, 2.0])), LoopUpdate(h, 5.0, 0.7)):
        update(x, m, row(2, 0))
        assert update._bound is None
