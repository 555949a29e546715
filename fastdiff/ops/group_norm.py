"""GroupNorm, optionally fused with the SiLU that follows it in every U-Net / VAE ResNet block.

    group_norm(x, G, weight, bias)                    = GroupNorm(G)(x) with that affine
    group_norm(x, G, weight, bias, activation="silu") = silu(GroupNorm(G)(x))

x is (N, C, *): 4-D NCHW or channels-last, 5-D video (contiguous or channels-last-3d), any rank >= 2.
The kernels keep statistics and arithmetic in float32 (partial sums about a centre, combined in
double, so fp16 activations with a large mean lose nothing), save mean/rstd (float32 (N, G)) and
recompute the normalised values in the backward (csrc/ops.cpp documents exactly what each op
saves and computes). Every sum is taken in a fixed order: the same bits at any thread count.

``group_norm_forward_reference`` / ``group_norm_backward_reference`` take exactly the arguments of
the custom ops and compute what they return, in float64 when given float64: the specification the
CPU, Triton and CUDA kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend
from ._common import FLOAT_DTYPES, acc_dtype, check_tensor, fail, kernel_op, register_fake, register_triton

ACTIVATIONS = (None, "silu")


# ---------------------------------------------------------------------------------------------
# Reference: the specification. float64 in -> float64 arithmetic, else float32 arithmetic.
# ---------------------------------------------------------------------------------------------
def _grouped(t: Tensor, groups: int) -> Tensor:
    """(N, C, *) -> (N, G, C/G * S): each group's elements in one row."""
    n, c = t.shape[:2]
    return t.reshape(n, groups, (c // groups) * math.prod(t.shape[2:]))


def _per_channel(p: Optional[Tensor], x: Tensor, acc: torch.dtype, absent: float) -> Tensor:
    """weight / bias as (1, C, 1, ...) in acc (absent: the constant)."""
    if p is None:
        return torch.tensor(absent, dtype=acc, device=x.device)
    return p.to(acc).reshape(1, -1, *([1] * (x.dim() - 2)))


def _stat_dtype(acc: torch.dtype) -> torch.dtype:
    return torch.float64 if acc == torch.float64 else torch.float32


def _normalise(xa: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(xhat, mean, rstd) of the groups of xa, in xa's precision; an empty group has mean 0, var 0."""
    v = _grouped(xa, groups)
    if v.shape[-1] == 0:
        mean = var = v.new_zeros(v.shape[:2])
    else:
        mean = v.mean(-1)
        var = ((v - mean.unsqueeze(-1)) ** 2).mean(-1)
    rstd = torch.rsqrt(var + eps)
    return ((v - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)).reshape(xa.shape), mean, rstd


def _act(y: Tensor, silu: bool) -> Tensor:
    return y * torch.sigmoid(y) if silu else y


def group_norm_forward_reference(
    x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``fastdiff::group_norm`` returns: (out in x's dtype, mean, rstd)."""
    acc = acc_dtype(x, weight, bias)
    xhat, mean, rstd = _normalise(x.to(acc), num_groups, eps)
    y = xhat * _per_channel(weight, x, acc, 1.0) + _per_channel(bias, x, acc, 0.0)
    sd = _stat_dtype(acc)
    return _act(y, silu).to(x.dtype), mean.to(sd), rstd.to(sd)


def group_norm_backward_reference(
    grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    num_groups: int, silu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``fastdiff::group_norm_backward`` returns: (grad_x, grad_weight, grad_bias)."""
    acc = acc_dtype(grad_out, x, weight, bias)
    n, c = x.shape[:2]
    v = _grouped(x.to(acc), num_groups)
    xhat = ((v - mean.to(acc).unsqueeze(-1)) * rstd.to(acc).unsqueeze(-1)).reshape(x.shape)
    w = _per_channel(weight, x, acc, 1.0)
    y = xhat * w + _per_channel(bias, x, acc, 0.0)
    dy = grad_out.to(acc)
    if silu:
        s = torch.sigmoid(y)
        dy = dy * s * (1 + y * (1 - s))
    dims = tuple(range(2, x.dim()))
    a_nc = dy.sum(dims) if dims else dy  # (N, C)
    b_nc = (dy * xhat).sum(dims) if dims else dy * xhat
    count = max(_grouped(x, num_groups).shape[-1], 1)
    wc = weight.to(acc) if weight is not None else torch.ones(c, dtype=acc, device=x.device)
    m1 = (a_nc * wc).reshape(n, num_groups, -1).sum(-1) / count
    m2 = (b_nc * wc).reshape(n, num_groups, -1).sum(-1) / count
    expand = lambda t: t.repeat_interleave(c // num_groups, dim=1).reshape(n, c, *([1] * len(dims)))  # noqa: E731
    grad_x = expand(rstd.to(acc)) * (dy * w - expand(m1) - xhat * expand(m2))
    empty = x.new_empty((0,))
    grad_w = b_nc.sum(0).to(x.dtype) if weight is not None else empty
    grad_b = a_nc.sum(0).to(x.dtype) if bias is not None else empty
    return grad_x.to(x.dtype), grad_w, grad_b


def group_norm_reference(
    x: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, *,
    eps: float = 1e-5, activation: Optional[str] = None,
) -> Tensor:
    """The public reference: same signature as `group_norm`; autograd runs through PyTorch."""
    return group_norm_forward_reference(x, num_groups, weight, bias, eps, activation == "silu")[0]


# ---------------------------------------------------------------------------------------------
# Argument checks, layout, backend choice
# ---------------------------------------------------------------------------------------------
def _check(op: str, x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, activation: Any) -> None:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=2)
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        fail(op, "num_groups", f"a positive int dividing the {c} channels of x", repr(num_groups))
    for arg, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(op, arg, p, dtypes=(x.dtype,), device=x.device, shape=(c,))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        fail(op, "eps", "a finite number >= 0", repr(eps))
    if activation not in ACTIVATIONS:
        fail(op, "activation", "None or 'silu'", repr(activation))


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout the kernels keep for x: contiguous, or channels-last when x is stored so (4-D / 5-D)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


#: The backends of the group_norm ops and what each serves (a compiled backend only when this build
#: of fastdiff._C carries both kernels; an older extension falls through to the next backend).
FAMILY = _backend.Family(
    "group_norm",
    cpu=_backend.Support(kernels=("group_norm", "group_norm_backward")),
    cuda=_backend.Support(kernels=("group_norm", "group_norm_backward")),
    triton=_backend.Support(),
)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def group_norm(
    x: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, *,
    eps: float = 1e-5, activation: Optional[str] = None,
) -> Tensor:
    """``torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)``, then SiLU when ``activation="silu"``.

    x is (N, C, *) in float32, float16 or bfloat16 (float64 runs the reference); the result keeps
    x's layout when x is contiguous or channels-last, else it is contiguous. Differentiable in x,
    weight and bias.
    """
    op = "group_norm"
    _check(op, x, num_groups, weight, bias, eps, activation)
    backend = FAMILY.select(op, x.device, (x.dtype,))
    if backend == "reference":
        return group_norm_reference(x, num_groups, weight, bias, eps=eps, activation=activation)
    x = x.contiguous(memory_format=memory_format(x))
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    return kernel_op(op, backend)(x, num_groups, w, b, float(eps), activation == "silu")[0]


# ---------------------------------------------------------------------------------------------
# Fake kernels. Autograd is registered in C++ (csrc/autograd.cpp: save x, weight, bias and the
# statistics; backward = the group_norm_backward op on grad_out in x's layout, itself a custom op so
# torch.compile sees it whole), which spares each call torch.library's Python autograd wrapper.
# ---------------------------------------------------------------------------------------------
def _forward_fake(x, num_groups, weight, bias, eps, silu):
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return torch.empty_like(x, memory_format=memory_format(x)), stats, torch.empty_like(stats)


def _backward_fake(grad_out, x, weight, bias, mean, rstd, num_groups, silu):
    def param_grad(p):
        return p.new_empty(p.shape) if p is not None else x.new_empty((0,))

    return torch.empty_like(x, memory_format=memory_format(x)), param_grad(weight), param_grad(bias)


register_fake(["group_norm", "group_norm_triton"], _forward_fake)
register_fake(["group_norm_backward", "group_norm_backward_triton"], _backward_fake)
register_triton("group_norm", "group_norm", "group_norm")
register_triton("group_norm_backward", "group_norm", "group_norm_backward")
