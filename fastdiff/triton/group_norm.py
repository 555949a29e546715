"""Triton kernels of group_norm (+ SiLU) (schemas and semantics: csrc/ops.cpp; reference:
fastdiff/ops/group_norm.py).

The partition is the CPU/CUDA one in spirit: each channel's S positions are cut into blocks of
BLOCK_LEN; one program per (sample, channel, block) writes a partial record (forward: a centre m and
the sums of (x - m) and (x - m)^2; backward: sums of dy and dy * xhat), and the records are combined
in a fixed order in float64 by torch (deterministic, no atomics). Elementwise programs then write out
/ grad_x. x is addressed through (sample, channel, position) strides, so NCHW and channels-last share
the kernels. Absent weight / bias are a dummy pointer and a constexpr flag.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops._common import check_tensor, fail
from ..ops.group_norm import memory_format
from ._common import check_input, check_runnable, on_device

BLOCK_LEN = 4096  # positions per partial record
TILE = 1024  # positions per loop step / elementwise program


@triton.jit
def _sigmoid(y):
    return 1.0 / (1.0 + tl.exp(-y))


@triton.jit
def _stats_kernel(X, PART, C, S, sN, sC, sS, BLOCKS, BLOCK_LEN: tl.constexpr, TILE: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    base = X + (nc // C) * sN + (nc % C) * sC
    s0 = blk * BLOCK_LEN
    s1 = tl.minimum(s0 + BLOCK_LEN, S)
    centre = tl.load(base + s0 * sS).to(tl.float32)
    acc = tl.zeros([TILE], dtype=tl.float32)
    for t in range(0, BLOCK_LEN, TILE):
        s = s0 + t + tl.arange(0, TILE)
        m = s < s1
        acc += tl.where(m, tl.load(base + s * sS, mask=m, other=0.0).to(tl.float32) - centre, 0.0)
    mid = centre + tl.sum(acc, axis=0) / (s1 - s0).to(tl.float32)
    q1 = tl.zeros([TILE], dtype=tl.float32)
    q2 = tl.zeros([TILE], dtype=tl.float32)
    for t in range(0, BLOCK_LEN, TILE):
        s = s0 + t + tl.arange(0, TILE)
        m = s < s1
        d = tl.where(m, tl.load(base + s * sS, mask=m, other=0.0).to(tl.float32) - mid, 0.0)
        q1 += d
        q2 += d * d
    rec = PART + (nc * BLOCKS + blk) * 3
    tl.store(rec, mid)
    tl.store(rec + 1, tl.sum(q1, axis=0))
    tl.store(rec + 2, tl.sum(q2, axis=0))


@triton.jit
def _channel(MEAN, RSTD, W, B, nc, C, CG, G, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    c = nc % C
    g = (nc // C) * G + c // CG
    mean = tl.load(MEAN + g)
    rstd = tl.load(RSTD + g)
    if HAS_W:
        w = tl.load(W + c).to(tl.float32)
    else:
        w = 1.0
    if HAS_B:
        b = tl.load(B + c).to(tl.float32)
    else:
        b = 0.0
    return mean, rstd, w, b


@triton.jit
def _dy(x, g, mean, rstd, w, b, SILU: tl.constexpr):
    xhat = (x - mean) * rstd
    if SILU:
        y = xhat * w + b
        s = _sigmoid(y)
        g = g * (s * (1.0 + y * (1.0 - s)))
    return xhat, g


@triton.jit
def _apply_kernel(X, OUT, MEAN, RSTD, W, B, C, S, CG, G, sN, sC, sS,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr, TILE: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64) * TILE + tl.arange(0, TILE)
    m = s < S
    mean, rstd, w, b = _channel(MEAN, RSTD, W, B, nc, C, CG, G, HAS_W, HAS_B)
    off = (nc // C) * sN + (nc % C) * sC + s * sS
    y = (tl.load(X + off, mask=m, other=0.0).to(tl.float32) - mean) * (rstd * w) + b
    if SILU:
        y = y * _sigmoid(y)
    tl.store(OUT + off, y.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _grad_sums_kernel(X, GO, PART, MEAN, RSTD, W, B, C, S, CG, G, sN, sC, sS, BLOCKS,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr,
                      BLOCK_LEN: tl.constexpr, TILE: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    mean, rstd, w, b = _channel(MEAN, RSTD, W, B, nc, C, CG, G, HAS_W, HAS_B)
    base = (nc // C) * sN + (nc % C) * sC
    s0 = blk * BLOCK_LEN
    s1 = tl.minimum(s0 + BLOCK_LEN, S)
    sa = tl.zeros([TILE], dtype=tl.float32)
    sb = tl.zeros([TILE], dtype=tl.float32)
    for t in range(0, BLOCK_LEN, TILE):
        s = s0 + t + tl.arange(0, TILE)
        m = s < s1
        x = tl.load(X + base + s * sS, mask=m, other=0.0).to(tl.float32)
        g = tl.load(GO + base + s * sS, mask=m, other=0.0).to(tl.float32)
        xhat, dy = _dy(x, g, mean, rstd, w, b, SILU)
        sa += tl.where(m, dy, 0.0)
        sb += tl.where(m, dy * xhat, 0.0)
    rec = PART + (nc * BLOCKS + blk) * 2
    tl.store(rec, tl.sum(sa, axis=0))
    tl.store(rec + 1, tl.sum(sb, axis=0))


@triton.jit
def _grad_x_kernel(X, GO, GX, COEF, MEAN, RSTD, W, B, C, S, CG, G, sN, sC, sS,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr, TILE: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64) * TILE + tl.arange(0, TILE)
    m = s < S
    mean, rstd, w, b = _channel(MEAN, RSTD, W, B, nc, C, CG, G, HAS_W, HAS_B)
    grp = (nc // C) * G + (nc % C) // CG
    m1 = tl.load(COEF + grp * 2)
    m2 = tl.load(COEF + grp * 2 + 1)
    off = (nc // C) * sN + (nc % C) * sC + s * sS
    x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    g = tl.load(GO + off, mask=m, other=0.0).to(tl.float32)
    xhat, dy = _dy(x, g, mean, rstd, w, b, SILU)
    tl.store(GX + off, (rstd * (dy * w - m1 - xhat * m2)).to(GX.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
def _layout(op: str, x: Tensor, num_groups: int) -> tuple[int, int, int, int, tuple[int, int, int]]:
    """N, C, S, blocks and the (sample, channel, position) strides of x (contiguous or channels-last)."""
    check_runnable(op, "x", x)
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    if num_groups < 1 or c % num_groups:
        fail(op, "num_groups", f"a positive divisor of C = {c}", num_groups)
    fmt = memory_format(x)
    if not x.is_contiguous(memory_format=fmt):
        fail(op, "x", "a contiguous or channels-last tensor", f"strides {x.stride()}")
    strides = (c * s, 1, c) if fmt != torch.contiguous_format else (c * s, s, 1)
    return n, c, s, triton.cdiv(s, BLOCK_LEN) if s else 0, strides


def _params(op: str, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    for arg, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_input(op, arg, p, device=x.device, dtypes=(x.dtype,))
            if tuple(p.shape) != (x.shape[1],):
                fail(op, arg, f"shape ({x.shape[1]},)", tuple(p.shape))
    return (weight if weight is not None else x), (bias if bias is not None else x)


def _block_lengths(s: int, blocks: int, device: torch.device) -> Tensor:
    lens = torch.full((blocks,), float(BLOCK_LEN), dtype=torch.float64, device=device)
    if blocks:
        lens[-1] = s - (blocks - 1) * BLOCK_LEN
    return lens


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
               silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    op = "group_norm"
    n, c, s, blocks, (sn, sc, ss) = _layout(op, x, num_groups)
    w, b = _params(op, x, weight, bias)
    out = torch.empty_like(x, memory_format=memory_format(x))
    cg = c // num_groups
    count = cg * s
    if n * c * s == 0:
        mean = torch.zeros((n, num_groups), dtype=torch.float32, device=x.device)
        return out, mean, torch.full_like(mean, 1.0 / math.sqrt(eps) if eps > 0 else math.inf)
    part = torch.empty((n, c, blocks, 3), dtype=torch.float32, device=x.device)
    with on_device(x):
        _stats_kernel[(n * c, blocks)](x, part, c, s, sn, sc, ss, blocks, BLOCK_LEN=BLOCK_LEN, TILE=TILE)
    # Combine the records of each group in float64, in a fixed order.
    rec = part.double()
    lens = _block_lengths(s, blocks, x.device)
    bmean = rec[..., 0] + rec[..., 1] / lens
    bm2 = rec[..., 2] - rec[..., 1] ** 2 / lens
    bmean, bm2 = bmean.reshape(n, num_groups, -1), bm2.reshape(n, num_groups, -1)
    wl = lens.repeat(cg)
    mu = (bmean * wl).sum(-1) / count
    m2 = (bm2 + wl * (bmean - mu.unsqueeze(-1)) ** 2).sum(-1)
    mean = mu.float().contiguous()
    rstd = torch.rsqrt((m2 / count).clamp_min(0) + eps).float().contiguous()
    with on_device(x):
        _apply_kernel[(n * c, triton.cdiv(s, TILE))](
            x, out, mean, rstd, w, b, c, s, cg, num_groups, sn, sc, ss,
            HAS_W=weight is not None, HAS_B=bias is not None, SILU=silu, TILE=TILE)
    return out, mean, rstd


def group_norm_backward(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                        rstd: Tensor, num_groups: int, silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    op = "group_norm_backward"
    n, c, s, blocks, (sn, sc, ss) = _layout(op, x, num_groups)
    w, b = _params(op, x, weight, bias)
    check_tensor(op, "grad_out", grad_out, device=x.device, dtypes=(x.dtype,))
    if tuple(grad_out.shape) != tuple(x.shape) or (x.numel() and grad_out.stride() != x.stride()):
        fail(op, "grad_out", f"x's shape and layout {tuple(x.shape)}", f"shape {tuple(grad_out.shape)}, strides {grad_out.stride()}")
    for arg, t in (("mean", mean), ("rstd", rstd)):
        check_input(op, arg, t, device=x.device, dtypes=(torch.float32,))
        if tuple(t.shape) != (n, num_groups):
            fail(op, arg, f"shape ({n}, {num_groups})", tuple(t.shape))
    grad_x = torch.empty_like(x, memory_format=memory_format(x))
    cg = c // num_groups
    part = torch.zeros((n, c, max(blocks, 1), 2), dtype=torch.float32, device=x.device)
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, SILU=silu)
    if n * c * s:
        with on_device(x):
            _grad_sums_kernel[(n * c, blocks)](x, grad_out, part, mean, rstd, w, b, c, s, cg, num_groups, sn, sc, ss,
                                               blocks, BLOCK_LEN=BLOCK_LEN, TILE=TILE, **flags)
    sums = part.double().sum(2)  # (N, C, 2): blocks in order
    wc = weight.double() if weight is not None else torch.ones(c, dtype=torch.float64, device=x.device)
    coef = (sums * wc[:, None]).reshape(n, num_groups, cg, 2).sum(2) / max(cg * s, 1)
    coef = coef.float().contiguous()
    if n * c * s:
        with on_device(x):
            _grad_x_kernel[(n * c, triton.cdiv(s, TILE))](x, grad_out, grad_x, coef, mean, rstd, w, b, c, s, cg,
                                                         num_groups, sn, sc, ss, TILE=TILE, **flags)
    per_channel = sums.sum(0)
    grad_w = per_channel[:, 1].to(x.dtype) if weight is not None else x.new_empty((0,))
    grad_b = per_channel[:, 0].to(x.dtype) if bias is not None else x.new_empty((0,))
    return grad_x, grad_w, grad_b
