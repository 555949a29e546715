"""Scaled dot-product attention for diffusion shapes: ``softmax(scale * q k^T + bias) v``.

Layout is (B, N, H, D) — batch, tokens, heads, head dim — read through strides. diffusers and
``F.scaled_dot_product_attention`` use (B, H, N, D); pass such tensors as ``q.transpose(1, 2)``:
that view *is* a (B, N, H, D) tensor with different strides, and no kernel copies it. There is no
layout keyword and no guessing from shapes.

Kernels run flash-style: online softmax with float32 statistics, nothing of size Nq x Nk stored,
the log-sum-exp kept for a backward that recomputes the probabilities. The GPU kernels take fp16/bf16
and D a multiple of 8 up to 256; the C++ CPU kernel (csrc/cpu/kernels/attention.cpp) float32,
fp16 and bf16 and any D. Everything else (float64, a bias that needs a gradient, fp32 or odd head
dims on a GPU) runs through the reference, ``attention_reference``: PyTorch's SDPA in float32
(float64 for float64 inputs) with fully masked rows defined as zeros.

Backends, in auto order: ``cuda`` (fastdiff._C, when it holds an attention kernel) then ``triton``
on CUDA tensors; ``cpu`` (fastdiff._C) on CPU tensors. See ``support()`` for the table that
``fastdiff info`` prints.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend
from . import attention_dispatch
from ._common import FLOAT_DTYPES, check_tensor, describe, fail, register_fake, register_triton

OP = "attention"
#: dtypes the attention kernels (cuda, triton) take; other dtypes run through the reference.
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
#: dtypes the C++ CPU kernel takes (any head dim).
CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Largest head dim the kernels take; every multiple of 8 up to it is served.
MAX_HEAD_DIM = 256
#: Head dims the Triton kernels serve with no work on padding (see fastdiff/triton/attention.py).
TRITON_EXACT_HEAD_DIMS = tuple(d for d in range(16, MAX_HEAD_DIM + 1, 16) if bin(d // 16).count("1") <= 3)

# ---------------------------------------------------------------------------------------------
# Reference: the specification (SDPA math semantics), float64-capable, differentiable
# ---------------------------------------------------------------------------------------------
def _attend_pattern(key_mask: Optional[Tensor], bias: Optional[Tensor]) -> Optional[Tensor]:
    """Which keys each row attends (bool, broadcastable to (B, H, Nq, Nk)), or None for all."""
    attend = None
    if key_mask is not None:
        attend = key_mask[:, None, None, :]
    if bias is not None:
        finite = ~torch.isneginf(bias)
        attend = finite if attend is None else attend & finite
    return attend


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    key_mask: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """out[b,i,h] = sum_j softmax_j(scale * <q[b,i,h], k[b,j,h]> + bias[b,h,i,j]) v[b,j,h].

    Same arguments as `attention` (``mask``: bool (B, Nk) key padding, True = attend, or a float
    bias broadcastable to (B, H, Nq, Nk)); ``key_mask``/``bias`` give the two kinds directly (both
    may be set, as the kernel schema allows). Computed in float32 (float64 for float64 inputs),
    returned in q's dtype. A row with no attended key (fully masked) gives zeros, and zero
    gradients. Nk == 0 counts as fully masked.
    """
    if mask is not None:
        if mask.dtype == torch.bool:
            key_mask = mask
        else:
            bias = mask
    acc = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    if nk == 0 or b * h * nq == 0:
        # No key at all is the fully masked case. where(False, q, 0) is zeros that stay on the
        # autograd graph (q's gradient is 0) without letting an inf or NaN in q through.
        return torch.where(torch.zeros((), dtype=torch.bool, device=q.device), q, 0)
    qt, kt, vt = (t.transpose(1, 2).to(acc) for t in (q, k, v))  # (B, H, N, D) views for SDPA
    bias4 = None if bias is None else bias.to(acc).reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    attend = _attend_pattern(key_mask, bias4)
    if attend is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
        return out.transpose(1, 2).to(q.dtype)
    alive = attend.any(-1, keepdim=True)  # (b?, h?, q?, 1): rows with at least one attended key
    # Dead rows attend everything inside SDPA (so no backend sees a 0/0) and are zeroed after:
    # their output and, through the where, all their gradients are exactly 0.
    if bias4 is None:
        attn_mask = attend | ~alive
    else:
        biased = bias4 if key_mask is None else bias4.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn_mask = torch.where(alive, biased, torch.zeros((), dtype=acc, device=q.device))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask, scale=scale)
    out = torch.where(alive, out, torch.zeros((), dtype=acc, device=q.device))
    return out.transpose(1, 2).to(q.dtype)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def _check_qkv(q: Any, k: Any, v: Any) -> tuple[int, int, int, int, int]:
    check_tensor(OP, "q", q, dtypes=FLOAT_DTYPES)
    if q.dim() != 4:
        fail(OP, "q", "a 4-D (B, Nq, H, D) tensor (pass diffusers' (B, H, N, D) tensors as q.transpose(1, 2))", describe(q))
    b, nq, h, d = q.shape
    if d == 0:
        fail(OP, "q", "a head dim D >= 1", describe(q))
    for name, t in (("k", k), ("v", v)):
        check_tensor(OP, name, t, device=q.device)
        if t.dtype != q.dtype:
            fail(OP, name, f"dtype {q.dtype} (like q)", t.dtype)
        if t.dim() != 4 or t.shape[0] != b or t.shape[2] != h or t.shape[3] != d:
            fail(OP, name, f"a 4-D (B, Nk, H, D) = ({b}, Nk, {h}, {d}) tensor matching q {tuple(q.shape)}", describe(t))
    if tuple(v.shape) != tuple(k.shape):
        fail(OP, "v", f"the shape of k {tuple(k.shape)}", describe(v))
    return b, nq, h, d, k.shape[1]


def _check_mask(mask: Any, q: Tensor, b: int, h: int, nq: int, nk: int) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Split ``mask`` into (key_mask, bias)."""
    if mask is None:
        return None, None
    if not isinstance(mask, Tensor):
        fail(OP, "mask", "None, a bool (B, Nk) tensor or a float bias tensor", type(mask).__name__)
    if mask.device != q.device:
        fail(OP, "mask", f"a tensor on {q.device} (like q)", f"a tensor on {mask.device}")
    if mask.dtype == torch.bool:
        if tuple(mask.shape) != (b, nk):
            fail(
                OP, "mask",
                f"a bool key-padding mask of shape (B, Nk) = ({b}, {nk}) (for other patterns pass an additive float bias)",
                describe(mask),
            )
        return mask, None
    if mask.dtype not in FLOAT_DTYPES:
        fail(OP, "mask", "a bool key-padding mask or a floating-point additive bias", mask.dtype)
    full = (b, h, nq, nk)
    if mask.dim() > 4 or any(s not in (1, f) for s, f in zip(reversed(mask.shape), reversed(full))):
        fail(OP, "mask", f"a float bias broadcastable to (B, H, Nq, Nk) = {full}", describe(mask))
    return None, mask


