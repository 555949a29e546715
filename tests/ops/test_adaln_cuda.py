"""The hand-written CUDA adaln kernels (csrc/cuda/adaln.cu) against the float64 references.

Every op and its backward is called through its torch.ops entry on CUDA tensors, for every storage
dtype, row lengths that take each kernel path (sub-warp rows, block rows, vector and scalar accesses,
the streaming kernel for long or unaligned rows), per-sample and per-token modulation, LayerNorm and
RMSNorm, with and without weight/bias. Outputs are poisoned before each run (conftest), so an element a
kernel forgets to write shows up as NaN. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import fastdiff
from fastdiff import _backend
from fastdiff.ops import adaln as A
from tests.helpers import assert_close_to_reference


def _cuda_kernels() -> bool:
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastdiff::adaln_modulate", "CUDA"
    )


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(torch.cuda.is_available() and not _cuda_kernels(),
                       reason="fastdiff._C was built without the CUDA adaln kernels"),
]

ops = torch.ops.fastdiff
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Row lengths: sub-warp rows (32, 72, 77 scalar), block rows (1000, 1152, 1536, 3072, 8192, 1001 scalar),
# and the streaming kernel (2049 and 8193: too long for registers with scalar accesses; 12288: too long
# with vector accesses).
DIMS = [32, 72, 77, 1000, 1001, 1152, 1536, 3072, 8192]
STREAMING_DIMS = [2049, 8193, 12288]
B, N = 3, 37  # 37 tokens: three backward chunks per sample (16, 16, 5)

# (shift per token, scale per token, gate per token, rms, weight, bias)
CASES = {
    "per-sample": (False, False, False, False, False, False),
    "per-token-rms-affine": (True, True, True, True, True, True),
    "mixed-weight": (True, False, False, False, True, False),
    "mixed-rms-bias": (False, True, True, True, False, True),
}
ULPS_FWD, ULPS_BWD = 3, 4


def _rand(shape, dtype, gen, *, scale=1.0, offset=0.0):
    return (torch.randn(shape, device="cuda", generator=gen) * scale + offset).to(dtype)


def inputs(dtype, b, n, d, case, *, seed=0):
    shift_tok, scale_tok, gate_tok, rms, has_w, has_b = CASES[case]
    g = torch.Generator(device="cuda").manual_seed(seed)
    mod = lambda tok, s: _rand((b, n, d) if tok else (b, d), dtype, g, scale=s)  # noqa: E731
    return dict(
        x=_rand((b, n, d), dtype, g, scale=2.0, offset=0.5),  # a nonzero mean for LayerNorm to remove
        h=_rand((b, n, d), dtype, g),
        shift=mod(shift_tok, 0.5),
        scale=mod(scale_tok, 0.3),
        gate=mod(gate_tok, 0.7),
        weight=_rand((d,), dtype, g, scale=0.2, offset=1.0) if has_w else None,
        bias=_rand((d,), dtype, g, scale=0.2) if has_b else None,
        grad=_rand((b, n, d), dtype, g),
        grad2=_rand((b, n, d), dtype, g),
        rms=rms,
        eps=1e-6,
    )


def f64(t):
    return None if t is None else t.double()


def close(out, ref, dtype, ulps):
    assert out.dtype == dtype, (out.dtype, dtype)
    assert_close_to_reference(out, ref, ulps=ulps)


def close_stats(out, ref):
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert_close_to_reference(out, ref)


def check_grads(outs, refs, dtype):
    assert len(outs) == len(refs)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.shape == r.shape, (i, o.shape, r.shape)
        if o.numel():
            close(o, r, dtype, ULPS_BWD)


# ---------------------------------------------------------------------------------------------
# adaln_modulate
# ---------------------------------------------------------------------------------------------
def modulate_forward_vs_reference(dtype, b, n, d, case, **kw):
    t = inputs(dtype, b, n, d, case, **kw)
    out, mean, rstd = ops.adaln_modulate(t["x"], t["shift"], t["scale"], t["weight"], t["bias"], t["eps"], t["rms"])
    ref, rmean, rrstd = A.adaln_modulate_forward_reference(
        f64(t["x"]), f64(t["shift"]), f64(t["scale"]), f64(t["weight"]), f64(t["bias"]), t["eps"], t["rms"]
    )
    close(out, ref, dtype, ULPS_FWD)
    close_stats(mean, rmean)
    close_stats(rstd, rrstd)
    return t, mean, rstd


def modulate_backward_vs_reference(dtype, b, n, d, case, **kw):
    t, mean, rstd = modulate_forward_vs_reference(dtype, b, n, d, case, **kw)
    spt = t["shift"].dim() == 3
    args = (t["grad"], t["x"], t["scale"], t["weight"], t["bias"], mean, rstd, t["rms"], spt)
    outs = ops.adaln_modulate_backward(*args)
    refs = A.adaln_modulate_backward_reference(
        f64(t["grad"]), f64(t["x"]), f64(t["scale"]), f64(t["weight"]), f64(t["bias"]), mean, rstd, t["rms"], spt
    )
    check_grads(outs, refs, dtype)
    return args, outs


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_forward_and_backward_match_reference(dtype, d, case):
    modulate_backward_vs_reference(dtype, B, N, d, case)


@pytest.mark.parametrize("d", STREAMING_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_long_rows_use_the_streaming_kernel_and_match(dtype, d):
    modulate_backward_vs_reference(dtype, 2, 5, d, "per-token-rms-affine")
    modulate_backward_vs_reference(dtype, 2, 19, d, "per-sample")


@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_many_tokens_per_sample_sums(dtype):
    # 2 x 9000 rows: 18 tokens per backward chunk, 500 chunks per sample.
    modulate_backward_vs_reference(dtype, 2, 9000, 72, "mixed-weight")
    modulate_backward_vs_reference(dtype, 2, 9000, 1152, "per-sample")


@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_modulate_few_tokens(n):
    for d in (32, 72, 1152):
        modulate_backward_vs_reference(torch.float32, 5, n, d, "per-sample")
        modulate_backward_vs_reference(torch.float16, 5, n, d, "per-token-rms-affine")


# ---------------------------------------------------------------------------------------------
# gated_residual
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gate_tok", [False, True], ids=["per-sample", "per-token"])
@pytest.mark.parametrize("d", DIMS + STREAMING_DIMS[:1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_forward_and_backward_match_reference(dtype, d, gate_tok):
    t = inputs(dtype, B, N, d, "per-token-rms-affine" if gate_tok else "per-sample")
    out = ops.gated_residual(t["x"], t["gate"], t["h"])
    close(out, A.gated_residual_reference(f64(t["x"]), f64(t["gate"]), f64(t["h"])), dtype, ULPS_FWD)
    outs = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    refs = A.gated_residual_backward_reference(f64(t["grad"]), f64(t["gate"]), f64(t["h"]))
    check_grads(outs, refs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_many_tokens(dtype):
    t = inputs(dtype, 2, 9000, 72, "per-sample")
    outs = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    check_grads(outs, A.gated_residual_backward_reference(f64(t["grad"]), f64(t["gate"]), f64(t["h"])), dtype)


# ---------------------------------------------------------------------------------------------
# gated_residual_adaln
# ---------------------------------------------------------------------------------------------
def fused_backward_vs_reference(dtype, b, n, d, case, **kw):
    t = inputs(dtype, b, n, d, case, **kw)
    x_out, out, mean, rstd = ops.gated_residual_adaln(
        t["x"], t["gate"], t["h"], t["shift"], t["scale"], t["weight"], t["bias"], t["eps"], t["rms"]
    )
    rx, rout, rmean, rrstd = A.gated_residual_adaln_forward_reference(
        f64(t["x"]), f64(t["gate"]), f64(t["h"]), f64(t["shift"]), f64(t["scale"]), f64(t["weight"]), f64(t["bias"]),
        t["eps"], t["rms"], x_out_dtype=dtype,
    )
    close(x_out, rx, dtype, ULPS_FWD)
    close(out, rout, dtype, ULPS_FWD)
    close_stats(mean, rmean)
    close_stats(rstd, rrstd)
    spt = t["shift"].dim() == 3
    args = (t["grad2"], t["grad"], x_out, t["gate"], t["h"], t["scale"], t["weight"], t["bias"], mean, rstd, t["rms"], spt)
    outs = ops.gated_residual_adaln_backward(*args)
    refs = A.gated_residual_adaln_backward_reference(
        f64(t["grad2"]), f64(t["grad"]), f64(x_out), f64(t["gate"]), f64(t["h"]), f64(t["scale"]), f64(t["weight"]),
        f64(t["bias"]), mean, rstd, t["rms"], spt,
    )
    check_grads(outs, refs, dtype)
    return args, outs


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_forward_and_backward_match_reference(dtype, d, case):
    fused_backward_vs_reference(dtype, B, N, d, case)


@pytest.mark.parametrize("d", STREAMING_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_long_rows_use_the_streaming_kernel_and_match(dtype, d):
    fused_backward_vs_reference(dtype, 2, 5, d, "per-token-rms-affine")
    fused_backward_vs_reference(dtype, 2, 19, d, "per-sample")


def test_fused_statistics_use_the_stored_residual():
    # x_out rounds to bfloat16; mean/rstd must come from x_out as stored (ops.cpp), so that the backward,
    # which recomputes xhat from the stored x_out, matches the forward.
    t = inputs(torch.bfloat16, 2, 8, 1152, "per-sample")
    x_out, _, mean, rstd = ops.gated_residual_adaln(t["x"], t["gate"], t["h"], t["shift"], t["scale"], None, None, 1e-6,
                                                    False)
    xo = x_out.float()
    torch.testing.assert_close(xo, t["x"].float() + t["gate"].float()[:, None] * t["h"].float(), rtol=2**-8, atol=0)
    torch.testing.assert_close(mean, xo.mean(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rstd, torch.rsqrt(xo.var(-1, unbiased=False) + 1e-6), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Unaligned storage, empty tensors, determinism, autograd, opcheck, bad input
# ---------------------------------------------------------------------------------------------
def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose storage starts one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    v = buf[1:].view(t.shape)
    v.copy_(t)
    assert v.is_contiguous() and v.data_ptr() % 16 != 0
    return v


@pytest.mark.parametrize("which", ["x", "shift", "weight", "h", "grad"])
@pytest.mark.parametrize("d", [72, 1152, 8192])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_storage_takes_the_scalar_path_and_matches(dtype, d, which):
    t = inputs(dtype, B, N, d, "mixed-weight")
    t[which] = _unaligned(t[which])
    out, mean, rstd = ops.adaln_modulate(t["x"], t["shift"], t["scale"], t["weight"], None, 1e-6, False)
    ref, _, _ = A.adaln_modulate_forward_reference(f64(t["x"]), f64(t["shift"]), f64(t["scale"]), f64(t["weight"]),
                                                   None, 1e-6, False)
    close(out, ref, dtype, ULPS_FWD)
    outs = ops.adaln_modulate_backward(t["grad"], t["x"], t["scale"], t["weight"], None, mean, rstd, False, True)
    refs = A.adaln_modulate_backward_reference(f64(t["grad"]), f64(t["x"]), f64(t["scale"]), f64(t["weight"]), None,
                                               mean, rstd, False, True)
    check_grads(outs, refs, dtype)
    x_out, out2, _, _ = ops.gated_residual_adaln(t["x"], t["gate"], t["h"], t["shift"], t["scale"], t["weight"], None,
                                                  1e-6, False)
    rx, rout, _, _ = A.gated_residual_adaln_forward_reference(
        f64(t["x"]), f64(t["gate"]), f64(t["h"]), f64(t["shift"]), f64(t["scale"]), f64(t["weight"]), None, 1e-6, False,
        x_out_dtype=dtype,
    )
    close(x_out, rx, dtype, ULPS_FWD)
    close(out2, rout, dtype, ULPS_FWD)
    gg, gh = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    check_grads((gg, gh), A.gated_residual_backward_reference(f64(t["grad"]), f64(t["gate"]), f64(t["h"])), dtype)


def test_no_tokens_gives_zero_sums_and_empty_rows():
    t = inputs(torch.float32, 3, 0, 72, "per-sample")
    out, mean, rstd = ops.adaln_modulate(t["x"], t["shift"], t["scale"], t["weight"], t["bias"], 1e-6, False)
    assert out.shape == (3, 0, 72) and mean.shape == rstd.shape == (3, 0)
    w = torch.ones(72, device="cuda")
    gx, gs, gsc, gw, gb = ops.adaln_modulate_backward(t["grad"], t["x"], t["scale"], w, w, mean, rstd, False, False)
    assert gx.shape == (3, 0, 72)
    for g in (gs, gsc):
        assert g.shape == (3, 72) and torch.equal(g, torch.zeros_like(g))
    for g in (gw, gb):
        assert g.shape == (72,) and torch.equal(g, torch.zeros_like(g))
    gg, gh = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    assert gh.shape == (3, 0, 72) and torch.equal(gg, torch.zeros(3, 72, device="cuda"))


def test_empty_batch():
    t = inputs(torch.float16, 0, 7, 72, "per-sample")
    out, mean, rstd = ops.adaln_modulate(t["x"], t["shift"], t["scale"], None, None, 1e-6, True)
    assert out.shape == (0, 7, 72) and mean.shape == (0, 7)
    w = torch.ones(72, device="cuda", dtype=torch.float16)
    outs = ops.adaln_modulate_backward(t["grad"], t["x"], t["scale"], w, None, mean, rstd, True, False)
    assert outs[1].shape == (0, 72) and torch.equal(outs[3], torch.zeros_like(w))


def test_zero_width_rows_store_the_cpu_statistics():
    x = torch.randn(2, 3, 0, device="cuda")
    s = torch.randn(2, 0, device="cuda")
    out, mean, rstd = ops.adaln_modulate(x, s, s, None, None, 0.25, False)
    assert out.shape == (2, 3, 0)
    assert torch.equal(mean, torch.zeros(2, 3, device="cuda"))
    assert torch.equal(rstd, torch.full((2, 3), 2.0, device="cuda"))  # 1 / sqrt(0 + eps), as on the CPU


@pytest.mark.parametrize("d", [72, 1152, 8192, 8193])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_bitwise_deterministic(dtype, d):
    for fn, case in ((modulate_backward_vs_reference, "mixed-weight"), (fused_backward_vs_reference, "per-sample"),
                     (fused_backward_vs_reference, "mixed-rms-bias")):
        args, first = fn(dtype, 4, 300, d, case)
        op = ops.adaln_modulate_backward if fn is modulate_backward_vs_reference else ops.gated_residual_adaln_backward
        for _ in range(2):
            again = op(*args)
            for a, b in zip(first, again):
                assert torch.equal(a, b)
    t = inputs(dtype, 4, 300, d, "per-sample")
    first = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    again = ops.gated_residual_backward(t["grad"], t["gate"], t["h"])
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_autograd_through_the_cuda_backend_matches_the_reference(norm):
    t = inputs(torch.float32, 2, 19, 1152, "mixed-weight")
    leaves = {k: t[k].clone().requires_grad_() for k in ("x", "gate", "h", "shift", "scale", "weight")}
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}

    def run(p, backend):
        with fastdiff.backend(backend):
            x_new, out = fastdiff.ops.gated_residual_adaln(p["x"], p["gate"], p["h"], p["shift"], p["scale"],
                                                           weight=p["weight"], norm=norm)
            y = fastdiff.ops.adaln_modulate(x_new, p["shift"], p["scale"], weight=p["weight"], norm=norm)
            z = fastdiff.ops.gated_residual(y, p["gate"], out)
        return (z * t["grad"].to(z.dtype)).sum() + (x_new * t["grad2"].to(z.dtype)).sum()

    run(leaves, "cuda").backward()
    run(ref_leaves, "reference").backward()
    for k in leaves:
        assert_close_to_reference(leaves[k].grad, ref_leaves[k].grad, rtol32=2e-5)


def test_auto_selection_picks_the_cuda_kernels():
    assert _backend.cuda_compiled()
    x = torch.randn(2, 4, 72, device="cuda", dtype=torch.float16)
    for op in ("adaln_modulate", "gated_residual", "gated_residual_adaln"):
        assert A.FAMILY.select(op, x.device, (x.dtype,)) == "cuda"


@pytest.mark.parametrize("case", ["per-sample", "per-token-rms-affine"])
def test_opcheck(case):
    t = inputs(torch.float32, 2, 5, 72, case)
    rg = lambda v: None if v is None else v.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(ops.adaln_modulate, (rg(t["x"]), rg(t["shift"]), rg(t["scale"]), rg(t["weight"]),
                                               rg(t["bias"]), 1e-6, t["rms"]))
    out, mean, rstd = ops.adaln_modulate(t["x"], t["shift"], t["scale"], t["weight"], t["bias"], 1e-6, t["rms"])
    torch.library.opcheck(ops.adaln_modulate_backward, (t["grad"], t["x"], t["scale"], t["weight"], t["bias"], mean,
                                                        rstd, t["rms"], t["shift"].dim() == 3))
    torch.library.opcheck(ops.gated_residual, (rg(t["x"]), rg(t["gate"]), rg(t["h"])))
    torch.library.opcheck(ops.gated_residual_backward, (t["grad"], t["gate"], t["h"]))
    torch.library.opcheck(ops.gated_residual_adaln, (rg(t["x"]), rg(t["gate"]), rg(t["h"]), rg(t["shift"]),
                                                     rg(t["scale"]), rg(t["weight"]), rg(t["bias"]), 1e-6, t["rms"]))
    x_out, _, mean, rstd = ops.gated_residual_adaln(t["x"], t["gate"], t["h"], t["shift"], t["scale"], t["weight"],
                                                    t["bias"], 1e-6, t["rms"])
    torch.library.opcheck(ops.gated_residual_adaln_backward,
                          (t["grad2"], t["grad"], x_out, t["gate"], t["h"], t["scale"], t["weight"], t["bias"], mean,
                           rstd, t["rms"], t["shift"].dim() == 3))


def test_bad_input_is_refused_clearly():
    t = inputs(torch.float32, 2, 5, 72, "per-sample")
    x, s = t["x"], t["shift"]
    with pytest.raises(RuntimeError, match=r"fastdiff\.adaln_modulate: argument 'shift' expected a tensor on cuda:0 "
                                           r"\(like the other inputs\), got a tensor on cpu"):
        ops.adaln_modulate(x, s.cpu(), s, None, None, 1e-6, False)
    with pytest.raises(RuntimeError, match=r"fastdiff\.adaln_modulate: argument 'x' expected a contiguous tensor"):
        ops.adaln_modulate(x.transpose(0, 1).contiguous().transpose(0, 1), s, s, None, None, 1e-6, False)
    with pytest.raises(RuntimeError, match=r"fastdiff\.adaln_modulate: argument 'scale' expected dtype"):
        ops.adaln_modulate(x, s, s.half(), None, None, 1e-6, False)
    with pytest.raises(RuntimeError, match=r"fastdiff\.adaln_modulate: argument 'shift' expected shape \(2, 72\) or"):
        ops.adaln_modulate(x, s[:1], s, None, None, 1e-6, False)
    with pytest.raises(RuntimeError, match=r"fastdiff\.gated_residual: argument 'h' expected x's shape"):
        ops.gated_residual(x, t["gate"], t["h"][:, :3].contiguous())
    with pytest.raises(RuntimeError, match=r"fastdiff\.adaln_modulate_backward: argument 'mean' expected float32"):
        ops.adaln_modulate_backward(t["grad"], x, s, None, None, torch.zeros(2, 5, device="cuda").half(),
                                    torch.zeros(2, 5, device="cuda"), False, False)
    with pytest.raises(RuntimeError, match=r"fastdiff\.gated_residual_adaln: argument 'x' expected dtype float32, "
                                           r"float16 or bfloat16"):
        ops.gated_residual_adaln(x.double(), t["gate"].double(), t["h"].double(), s.double(), s.double(), None, None,
                                 1e-6, False)
