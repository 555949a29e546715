"""Triton kernels for classifier-free guidance: the combine and the guidance-rescale factor.

``model_out`` is ``[uncond; cond]`` (2B, ...) contiguous, so sample b's uncond half starts at
``b * n`` and its cond half ``B * n`` further. Arithmetic is float32; the output keeps the input dtype.

The rescale factor ``1 - phi + phi * std(c) / std(guided)`` is a deterministic two-stage reduction
(no atomics). Stage 1: each program reduces REDUCE_BLOCK elements of one sample, for c and for the
guided output, to moments about its own float32 block mean m: (m, sum(x - m), sum((x - m)^2)).
Centring on the block's mean keeps the variance from cancelling when |mean| >> std; keeping
sum(x - m), which is not exactly 0 since m is rounded, keeps the fold exact. Stage 2: one program per
sample shifts every partial to a common origin (the first partial's mean) and sums them in float64.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common
from ._common import block_for, check_input, check_per_sample, even_batch, grid_for, guided, on_device, sample_tile, warps_for, wide


@triton.jit
def _combine_kernel(
    m_ptr, out_ptr, scale_ptr, factor_ptr, scale, bn, n,
    HAS_SCALE: tl.constexpr, HAS_FACTOR: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    b, blk, offs, mask = sample_tile(n, BLOCK, WIDE)
    u_ptr = m_ptr + b.to(tl.int64) * n
    u = tl.load(u_ptr + offs, mask=mask).to(tl.float32)
    c = tl.load(u_ptr + bn + offs, mask=mask).to(tl.float32)
    if HAS_SCALE:
        s = tl.load(scale_ptr + b)
    else:
        s = scale
    g = guided(u, c, s)
    if HAS_FACTOR:
        g = g * tl.load(factor_ptr + b)
    tl.store(out_ptr + b.to(tl.int64) * n + offs, g.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _block_moments(v, mask, count):
    """(m, sum(v - m), sum((v - m)^2)) over the valid lanes, m their float32 mean."""
    mean = tl.sum(v, axis=0) / count
    dev = tl.where(mask, v - mean, 0.0)
    return mean, tl.sum(dev, axis=0), tl.sum(dev * dev, axis=0)


@triton.jit
def _moments_kernel(
    m_ptr, part_ptr, scale_ptr, scale, bn, n, parts,
    HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    """Partial p = (b, blk): moments of c and of the guided output about their block means."""
    b, blk, offs, mask = sample_tile(n, BLOCK, WIDE)
    u_ptr = m_ptr + b.to(tl.int64) * n
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(u_ptr + bn + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s = tl.load(scale_ptr + b)
    else:
        s = scale
    g = guided(u, c, s)
    count = tl.minimum(n - blk.to(tl.int64) * BLOCK, BLOCK).to(tl.float32)
    p = part_ptr + tl.program_id(0)
    mean, s1, s2 = _block_moments(c, mask, count)
    tl.store(p, mean)
    tl.store(p + parts, s1)
    tl.store(p + 2 * parts, s2)
    mean, s1, s2 = _block_moments(g, mask, count)
    tl.store(p + 3 * parts, mean)
    tl.store(p + 4 * parts, s1)
    tl.store(p + 5 * parts, s2)


@triton.jit
def _shifted_sums(q, pm, count, ref, parts):
    """Partials at q (m; sum(x - m) `parts` further; sum((x - m)^2) 2 `parts` further) as float64
    (sum(x - ref), sum((x - ref)^2)): with d = m - ref, s1 + count d and s2 + 2 d s1 + count d^2."""
    d = tl.load(q, mask=pm, other=0.0).to(tl.float64) - ref
    s1 = tl.load(q + parts, mask=pm, other=0.0).to(tl.float64)
    s2 = tl.load(q + 2 * parts, mask=pm, other=0.0).to(tl.float64)
    return s1 + count * d, s2 + d * (2.0 * s1 + count * d)


@triton.jit
def _population_variance(t1, t2, nf):
    mean = tl.sum(t1, axis=0) / nf
    return tl.maximum(tl.sum(t2, axis=0) / nf - mean * mean, 0.0)


@triton.jit
def _factor_kernel(part_ptr, out_ptr, rescale, n, nblk, parts, REDUCE: tl.constexpr, PBLOCK: tl.constexpr):
    """One program per sample: fold its partials in float64 and write 1 - phi + phi * std(c) / std(g)."""
    b = tl.program_id(0)
    first_c = part_ptr + b.to(tl.int64) * nblk
    first_g = first_c + 3 * parts
    ref_c = tl.load(first_c).to(tl.float64)
    ref_g = tl.load(first_g).to(tl.float64)
    total = tl.zeros((PBLOCK,), tl.float64)
    c1 = tl.zeros((PBLOCK,), tl.float64)
    c2 = tl.zeros((PBLOCK,), tl.float64)
    g1 = tl.zeros((PBLOCK,), tl.float64)
    g2 = tl.zeros((PBLOCK,), tl.float64)
    # A while loop, not range(0, nblk, PBLOCK): Triton 3.6's interpreter cannot take a runtime bound
    # in range() under NumPy >= 2.4 (it converts a 1-element array with int()).
    p0 = tl.program_id(0) * 0
    while p0 < nblk:
        idx = p0 + tl.arange(0, PBLOCK)
        pm = idx < nblk
        count = tl.where(pm, tl.minimum(n - idx.to(tl.int64) * REDUCE, REDUCE), 0).to(tl.float64)
        a1, a2 = _shifted_sums(first_c + idx, pm, count, ref_c, parts)
        c1 += a1
        c2 += a2
        a1, a2 = _shifted_sums(first_g + idx, pm, count, ref_g, parts)
        g1 += a1
        g2 += a2
        total += count
        p0 += PBLOCK
    nf = tl.sum(total, axis=0)
    var_c = _population_variance(c1, c2, nf)
    var_g = _population_variance(g1, g2, nf)
    # Population std ratio; 1 where the guided output is constant (std 0), as the reference says.
    ratio = tl.where(var_g > 0.0, tl.sqrt(var_c / tl.where(var_g > 0.0, var_g, 1.0)), 1.0)
    # ratio is float64, so phi (a float32 scalar when compiled) is promoted before the multiply.
    tl.store(out_ptr + b, ((1.0 - rescale) + rescale * ratio).to(tl.float32))


def _check(op: str, model_out: Tensor, scale_per_sample: Optional[Tensor]) -> tuple[int, int]:
    check_input(op, "model_out", model_out, min_ndim=1)
    _common.check_runnable(op, "model_out", model_out)
    batch = even_batch(op, "model_out", model_out)
    check_per_sample(op, "scale_per_sample", scale_per_sample, batch, model_out.device)
    return batch, (model_out.numel() // model_out.shape[0] if model_out.shape[0] else 0)


def guidance_combine(
    model_out: Tensor, scale: float, scale_per_sample: Optional[Tensor], factor: Optional[Tensor], *, block: Optional[int] = None
) -> Tensor:
    """``factor[b] * (u + s_b (c - u))`` of shape (B, ...) in model_out's dtype (fastdiff::guidance_combine)."""
    op = "guidance_combine"
    batch, n = _check(op, model_out, scale_per_sample)
    check_per_sample(op, "factor", factor, batch, model_out.device)
    out = model_out.new_empty((batch, *model_out.shape[1:]))
    if out.numel() == 0:
        return out
    blk = block_for(n, block, _common.BLOCK)
    dummy = model_out  # stands in for absent per-sample tensors; never read (constexpr flags)
    with on_device(model_out):
        _combine_kernel[grid_for(op, batch, n, blk)](
            model_out, out,
            scale_per_sample if scale_per_sample is not None else dummy,
            factor if factor is not None else dummy,
            float(scale), batch * n, n,
            HAS_SCALE=scale_per_sample is not None, HAS_FACTOR=factor is not None,
            BLOCK=blk, WIDE=wide(n, blk), num_warps=warps_for(blk),
        )
    return out