def _check_scale(scale: Any, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        fail(OP, "scale", "None or a finite number", scale)
    return float(scale)


# ---------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------
def _limits(backend: str, dtypes: tuple[torch.dtype, ...], *, head_dim: int, bias_grad: bool) -> Optional[str]:
    """What the attention kernels (cuda, triton) take beyond their dtypes."""
    dtype = dtypes[0]
    if dtype not in KERNEL_DTYPES or head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        return f"{backend} attention needs fp16/bf16 and D a multiple of 8 <= {MAX_HEAD_DIM}, got {dtype} and D={head_dim}"
    if bias_grad:
        return f"{backend} attention does not differentiate the bias, and this bias requires grad"
    return None


def _cpu_limits(backend: str, dtypes: tuple[torch.dtype, ...], *, head_dim: int, bias_grad: bool) -> Optional[str]:
    """What the CPU kernel takes beyond its dtypes: any head dim, no bias gradient."""
    if bias_grad:
        return f"{backend} attention does not differentiate the bias, and this bias requires grad"
    return None


#: The backends of attention and what each serves.
FAMILY = _backend.Family(
    "attention",
    cpu=_backend.Support(dtypes=CPU_DTYPES, kernels=("attention_fwd", "attention_bwd"), check=_cpu_limits),
    cuda=_backend.Support(dtypes=KERNEL_DTYPES, kernels=("attention_fwd", "attention_bwd"), check=_limits),
    triton=_backend.Support(dtypes=KERNEL_DTYPES, check=_limits),
)


def select_backend(q: Tensor, bias: Optional[Tensor] = None) -> str:
    """The backend that serves `attention` for these inputs (raises if a forced one cannot).

    The one place where attention chooses between its kernels and the reference (SDPA)."""
    bias_grad = bias is not None and torch.is_grad_enabled() and bias.requires_grad
    return FAMILY.select(OP, q.device, (q.dtype,), head_dim=q.shape[-1], bias_grad=bias_grad)


def support() -> dict[str, str]:
    """Which attention kernels serve which dtypes, devices and head dims, in words (`fastdiff info`)."""
    dims = f"D a multiple of 8 in [8, {MAX_HEAD_DIM}]"
    cuda_state = "compiled" if FAMILY.carried("cuda") else "not in this build of fastdiff._C"
    return {
        "cuda": f"CUDA tensors, fp16/bf16, {dims}; forward + backward ({cuda_state})",
        "triton": (
            f"CUDA tensors (CPU under TRITON_INTERPRET=1), fp16/bf16, {dims}; forward + backward; "
            f"no padding work for D in {{{', '.join(map(str, TRITON_EXACT_HEAD_DIMS))}}}, the rest pad "
            "their smallest chunk; Nk <= 256 in one key block (cross-attention), else tiled"
        ),
        "cpu": (
            "CPU tensors, float32/fp16/bf16 (float32 arithmetic), any D (compiled for D rounded up to a multiple of 8 in 8, 16, 32, 40, 64, 72, "
            f"80, 128); forward + backward ({'compiled' if FAMILY.carried('cpu') else 'not in this build of fastdiff._C'})"
        ),
        "reference": "every device and float dtype (float32/float64 math; fp16/bf16 upcast to float32), any D",
    }


def _kernel_layout(t: Tensor) -> Tensor:
    """t itself when its rows are 16-byte aligned with a contiguous head dim (the schema's promise).

    The CPU kernel packs its rows anyway and reads any strides: CPU tensors are never copied."""
    if t.device.type == "cpu":
        return t
    if t.stride(-1) != 1 or t.storage_offset() % 8 or any(s % 8 for s in t.stride()[:-1]):
        return t.contiguous()
    return t


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """Attention over (B, N, H, D) tensors: returns ``softmax(scale * q k^T + bias) v`` as (B, Nq, H, D).

    q: (B, Nq, H, D); k, v: (B, Nk, H, D); any strides (pass (B, H, N, D) tensors as
    ``t.transpose(1, 2)``). ``mask``: None; a bool (B, Nk) key-padding mask, True = attend; or an
    additive float bias broadcastable to (B, H, Nq, Nk) (so a 2-D float bias is (Nq, Nk), as in
    SDPA), -inf excluding a key. ``scale`` defaults to 1/sqrt(D). A query row with no attended key
    gets zeros (and zero gradients). The result is contiguous in q's dtype.
    """
    b, nq, h, d, nk = _check_qkv(q, k, v)
    key_mask, bias = _check_mask(mask, q, b, h, nq, nk)
    scale = _check_scale(scale, d)
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)  # SDPA's convention: an additive mask has the query's dtype
    backend = select_backend(q, bias)
    if backend == "reference" or b * h * nq * nk == 0:
        return attention_reference(q, k, v, key_mask=key_mask, bias=bias, scale=scale)
    served = attention_dispatch.maybe_sdpa(q, k, v, scale, mask is not None, _backend.forced() is not None)
    if served is not None:  # SDPA's best backend is faster here (attention_dispatch.py)
        return served
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    if key_mask is not None:
        key_mask = key_mask.contiguous()
    if bias is not None:
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape)).expand(b, h, nq, nk)
    fwd = torch.ops.fastdiff.attention_fwd_triton if backend == "triton" else torch.ops.fastdiff.attention_fwd
    out, _ = fwd.default(q, k, v, key_mask, bias, scale)
    return out


