"""Triton kernels of the adaln family (schemas and semantics: csrc/ops.cpp; references: fastdiff/ops/adaln.py).

Forward: one program per row of D columns, the whole row in registers (D up to 8192), float32
statistics. Backward: one program per chunk of rows of one sample; it writes the row gradients and
accumulates the per-sample / parameter gradients of its rows in registers, stores them as float32
partials, and a second, fixed-order reduction over the chunks (torch.sum, deterministic) finishes
them: no atomics, so results do not depend on scheduling. The chunk size depends on the shape only.

Absent optional tensors are replaced by a dummy pointer and a constexpr flag (portable across Triton
versions, which differ in how they take None).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

# Partial arrays of the backward, in this order.
_SHIFT, _SCALE, _WEIGHT, _BIAS, _GATE, _PARTIALS = range(6)


@triton.jit
def _mod_row(row, N, SAMPLE_WISE: tl.constexpr):
    """Row of a modulation tensor: the sample (per sample, (B, D)) or the row itself (per token)."""
    if SAMPLE_WISE:
        return row // N
    else:
        return row


@triton.jit
def _forward_kernel(
    X, GATE, H, SHIFT, SCALE, W, B, XOUT, OUT, MEAN, RSTD,
    N, D, eps,
    FUSED: tl.constexpr, RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    GATE_PS: tl.constexpr, SHIFT_PS: tl.constexpr, SCALE_PS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    base = row * D
    x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
    if FUSED:
        g = tl.load(GATE + _mod_row(row, N, GATE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + base + cols, mask=mask, other=0.0).to(tl.float32)
        # Normalise x_out as stored: the backward recomputes xhat from it.
        x_out = (x + g * h).to(XOUT.dtype.element_ty)
        tl.store(XOUT + base + cols, x_out, mask=mask)
        x = x_out.to(tl.float32)
    if RMS:
        mean = 0.0
        xc = x
    else:
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    n = xc * rstd
    if HAS_W:
        n = n * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        n = n + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    sc = tl.load(SCALE + _mod_row(row, N, SCALE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
    sh = tl.load(SHIFT + _mod_row(row, N, SHIFT_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
    out = n * (1.0 + sc) + sh
    tl.store(OUT + base + cols, out.to(OUT.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _backward_kernel(
    GO, GXO, X, GATE, H, SCALE, W, B, MEAN, RSTD,
    GX, GH, GGATE, GSHIFT, GSCALE, P,
    N, D, ROWS, CHUNKS,
    FUSED: tl.constexpr, RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    GATE_PS: tl.constexpr, SHIFT_PS: tl.constexpr, SCALE_PS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // CHUNKS
    r0 = b * N + (pid % CHUNKS) * ROWS
    r1 = tl.minimum(r0 + ROWS, (b + 1) * N)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full((BLOCK_D,), 1.0, tl.float32)
    if HAS_B:
        bias = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_D,), tl.float32)
    acc_shift = tl.zeros((BLOCK_D,), tl.float32)
    acc_scale = tl.zeros((BLOCK_D,), tl.float32)
    acc_w = tl.zeros((BLOCK_D,), tl.float32)
    acc_b = tl.zeros((BLOCK_D,), tl.float32)
    acc_gate = tl.zeros((BLOCK_D,), tl.float32)
    for row in range(r0, r1):
        base = row * D
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(GO + base + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        a1 = 1.0 + tl.load(SCALE + _mod_row(row, N, SCALE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        gn = g * a1
        gx = gn * w
        m2 = tl.sum(gx * xhat, axis=0) / D
        if RMS:
            dx = rstd * (gx - xhat * m2)
        else:
            dx = rstd * (gx - tl.sum(gx, axis=0) / D - xhat * m2)
        if FUSED:
            dx = dx + tl.load(GXO + base + cols, mask=mask, other=0.0).to(tl.float32)
            gate = tl.load(GATE + _mod_row(row, N, GATE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
            h = tl.load(H + base + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(GH + base + cols, (dx * gate).to(GH.dtype.element_ty), mask=mask)
            if GATE_PS:
                acc_gate += dx * h
            else:
                tl.store(GGATE + base + cols, (dx * h).to(GGATE.dtype.element_ty), mask=mask)
        tl.store(GX + base + cols, dx.to(GX.dtype.element_ty), mask=mask)
        if SHIFT_PS:
            acc_shift += g
        else:
            tl.store(GSHIFT + base + cols, g.to(GSHIFT.dtype.element_ty), mask=mask)
        gs = g * (xhat * w + bias)
        if SCALE_PS:
            acc_scale += gs
        else:
            tl.store(GSCALE + base + cols, gs.to(GSCALE.dtype.element_ty), mask=mask)
        acc_w += gn * xhat
        acc_b += gn
    p = P + pid * 5 * D + cols  # 5 partial arrays per program: shift, scale, weight, bias, gate
    if SHIFT_PS:
        tl.store(p + 0 * D, acc_shift, mask=mask)
    if SCALE_PS:
        tl.store(p + 1 * D, acc_scale, mask=mask)
    if HAS_W:
        tl.store(p + 2 * D, acc_w, mask=mask)
    if HAS_B:
        tl.store(p + 3 * D, acc_b, mask=mask)
    if FUSED and GATE_PS:
        tl.store(p + 4 * D, acc_gate, mask=mask)


@triton.jit
def _residual_kernel(X, GATE, H, OUT, N, D, GATE_PS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GATE + _mod_row(row, N, GATE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(H + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * D + cols, (x + g * h).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _residual_backward_kernel(
    GO, GATE, H, GH, GGATE, P, N, D, ROWS, CHUNKS, GATE_PS: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // CHUNKS
    r0 = b * N + (pid % CHUNKS) * ROWS
    r1 = tl.minimum(r0 + ROWS, (b + 1) * N)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    acc = tl.zeros((BLOCK,), tl.float32)
    for row in range(r0, r1):
        g = tl.load(GO + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(GATE + _mod_row(row, N, GATE_PS) * D + cols, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(GH + row * D + cols, (g * gate).to(GH.dtype.element_ty), mask=mask)
        if GATE_PS:
            acc += g * h
        else:
            tl.store(GGATE + row * D + cols, (g * h).to(GGATE.dtype.element_ty), mask=mask)
    if GATE_PS:
        tl.store(P + pid * D + cols, acc, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers (registered as the fastdiff::<op>_triton implementations)
# ---------------------------------------------------------------------------------------------
def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def _backward_warps(block: int) -> int:
    """The backward keeps weight, bias and five accumulator rows live: spread them over more threads
    (at 8 warps a 2048-wide row needs 255 registers a thread, at 16 warps an 8192-wide one spills)."""
    return min(32, max(4, block // 128))


def _chunk_rows(b: int, n: int) -> int:
    """Rows per backward program, a function of the shape only: about 512 programs (enough to fill a
    GPU) while large problems get chunks long enough that the partials stay a small part of the traffic."""
    return max(1, min(64, n, triton.cdiv(b * n, 512)))


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _forward(x, gate, h, shift, scale, weight, bias, eps, rms):
    fused = h is not None
    x, shift, scale, weight, bias = x.contiguous(), shift.contiguous(), scale.contiguous(), _c(weight), _c(bias)
    bsz, n, d = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    x_out = torch.empty_like(out) if fused else out
    mean = torch.empty((bsz, n), dtype=torch.float32, device=x.device)
    rstd = torch.empty((bsz, n), dtype=torch.float32, device=x.device)
    if bsz * n and d:
        gate_t = gate.contiguous() if fused else x
        h_t = h.contiguous() if fused else x
        block = triton.next_power_of_2(d)
        _forward_kernel[(bsz * n,)](
            x, gate_t, h_t, shift, scale, weight if weight is not None else x, bias if bias is not None else x,
            x_out, out, mean, rstd, n, d, float(eps),
            FUSED=fused, RMS=bool(rms), HAS_W=weight is not None, HAS_B=bias is not None,
            GATE_PS=fused and gate.dim() == 2, SHIFT_PS=shift.dim() == 2, SCALE_PS=scale.dim() == 2,
            BLOCK_D=block, num_warps=_warps(block),
        )
    elif bsz * n:  # D == 0: nothing to normalise
        mean.zero_()
        rstd.fill_(float("inf") if eps == 0 else float(eps) ** -0.5)
    return (x_out, out, mean, rstd) if fused else (out, mean, rstd)


def _param_grad(p: Optional[Tensor], partial: Tensor, which: int, x: Tensor) -> Tensor:
    if p is None:
        return x.new_empty((0,))
    return partial[:, :, which].sum((0, 1)).to(p.dtype)


def _backward(grad_x_out, grad_out, x, gate, h, scale, weight, bias, mean, rstd, rms, shift_per_token):
    fused = h is not None
    grad_out, x, scale, weight, bias = grad_out.contiguous(), x.contiguous(), scale.contiguous(), _c(weight), _c(bias)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    bsz, n, d = x.shape
    gate_ps = fused and gate.dim() == 2
    shift_ps, scale_ps = not shift_per_token, scale.dim() == 2
    grad_x = torch.empty_like(x)
    grad_h = torch.empty_like(x) if fused else grad_x
    grad_gate = (x.new_empty((bsz, d)) if gate_ps else torch.empty_like(x)) if fused else grad_x
    grad_shift = torch.empty_like(x) if shift_per_token else x.new_empty((bsz, d))
    grad_scale = torch.empty_like(x) if not scale_ps else x.new_empty((bsz, d))
    rows = _chunk_rows(bsz, n)
    chunks = triton.cdiv(n, rows) if n else 0
    # Only the partial arrays a call needs are written, and only those are read.
    partial = torch.empty((bsz, chunks, _PARTIALS, d), dtype=torch.float32, device=x.device)
    if bsz * chunks and d:
        block = triton.next_power_of_2(d)
        _backward_kernel[(bsz * chunks,)](
            grad_out, grad_x_out.contiguous() if fused else x, x, gate.contiguous() if fused else x,
            h.contiguous() if fused else x, scale, weight if weight is not None else x, bias if bias is not None else x,
            mean, rstd, grad_x, grad_h, grad_gate, grad_shift, grad_scale, partial,
            n, d, rows, chunks,
            FUSED=fused, RMS=bool(rms), HAS_W=weight is not None, HAS_B=bias is not None,
            GATE_PS=gate_ps, SHIFT_PS=shift_ps, SCALE_PS=scale_ps, BLOCK_D=block, num_warps=_backward_warps(block),
        )
    # Second stage: fixed-order sums of the per-chunk partials (an empty sum is 0).
    if shift_ps:
        grad_shift = partial[:, :, _SHIFT].sum(1).to(x.dtype)
    if scale_ps:
        grad_scale = partial[:, :, _SCALE].sum(1).to(scale.dtype)
    grad_w = _param_grad(weight, partial, _WEIGHT, x)
    grad_b = _param_grad(bias, partial, _BIAS, x)
    if not fused:
        return grad_x, grad_shift, grad_scale, grad_w, grad_b
    if gate_ps:
        grad_gate = partial[:, :, _GATE].sum(1).to(gate.dtype)
    return grad_x, grad_gate, grad_h, grad_shift, grad_scale, grad_w, grad_b


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float, rms: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(x, None, None, shift, scale, weight, bias, eps, rms)


def gated_residual_adaln(x: Tensor, gate: Tensor, h: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor],
                         bias: Optional[Tensor], eps: float, rms: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward(x, gate, h, shift, scale, weight, bias, eps, rms)


def adaln_modulate_backward(grad_out: Tensor, x: Tensor, scale: Tensor, weight: Optional[Tensor],
                            bias: Optional[Tensor], mean: Tensor, rstd: Tensor, rms: bool, shift_per_token: bool):
    return _backward(None, grad_out, x, None, None, scale, weight, bias, mean, rstd, rms, shift_per_token)


def gated_residual_adaln_backward(grad_x_out: Tensor, grad_out: Tensor, x_out: Tensor, gate: Tensor, h: Tensor,
                                  scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                                  rstd: Tensor, rms: bool, shift_per_token: bool):
    return _backward(grad_x_out, grad_out, x_out, gate, h, scale, weight, bias, mean, rstd, rms, shift_per_token)


_RESIDUAL_BLOCK = 1024


def gated_residual(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    x, gate, h = x.contiguous(), gate.contiguous(), h.contiguous()
    bsz, n, d = x.shape
    out = torch.empty_like(x)
    if out.numel():
        block = min(_RESIDUAL_BLOCK, triton.next_power_of_2(d))
        _residual_kernel[(bsz * n, triton.cdiv(d, block))](x, gate, h, out, n, d, GATE_PS=gate.dim() == 2, BLOCK=block)
    return out


def gated_residual_backward(grad_out: Tensor, gate: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    grad_out, gate, h = grad_out.contiguous(), gate.contiguous(), h.contiguous()
    bsz, n, d = h.shape
    gate_ps = gate.dim() == 2
    grad_h = torch.empty_like(h)
    grad_gate = h.new_empty((bsz, d)) if gate_ps else torch.empty_like(h)
    rows = _chunk_rows(bsz, n)
    chunks = triton.cdiv(n, rows) if n else 0
    partial = torch.empty((bsz, chunks, d), dtype=torch.float32, device=h.device)
    if bsz * chunks and d:
        block = min(_RESIDUAL_BLOCK, triton.next_power_of_2(d))
        _residual_backward_kernel[(bsz * chunks, triton.cdiv(d, block))](
            grad_out, gate, h, grad_h, grad_gate, partial, n, d, rows, chunks, GATE_PS=gate_ps, BLOCK=block
        )
    if gate_ps:
        grad_gate = partial.sum(1).to(gate.dtype)
    return grad_gate, grad_h
