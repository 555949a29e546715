"""adaLN for DiT blocks: normalisation + adaptive modulation, gated residuals, and both fused.

    adaln_modulate(x, shift, scale)        = norm(x) * (1 + scale) + shift
    gated_residual(x, gate, h)             = x + gate * h
    gated_residual_adaln(x, gate, h, ...)  = (x + gate * h, adaln_modulate(x + gate * h, ...))

``norm`` is LayerNorm without affine over the last dim ("layer") or RMSNorm ("rms"), optionally
followed by an elementwise ``* weight + bias``. x is (B, N, D); each modulation tensor is per sample
(B, D) (or (B, 1, D)) or per token (B, N, D). The kernels keep statistics and arithmetic in float32;
their forward saves mean/rstd (float32 (B, N)) and a backward op recomputes the normalised rows from
them (csrc/ops.cpp documents exactly what each op saves and computes). Sums over tokens in the
backward of per-sample modulation are deterministic on every backend.

The ``*_forward_reference`` / ``*_backward_reference`` functions below take exactly the arguments of
the custom ops and compute what they return, in float64 when given float64: they are the
specification the CPU, Triton and CUDA kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend
from ._common import FLOAT_DTYPES, acc_dtype, check_tensor, describe, fail, kernel_op, register_fake, register_triton

NORMS = ("layer", "rms")


# ---------------------------------------------------------------------------------------------
# Reference: the specification. float64 in -> float64 arithmetic, else float32 arithmetic.
# ---------------------------------------------------------------------------------------------
def _tok(t: Tensor) -> Tensor:
    """A modulation tensor broadcast against (B, N, D): per-sample (B, D) -> (B, 1, D)."""
    return t.unsqueeze(1) if t.dim() == 2 else t


def _reduce_like(v: Tensor, per_token: bool) -> Tensor:
    """The gradient of a modulation tensor: v itself (per token) or its sum over the tokens."""
    return v if per_token else v.sum(1)


def _normalise(xa: Tensor, eps: float, rms: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(xhat, mean, rstd) of each row of xa, in xa's precision; mean is 0 for rms."""
    if rms:
        mean = torch.zeros(xa.shape[:-1], dtype=xa.dtype, device=xa.device)
        var = (xa * xa).mean(-1)
    else:
        mean = xa.mean(-1)
        var = ((xa - mean.unsqueeze(-1)) ** 2).mean(-1)
    rstd = torch.rsqrt(var + eps)
    return (xa - mean.unsqueeze(-1)) * rstd.unsqueeze(-1), mean, rstd


def _affine(xhat: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], acc: torch.dtype) -> Tensor:
    n = xhat
    if weight is not None:
        n = n * weight.to(acc)
    if bias is not None:
        n = n + bias.to(acc)
    return n


def _stat_dtype(acc: torch.dtype) -> torch.dtype:
    return torch.float64 if acc == torch.float64 else torch.float32


def _modulate_acc(xa, shift, scale, weight, bias, eps, rms, acc):
    xhat, mean, rstd = _normalise(xa, eps, rms)
    out = _affine(xhat, weight, bias, acc) * (1 + _tok(scale.to(acc))) + _tok(shift.to(acc))
    return out, mean.to(_stat_dtype(acc)), rstd.to(_stat_dtype(acc))


