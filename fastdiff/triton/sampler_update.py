"""Triton kernel for the fused solver step (fastdiff::sampler_update).

One pass: each program reads its block of x, model_out (both halves when guided), the noise and
the history slots with a non-zero coefficient, and writes x_next and history[slot]. The coefficient
row is read inside the kernel (no host sync), so a sampling loop can be captured in a CUDA graph;
the history length K is a compile-time constant (one specialisation per K, K <= MAX_HISTORY).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common
from ._common import block_for, check_input, check_per_sample, fail, grid_for, guided, on_device, sample_tile, warps_for, wide
from ..ops._common import describe
from ..solvers.rows import A, B, CD, CX, CZ, HISTORY, SLOT, row_length

#: Longest history the kernel is specialised for (multistep solvers use 1 to 3 earlier outputs).
MAX_HISTORY = 8


@triton.jit
def _update_kernel(
    x_ptr, m_ptr, coeff_ptr, hist_ptr, noise_ptr, out_ptr, scale_ptr, factor_ptr, scale, bn, n,
    K: tl.constexpr, GUIDED: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_FACTOR: tl.constexpr,
    I_A: tl.constexpr, I_B: tl.constexpr, I_CX: tl.constexpr, I_CD: tl.constexpr, I_CZ: tl.constexpr,
    I_SLOT: tl.constexpr, I_HIST: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    b, blk, offs, mask = sample_tile(n, BLOCK, WIDE)
    base = b.to(tl.int64) * n
    x = tl.load(x_ptr + base + offs, mask=mask).to(tl.float32)
    if GUIDED:
        u = tl.load(m_ptr + base + offs, mask=mask).to(tl.float32)
        c = tl.load(m_ptr + bn + base + offs, mask=mask).to(tl.float32)
        if HAS_SCALE:
            s = tl.load(scale_ptr + b)
        else:
            s = scale
        m = guided(u, c, s)
        if HAS_FACTOR:
            m = m * tl.load(factor_ptr + b)
    else:
        m = tl.load(m_ptr + base + offs, mask=mask).to(tl.float32)
    d = tl.load(coeff_ptr + I_A) * x + tl.load(coeff_ptr + I_B) * m
    acc = tl.load(coeff_ptr + I_CX) * x + tl.load(coeff_ptr + I_CD) * d
    # Terms with a coefficient of exactly 0 are skipped, loads included: an unused noise tensor or
    # history slot may hold anything (NaN on a multistep solver's first step).
    if HAS_NOISE:
        cz = tl.load(coeff_ptr + I_CZ)
        if cz != 0.0:
            acc += cz * tl.load(noise_ptr + base + offs, mask=mask).to(tl.float32)
    h_ptr = hist_ptr + base + offs
    for k in tl.static_range(K):
        ch = tl.load(coeff_ptr + I_HIST + k)
        if ch != 0.0:
            acc += ch * tl.load(h_ptr, mask=mask).to(tl.float32)
        h_ptr += bn  # pointer steps: no k * bn product to overflow int32
    tl.store(out_ptr + base + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if K > 0:
        # Written after every read above (the slot may also be read); out-of-range or
        # non-integer slots write nothing, like the reference.
        slot = tl.load(coeff_ptr + I_SLOT)
        in_range = (slot >= 0.0) & (slot < K)  # false for NaN too
        slot_i = tl.where(in_range, slot, 0.0).to(tl.int32)
        if in_range & (slot_i.to(tl.float32) == slot):
            dst = hist_ptr + slot_i.to(tl.int64) * bn + base + offs
            tl.store(dst, d.to(hist_ptr.dtype.element_ty), mask=mask)


def sampler_update(
    x: Tensor, model_out: Tensor, coeffs: Tensor, history: Optional[Tensor], noise: Optional[Tensor], scale: float,
    scale_per_sample: Optional[Tensor], factor: Optional[Tensor], *, block: Optional[int] = None,
) -> Tensor:
    """Return x_next and write history[slot] in place; see fastdiff.ops.sampler_update for the math."""
    op = "sampler_update"
    check_input(op, "x", x, min_ndim=1)
    _common.check_runnable(op, "x", x)
    dev, batch, rest = x.device, x.shape[0], tuple(x.shape[1:])
    check_input(op, "model_out", model_out, device=dev, min_ndim=1)
    if tuple(model_out.shape[1:]) != rest or model_out.shape[0] not in (batch, 2 * batch):
        fail(op, "model_out", f"shape ({batch} or {2 * batch}, {', '.join(map(str, rest))}) matching x", describe(model_out))
    guided_ = batch > 0 and model_out.shape[0] == 2 * batch
    k = 0
    if history is not None:
        check_input(op, "history", history, device=dev, dtypes=(x.dtype,))
        if history.dim() != x.dim() + 1 or tuple(history.shape[1:]) != tuple(x.shape) or not 1 <= history.shape[0] <= MAX_HISTORY:
            fail(op, "history", f"a (K, {', '.join(map(str, x.shape))}) buffer with 1 <= K <= {MAX_HISTORY}", describe(history))
        k = history.shape[0]
    if noise is not None:
        check_input(op, "noise", noise, device=dev, dtypes=(x.dtype,))
        if noise.shape != x.shape:
            fail(op, "noise", f"x's shape {tuple(x.shape)}", describe(noise))
    check_input(op, "coeffs", coeffs, device=dev, dtypes=(torch.float32,))
    if coeffs.dim() != 1 or coeffs.numel() != row_length(k):
        fail(op, "coeffs", f"a 1-D row of {row_length(k)} coefficients [a, b, c_x, c_d, c_z, slot] + {k} history coefficients", describe(coeffs))
    if guided_:
        check_per_sample(op, "scale_per_sample", scale_per_sample, batch, dev)
        check_per_sample(op, "factor", factor, batch, dev)

    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    n = x.numel() // batch
    blk = block_for(n, block, _common.BLOCK)
    dummy = x  # stands in for absent optional tensors; never touched (constexpr flags, K = 0)
    with on_device(x):
        _update_kernel[grid_for(op, batch, n, blk)](
            x, model_out, coeffs,
            history if history is not None else dummy,
            noise if noise is not None else dummy,
            out,
            scale_per_sample if guided_ and scale_per_sample is not None else dummy,
            factor if guided_ and factor is not None else dummy,
            float(scale), batch * n, n,
            K=k, GUIDED=guided_, HAS_NOISE=noise is not None,
            HAS_SCALE=guided_ and scale_per_sample is not None, HAS_FACTOR=guided_ and factor is not None,
            I_A=A, I_B=B, I_CX=CX, I_CD=CD, I_CZ=CZ, I_SLOT=SLOT, I_HIST=HISTORY,
            BLOCK=blk, WIDE=wide(n, blk), num_warps=warps_for(blk),
        )
    return out