def guidance_rescale_factor(
    model_out: Tensor, scale: float, scale_per_sample: Optional[Tensor], rescale: float, *, block: Optional[int] = None
) -> Tensor:
    """Per-sample ``1 - phi + phi * std(c) / std(guided)`` as float32 (B,) (fastdiff::guidance_rescale_factor)."""
    op = "guidance_rescale_factor"
    batch, n = _check(op, model_out, scale_per_sample)
    if not 0.0 <= rescale <= 1.0:
        _common.fail(op, "rescale", "a number in [0, 1]", rescale)
    out = torch.empty((batch,), dtype=torch.float32, device=model_out.device)
    if batch == 0:
        return out
    if n == 0:
        return out.fill_(1.0)  # both stds are 0 (as the CPU kernel says)
    blk = block_for(n, block, _common.REDUCE_BLOCK)
    (programs,) = grid_for(op, batch, n, blk)
    partials = torch.empty((6, programs), dtype=torch.float32, device=model_out.device)
    with on_device(model_out):
        _moments_kernel[(programs,)](
            model_out, partials, scale_per_sample if scale_per_sample is not None else model_out,
            float(scale), batch * n, n, programs,
            HAS_SCALE=scale_per_sample is not None, BLOCK=blk, WIDE=wide(n, blk), num_warps=warps_for(blk),
        )
        nblk = triton.cdiv(n, blk)
        _factor_kernel[(batch,)](
            partials, out, float(rescale), n, nblk, programs,
            REDUCE=blk, PBLOCK=min(_common.COMBINE_BLOCK, triton.next_power_of_2(nblk)), num_warps=1,
        )
    return out