def adaln_modulate_forward_reference(
    x: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, rms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``fastdiff::adaln_modulate`` returns: (out in x's dtype, mean, rstd)."""
    acc = acc_dtype(x, shift, scale, weight, bias)
    out, mean, rstd = _modulate_acc(x.to(acc), shift, scale, weight, bias, eps, rms, acc)
    return out.to(x.dtype), mean, rstd


def _modulate_backward_acc(g, xa, scale, weight, bias, mean, rstd, rms, shift_per_token, acc):
    """adaln_modulate's backward on acc-precision rows; grad_x in acc, the rest cast by the caller."""
    xhat = (xa - mean.to(acc).unsqueeze(-1)) * rstd.to(acc).unsqueeze(-1)
    nrm = _affine(xhat, weight, bias, acc)
    gn = g * (1 + _tok(scale.to(acc)))
    gx = gn * weight.to(acc) if weight is not None else gn
    c2 = (gx * xhat).mean(-1, keepdim=True)
    inner = gx - xhat * c2 if rms else gx - gx.mean(-1, keepdim=True) - xhat * c2
    grad_x = rstd.to(acc).unsqueeze(-1) * inner
    grad_shift = _reduce_like(g, shift_per_token)
    grad_scale = _reduce_like(g * nrm, scale.dim() == 3)
    empty = xa.new_empty((0,))
    grad_weight = (gn * xhat).sum((0, 1)) if weight is not None else empty
    grad_bias = gn.sum((0, 1)) if bias is not None else empty
    return grad_x, grad_shift, grad_scale, grad_weight, grad_bias


def adaln_modulate_backward_reference(
    grad_out: Tensor, x: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
    mean: Tensor, rstd: Tensor, rms: bool, shift_per_token: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What ``fastdiff::adaln_modulate_backward`` returns: (grad_x, grad_shift, grad_scale, grad_weight, grad_bias)."""
    acc = acc_dtype(grad_out, x, scale, weight, bias)
    gx, gs, gsc, gw, gb = _modulate_backward_acc(
        grad_out.to(acc), x.to(acc), scale, weight, bias, mean, rstd, rms, shift_per_token, acc
    )
    wd = weight.dtype if weight is not None else x.dtype
    bd = bias.dtype if bias is not None else x.dtype
    return gx.to(x.dtype), gs.to(x.dtype), gsc.to(scale.dtype), gw.to(wd), gb.to(bd)


def gated_residual_backward_reference(grad_out: Tensor, gate: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """What ``fastdiff::gated_residual_backward`` returns: (grad_gate, grad_h)."""
    acc = acc_dtype(grad_out, gate, h)
    g = grad_out.to(acc)
    grad_gate = _reduce_like(g * h.to(acc), gate.dim() == 3)
    return grad_gate.to(gate.dtype), (g * _tok(gate.to(acc))).to(h.dtype)


def gated_residual_adaln_forward_reference(
    x: Tensor, gate: Tensor, h: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor],
    bias: Optional[Tensor], eps: float, rms: bool, *, x_out_dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What ``fastdiff::gated_residual_adaln`` returns: (x_out, out, mean, rstd).

    The statistics and ``out`` are taken of x_out as stored, rounded to ``x_out_dtype`` (default x's
    dtype; tests of low-precision kernels pass that dtype with float64 inputs). The rounding is
    straight-through for autograd: the kernels' backward treats it as the identity."""
    acc = acc_dtype(x, gate, h, shift, scale, weight, bias)
    xo = x.to(acc) + _tok(gate.to(acc)) * h.to(acc)
    stored = xo.to(x_out_dtype or x.dtype)
    xo = xo + (stored.to(acc) - xo).detach()
    out, mean, rstd = _modulate_acc(xo, shift, scale, weight, bias, eps, rms, acc)
    return xo.to(x.dtype), out.to(x.dtype), mean, rstd


def gated_residual_adaln_backward_reference(
    grad_x_out: Tensor, grad_out: Tensor, x_out: Tensor, gate: Tensor, h: Tensor, scale: Tensor,
    weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor, rms: bool, shift_per_token: bool,
) -> tuple[Tensor, ...]:
    """What ``fastdiff::gated_residual_adaln_backward`` returns:
    (grad_x, grad_gate, grad_h, grad_shift, grad_scale, grad_weight, grad_bias)."""
    acc = acc_dtype(grad_x_out, grad_out, x_out, gate, h, scale, weight, bias)
    gx, gs, gsc, gw, gb = _modulate_backward_acc(
        grad_out.to(acc), x_out.to(acc), scale, weight, bias, mean, rstd, rms, shift_per_token, acc
    )
    total = grad_x_out.to(acc) + gx
    grad_gate = _reduce_like(total * h.to(acc), gate.dim() == 3)
    grad_h = total * _tok(gate.to(acc))
    wd = weight.dtype if weight is not None else x_out.dtype
    bd = bias.dtype if bias is not None else x_out.dtype
    return (total.to(x_out.dtype), grad_gate.to(gate.dtype), grad_h.to(h.dtype), gs.to(x_out.dtype),
            gsc.to(scale.dtype), gw.to(wd), gb.to(bd))


# The public references: same signatures as the entry points; autograd runs through PyTorch.
def adaln_modulate_reference(
    x: Tensor, shift: Tensor, scale: Tensor, *, eps: float = 1e-6, weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None, norm: str = "layer",
) -> Tensor:
    return adaln_modulate_forward_reference(x, shift, scale, weight, bias, eps, norm == "rms")[0]


def gated_residual_reference(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    acc = acc_dtype(x, gate, h)
    return (x.to(acc) + _tok(gate.to(acc)) * h.to(acc)).to(x.dtype)


def gated_residual_adaln_reference(
    x: Tensor, gate: Tensor, h: Tensor, shift: Tensor, scale: Tensor, *, eps: float = 1e-6,
    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, norm: str = "layer",
    x_out_dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor]:
    xo, out, _, _ = gated_residual_adaln_forward_reference(x, gate, h, shift, scale, weight, bias, eps, norm == "rms",
                                                           x_out_dtype=x_out_dtype)
    return xo, out


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def _check_x(op: str, x: Any) -> Tensor:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
    if x.dim() != 3:
        fail(op, "x", "a (B, N, D) tensor", describe(x))
    return x


def _check_modulation(op: str, arg: str, t: Any, x: Tensor) -> Tensor:
    """A (B, D) / (B, 1, D) per-sample or (B, N, D) per-token tensor in x's dtype; returns it as (B, D) or (B, N, D)."""
    check_tensor(op, arg, t, dtypes=(x.dtype,), device=x.device)
    b, n, d = x.shape
    if tuple(t.shape) == (b, d) or (tuple(t.shape) == (b, n, d)):
        return t
    if tuple(t.shape) == (b, 1, d):
        return t.reshape(b, d)
    fail(op, arg, f"shape ({b}, {d}) per sample, ({b}, 1, {d}) or ({b}, {n}, {d}) per token (x is {tuple(x.shape)})",
         describe(t))


def _check_param(op: str, arg: str, t: Any, x: Tensor) -> Optional[Tensor]:
    if t is None:
        return None
    return check_tensor(op, arg, t, dtypes=(x.dtype,), device=x.device, shape=(x.shape[-1],))


def _check_norm(op: str, eps: Any, norm: Any) -> tuple[float, bool]:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        fail(op, "eps", "a finite number >= 0", eps)
    if norm not in NORMS:
        fail(op, "norm", "'layer' or 'rms'", repr(norm))
    return float(eps), norm == "rms"


# Every adaln op with its backward: a compiled backend serves the family only when it carries all of
# them (an extension built before they existed, or a CUDA build without them, falls through).
_KERNELS = ("adaln_modulate", "adaln_modulate_backward", "gated_residual", "gated_residual_backward",
            "gated_residual_adaln", "gated_residual_adaln_backward")
#: The backends of the adaln ops and what each serves.
FAMILY = _backend.Family(
    "adaln",
    cpu=_backend.Support(kernels=_KERNELS),
    cuda=_backend.Support(kernels=_KERNELS),
    triton=_backend.Support(),
)


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def adaln_modulate(
    x: Tensor, shift: Tensor, scale: Tensor, *, eps: float = 1e-6, weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None, norm: str = "layer",
) -> Tensor:
    """``norm(x) * (1 + scale) + shift`` over the last dim of a (B, N, D) tensor.

    ``norm`` is ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm), without affine unless ``weight`` /
    ``bias`` (D,) are given: then ``norm(x) * weight + bias`` is modulated. ``shift`` and ``scale``
    are per sample (B, D) or (B, 1, D), or per token (B, N, D). Differentiable in every tensor.
    """
    op = "adaln_modulate"
    _check_x(op, x)
    shift = _check_modulation(op, "shift", shift, x)
    scale = _check_modulation(op, "scale", scale, x)
    weight, bias = _check_param(op, "weight", weight, x), _check_param(op, "bias", bias, x)
    eps, rms = _check_norm(op, eps, norm)
    backend = FAMILY.select(op, x.device, (x.dtype,))
    if backend == "reference":
        return adaln_modulate_reference(x, shift, scale, eps=eps, weight=weight, bias=bias, norm=norm)
    return kernel_op(op, backend)(x.contiguous(), shift.contiguous(), scale.contiguous(), _c(weight), _c(bias), eps, rms)[0]


def gated_residual(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``x + gate * h`` for (B, N, D) x and h; ``gate`` per sample (B, D) / (B, 1, D) or per token (B, N, D)."""
    op = "gated_residual"
    _check_x(op, x)
    gate = _check_modulation(op, "gate", gate, x)
    check_tensor(op, "h", h, dtypes=(x.dtype,), device=x.device, shape=x.shape)
    backend = FAMILY.select(op, x.device, (x.dtype,))
    if backend == "reference":
        return gated_residual_reference(x, gate, h)
    return kernel_op(op, backend)(x.contiguous(), gate.contiguous(), h.contiguous())


def gated_residual_adaln(
    x: Tensor, gate: Tensor, h: Tensor, shift: Tensor, scale: Tensor, *, eps: float = 1e-6,
    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, norm: str = "layer",
) -> tuple[Tensor, Tensor]:
    """``(x_new, adaln_modulate(x_new, shift, scale, ...))`` with ``x_new = x + gate * h``, in one pass.

    The seam between the attention and MLP halves of a DiT block: the residual update and the next
    half's modulated normalisation read x and h once. The normalisation reads x_new as returned (in
    x's dtype), so the result equals `gated_residual` followed by `adaln_modulate`. Arguments as in
    those two.
    """
    op = "gated_residual_adaln"
    _check_x(op, x)
    gate = _check_modulation(op, "gate", gate, x)
    check_tensor(op, "h", h, dtypes=(x.dtype,), device=x.device, shape=x.shape)
    shift = _check_modulation(op, "shift", shift, x)
    scale = _check_modulation(op, "scale", scale, x)
    weight, bias = _check_param(op, "weight", weight, x), _check_param(op, "bias", bias, x)
    eps, rms = _check_norm(op, eps, norm)
    backend = FAMILY.select(op, x.device, (x.dtype,))
    if backend == "reference":
        return gated_residual_adaln_reference(x, gate, h, shift, scale, eps=eps, weight=weight, bias=bias, norm=norm)
    x_out, out, _, _ = kernel_op(op, backend)(
        x.contiguous(), gate.contiguous(), h.contiguous(), shift.contiguous(), scale.contiguous(), _c(weight), _c(bias),
        eps, rms,
    )
    return x_out, out


# ---------------------------------------------------------------------------------------------
# Autograd is registered in C++ (csrc/autograd.cpp): each forward saves what its backward op reads
# (modulate: x, scale, weight, bias and the statistics; gated_residual: gate, h; the fused op: x_out,
# gate, h, scale, weight, bias and the statistics) and the backward is itself a custom op, so
# torch.compile sees it whole; C++ spares each call torch.library's Python autograd wrapper.
# ---------------------------------------------------------------------------------------------
# Fake kernels (shapes only)
# ---------------------------------------------------------------------------------------------
def _stats_fake(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape[:2], dtype=torch.float32), x.new_empty(x.shape[:2], dtype=torch.float32)


def _param_grad_fake(p: Optional[Tensor], x: Tensor) -> Tensor:
    return p.new_empty(p.shape) if p is not None else x.new_empty((0,))


def _shift_grad_fake(x: Tensor, shift_per_token: bool) -> Tensor:
    return x.new_empty(x.shape if shift_per_token else (x.shape[0], x.shape[2]))


def _modulate_fake(x, shift, scale, weight, bias, eps, rms):
    return (x.new_empty(x.shape), *_stats_fake(x))


def _modulate_backward_fake(grad_out, x, scale, weight, bias, mean, rstd, rms, shift_per_token):
    return (x.new_empty(x.shape), _shift_grad_fake(x, shift_per_token), scale.new_empty(scale.shape),
            _param_grad_fake(weight, x), _param_grad_fake(bias, x))


def _residual_fake(x, gate, h):
    return x.new_empty(x.shape)


def _residual_backward_fake(grad_out, gate, h):
    return gate.new_empty(gate.shape), h.new_empty(h.shape)


def _fused_fake(x, gate, h, shift, scale, weight, bias, eps, rms):
    return (x.new_empty(x.shape), x.new_empty(x.shape), *_stats_fake(x))


def _fused_backward_fake(grad_x_out, grad_out, x_out, gate, h, scale, weight, bias, mean, rstd, rms, shift_per_token):
    return (x_out.new_empty(x_out.shape), gate.new_empty(gate.shape), h.new_empty(h.shape),
            _shift_grad_fake(x_out, shift_per_token), scale.new_empty(scale.shape),
            _param_grad_fake(weight, x_out), _param_grad_fake(bias, x_out))


_FAKES = {
    "adaln_modulate": _modulate_fake,
    "adaln_modulate_backward": _modulate_backward_fake,
    "gated_residual": _residual_fake,
    "gated_residual_backward": _residual_backward_fake,
    "gated_residual_adaln": _fused_fake,
    "gated_residual_adaln_backward": _fused_backward_fake,
}

for _name, _fake in _FAKES.items():
    register_fake([_name, _name + "_triton"], _fake)
    register_triton(_name, "adaln", _name)
