"""GEGLU, the gated GELU of transformer feed-forwards: ``a * gelu(gate)`` with ``a, gate = x.chunk(2, -1)``.

This is diffusers' ``GEGLU`` after its projection (the second half of the projection is the gate),
with the exact (erf) GELU or its tanh approximation. The kernels read each row of x once and write
the output once, in float32 arithmetic; the backward is its own op (``geglu_backward``), which
recomputes gelu(gate) from x instead of saving it.

``geglu_forward_reference`` / ``geglu_backward_reference`` take exactly the arguments of the custom
ops and compute what they return, in float64 when given float64: the specification the CPU, Triton
and CUDA kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .. import _backend
from ._common import FLOAT_DTYPES, check_tensor, describe, fail, kernel_op, register_fake, register_triton

APPROXIMATIONS = ("none", "tanh")
_OPS = ("geglu", "geglu_backward")


# ---------------------------------------------------------------------------------------------
# Reference: the specification. float64 in -> float64 arithmetic, else float32 arithmetic.
# ---------------------------------------------------------------------------------------------
def _acc(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _gelu_and_slope(g: Tensor, tanh: bool) -> tuple[Tensor, Tensor]:
    """gelu(g) and gelu'(g), written out (what the kernels compute) in forms that keep their relative
    accuracy where gelu is tiny (g << 0), unlike 0.5 g (1 + erf(...)) or 0.5 g (1 + tanh(...))."""
    if tanh:
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        s = torch.sigmoid(2 * k * (g + c * g**3))  # (1 + tanh(y)) / 2
        return g * s, s + g * (2 * s * (1 - s)) * k * (1 + 3 * c * g * g)
    cdf = 0.5 * torch.erfc(-g / math.sqrt(2.0))
    return g * cdf, cdf + g * torch.exp(-0.5 * g * g) / math.sqrt(2.0 * math.pi)


def geglu_forward_reference(x: Tensor, tanh: bool) -> Tensor:
    """What ``fastdiff::geglu`` returns: ``a * gelu(gate)`` in x's dtype."""
    a, gate = x.to(_acc(x)).chunk(2, -1)
    return (a * F.gelu(gate, approximate="tanh" if tanh else "none")).to(x.dtype)


def geglu_backward_reference(grad_out: Tensor, x: Tensor, tanh: bool) -> Tensor:
    """What ``fastdiff::geglu_backward`` returns: ``[g * gelu(gate) | g * a * gelu'(gate)]`` in x's dtype."""
    acc = _acc(grad_out, x)
    a, gate = x.to(acc).chunk(2, -1)
    g = grad_out.to(acc)
    value, slope = _gelu_and_slope(gate, tanh)
    return torch.cat([g * value, g * a * slope], -1).to(x.dtype)


def geglu_reference(x: Tensor, *, approximate: str = "none") -> Tensor:
    """`geglu` in pure PyTorch (autograd through PyTorch); float64 in, float64 arithmetic."""
    tanh = _check(x, approximate, "geglu_reference")
    return geglu_forward_reference(x, tanh)


# ---------------------------------------------------------------------------------------------
# Argument checks and backend choice
# ---------------------------------------------------------------------------------------------
def _check(x: Any, approximate: Any, op: str) -> bool:
    """Checks x and approximate; returns whether GELU is the tanh approximation."""
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    if x.shape[-1] % 2:
        fail(op, "x", "an even last dim (the [a | gate] halves)", describe(x))
    if approximate not in APPROXIMATIONS:
        fail(op, "approximate", "'none' or 'tanh'", repr(approximate))
    return approximate == "tanh"


#: The backends of the geglu ops and what each serves (a compiled backend only when this build of
#: fastdiff._C carries both kernels; an older extension falls through to the next backend).
FAMILY = _backend.Family(
    "geglu",
    cpu=_backend.Support(kernels=_OPS),
    cuda=_backend.Support(kernels=_OPS),
    triton=_backend.Support(),
)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def geglu(x: Tensor, *, approximate: str = "none") -> Tensor:
    """``a * gelu(gate)`` with ``a, gate = x.chunk(2, dim=-1)``: (..., 2H) -> (..., H).

    ``approximate`` is ``"none"`` (exact, erf-based GELU) or ``"tanh"``, as in
    ``torch.nn.functional.gelu``. float32/float16/bfloat16 run on the kernels with float32
    arithmetic (one rounding, of the result); float64 runs on the reference. Any strides (a
    non-contiguous x is copied first), empty tensors, differentiable in x.
    """
    op = "geglu"
    tanh = _check(x, approximate, op)
    backend = FAMILY.select(op, x.device, (x.dtype,))
    if backend == "reference":
        return geglu_forward_reference(x, tanh)
    return kernel_op(op, backend)(x.contiguous(), tanh)


# ---------------------------------------------------------------------------------------------
# Fake kernels. Autograd is registered in C++ (csrc/autograd.cpp: save x, backward = the
# geglu_backward op, itself a custom op so torch.compile sees it whole), which spares each call
# torch.library's Python autograd wrapper.
# ---------------------------------------------------------------------------------------------
def _forward_fake(x: Tensor, tanh: bool) -> Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _backward_fake(grad_out: Tensor, x: Tensor, tanh: bool) -> Tensor:
    return x.new_empty(x.shape)


for _name, _fake in (("geglu", _forward_fake), ("geglu_backward", _backward_fake)):
    register_fake([_name, _name + "_triton"], _fake)
    register_triton(_name, "geglu", _name)