# ---------------------------------------------------------------------------------------------
# Registration: fake kernels, autograd, Triton variants
# ---------------------------------------------------------------------------------------------
def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], bias: Optional[Tensor], scale: float):
    b, nq, h, d = q.shape
    return q.new_empty((b, nq, h, d)), q.new_empty((b, h, nq), dtype=torch.float32)


def _bwd_fake(grad_out, q, k, v, out, lse, key_mask, bias, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, key_mask, bias, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, bias)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _make_backward(bwd_name: str):
    def backward(ctx: Any, grad_out: Tensor, grad_lse: Optional[Tensor]):
        if ctx.needs_input_grad[4]:
            raise RuntimeError(
                "fastdiff.attention: the attention kernels do not differentiate the bias; "
                "call fastdiff.ops.attention (it routes such a bias to the reference)"
            )
        q, k, v, out, lse, key_mask, bias = ctx.saved_tensors
        grad_out = _kernel_layout(grad_out)
        dq, dk, dv = getattr(torch.ops.fastdiff, bwd_name).default(grad_out, q, k, v, out, lse, key_mask, bias, ctx.scale)
        return dq, dk, dv, None, None, None

    return backward


register_fake(["attention_fwd", "attention_fwd_triton"], _fwd_fake)
register_fake(["attention_bwd", "attention_bwd_triton"], _bwd_fake)
for _fwd, _bwd in (("attention_fwd", "attention_bwd"), ("attention_fwd_triton", "attention_bwd_triton")):
    torch.library.register_autograd(f"fastdiff::{_fwd}", _make_backward(_bwd), setup_context=_setup_context)
register_triton("attention_fwd", "attention", "attention_fwd")
register_triton("attention_bwd", "attention", "attention_bwd")
