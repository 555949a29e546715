"""Triton kernels for geglu: ``a * gelu(gate)`` on rows ``[a | gate]`` of a contiguous (R, 2H) view.

Programs tile each row's H output columns in BLOCK-sized pieces (``sample_tile``). Arithmetic is
float32. The exact GELU is ``g * Phi(g)`` with ``Phi`` from erfc written as ``exp(-g^2/2) *
erfcx(|g|/sqrt 2)``: the same rational fit as the CPU kernels (csrc/cpu/kernels/geglu.cpp), kept
relatively accurate in the negative tail, and the same code on every Triton version and the CPU
interpreter (no dependence on a libdevice erf). The tanh form is ``g / (1 + exp(-2y))``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops._common import describe, fail
from ._common import BLOCK, block_for, check_input, check_runnable, on_device, sample_tile, warps_for, wide

_INT32_MAX = 2**31 - 1


@triton.jit
def _erfcx(t):
    """exp(t^2) erfc(t) for t >= 0: u * P(u), u = 2 / (2 + t) (3e-7 relative in float32)."""
    u = 2.0 / (t + 2.0)
    p = -0.05958063155412674 * u + 0.2869502902030945
    p = p * u - 0.49186959862709045
    p = p * u + 0.2831331193447113
    p = p * u - 0.02993522770702839
    p = p * u + 0.20401722192764282
    p = p * u + 0.24278312921524048
    p = p * u + 0.28241756558418274
    p = p * u + 0.28208407759666443
    return p * u


@triton.jit
def _gelu(g, TANH: tl.constexpr):
    """(gelu(g), gelu'(g)) in float32."""
    if TANH:
        g2 = g * g
        y = 0.7978845608028654 * (g + 0.044715 * g * g2)
        s = 1.0 / (1.0 + tl.exp(-2.0 * y))
        slope = s + g * (2.0 * s * (1.0 - s)) * (0.7978845608028654 * (1.0 + 3.0 * 0.044715 * g2))
        return g * s, slope
    else:
        ag = tl.abs(g)
        e = tl.exp(-0.5 * (ag * ag))
        half_erfc = 0.5 * e * _erfcx(ag * 0.7071067811865476)
        cdf = tl.where(g < 0.0, half_erfc, 1.0 - half_erfc)
        return g * cdf, cdf + g * (e * 0.3989422804014327)


@triton.jit
def _forward_kernel(x_ptr, out_ptr, h, TANH: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    r, blk, offs, mask = sample_tile(h, BLOCK, WIDE)
    row = r.to(tl.int64)
    xa = x_ptr + row * 2 * h
    a = tl.load(xa + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(xa + h + offs, mask=mask, other=0.0).to(tl.float32)
    value, _ = _gelu(g, TANH)
    tl.store(out_ptr + row * h + offs, (a * value).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(go_ptr, x_ptr, gx_ptr, h, TANH: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    r, blk, offs, mask = sample_tile(h, BLOCK, WIDE)
    row = r.to(tl.int64)
    xa = x_ptr + row * 2 * h
    a = tl.load(xa + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(xa + h + offs, mask=mask, other=0.0).to(tl.float32)
    go = tl.load(go_ptr + row * h + offs, mask=mask, other=0.0).to(tl.float32)
    value, slope = _gelu(g, TANH)
    ga = gx_ptr + row * 2 * h
    ty = gx_ptr.dtype.element_ty
    tl.store(ga + offs, (go * value).to(ty), mask=mask)
    tl.store(ga + h + offs, (go * a * slope).to(ty), mask=mask)


def _rows(op: str, x: Tensor) -> tuple[int, int]:
    """(R, H) of a checked (..., 2H) input."""
    check_input(op, "x", x, min_ndim=1)
    check_runnable(op, "x", x)
    if x.shape[-1] % 2:
        fail(op, "x", "an even last dim (the [a | gate] halves)", describe(x))
    h = x.shape[-1] // 2
    return (x.numel() // (2 * h) if h else 0), h


def _launch(op: str, kernel, rows: int, h: int, like: Tensor, tanh: bool, *ptrs: Tensor) -> None:
    block = block_for(h, None, BLOCK)
    programs = rows * triton.cdiv(h, block)
    if programs > _INT32_MAX:
        fail(op, "x", f"at most {_INT32_MAX} blocks of {block} elements", f"{programs} blocks")
    with on_device(like):
        kernel[(programs,)](*ptrs, h, TANH=bool(tanh), BLOCK=block, WIDE=wide(2 * h, block),
                            num_warps=warps_for(block))


def geglu(x: Tensor, tanh: bool) -> Tensor:
    op = "geglu_triton"
    rows, h = _rows(op, x)
    out = x.new_empty((*x.shape[:-1], h))
    if out.numel():
        _launch(op, _forward_kernel, rows, h, x, tanh, x, out)
    return out


def geglu_backward(grad_out: Tensor, x: Tensor, tanh: bool) -> Tensor:
    op = "geglu_backward_triton"
    rows, h = _rows(op, x)
    check_input(op, "grad_out", grad_out, device=x.device, dtypes=(x.dtype,))
    want = (*x.shape[:-1], h)
    if tuple(grad_out.shape) != want:
        fail(op, "grad_out", f"shape {want}", describe(grad_out))
    grad_x = torch.empty_like(x)
    if grad_x.numel():
        _launch(op, _backward_kernel, rows, h, x, tanh, grad_out, x, grad_x)
    return grad_x
