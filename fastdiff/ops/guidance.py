"""Classifier-free guidance combine: ``u + s * (c - u)`` on a batched ``[uncond; cond]`` output,
with optional guidance rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
Flawed", eq. 15-16), read in place and written once."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _backend
from ._common import FLOAT_DTYPES, acc_dtype, check_tensor, describe, fail, kernel_op, needs_grad, per_sample, register_fake, register_triton

Scale = Union[float, int, Tensor]


#: The backends of the guidance ops and what each serves (the guided half of sampler_update too).
FAMILY = _backend.Family(
    "guidance",
    cpu=_backend.Support(kernels=("guidance_combine", "guidance_rescale_factor")),
    cuda=_backend.Support(kernels=("guidance_combine", "guidance_rescale_factor")),
    triton=_backend.Support(),
)


# ---------------------------------------------------------------------------------------------
# Reference: the specification. float64 in, float64 arithmetic; otherwise float32 arithmetic.
# ---------------------------------------------------------------------------------------------
def guided_reference(model_out: Tensor, scale: Scale, acc: torch.dtype) -> Tensor:
    """u + s (c - u) in `acc` precision; s a number or a per-sample (B,) tensor."""
    b = model_out.shape[0] // 2
    u, c = model_out[:b].to(acc), model_out[b:].to(acc)
    s = per_sample(scale.to(acc), u) if isinstance(scale, Tensor) else float(scale)
    return u + s * (c - u)


def rescale_factor_reference(model_out: Tensor, scale: Scale, rescale: float) -> Tensor:
    """Per-sample ``1 - phi + phi * std(c) / std(guided)``; population std, ratio 1 where std(guided) = 0."""
    acc = acc_dtype(model_out, scale if isinstance(scale, Tensor) else None)
    b = model_out.shape[0] // 2
    g = guided_reference(model_out, scale, acc)
    c = model_out[b:].to(acc)
    dims = list(range(1, model_out.dim()))
    if not dims:  # (2B,) outputs: one element per sample, both stds are 0
        return torch.ones(b, dtype=acc, device=model_out.device)
    std_c = c.std(dim=dims, correction=0)
    std_g = g.std(dim=dims, correction=0)
    ratio = torch.where(std_g > 0, std_c / torch.where(std_g > 0, std_g, 1), torch.ones_like(std_g))
    return (1.0 - rescale) + rescale * ratio


def guidance_combine_reference(model_out: Tensor, scale: Scale, *, rescale: float = 0.0) -> Tensor:
    acc = acc_dtype(model_out, scale if isinstance(scale, Tensor) else None)
    g = guided_reference(model_out, scale, acc)
    if rescale:
        g = g * per_sample(rescale_factor_reference(model_out, scale, rescale), g)
    return g.to(model_out.dtype)


# ---------------------------------------------------------------------------------------------
# Argument checks shared with sampler_update
# ---------------------------------------------------------------------------------------------
def check_scale(op: str, arg: str, scale: Scale, batch: int, device: torch.device) -> tuple[float, Optional[Tensor]]:
    """Split a guidance scale into (number, per-sample float32 tensor or None)."""
    if isinstance(scale, bool):
        fail(op, arg, "a number or a per-sample (B,) tensor", "a bool")
    if isinstance(scale, (int, float)):
        if not math.isfinite(scale):
            fail(op, arg, "a finite number", scale)
        return float(scale), None
    if isinstance(scale, Tensor):
        check_tensor(op, arg, scale, dtypes=FLOAT_DTYPES, device=device)
        if scale.dim() == 0:
            fail(op, arg, f"a number or a per-sample ({batch},) tensor (use float(...) for one scale)", describe(scale))
        if tuple(scale.shape) != (batch,):
            fail(op, arg, f"a per-sample tensor of shape ({batch},)", describe(scale))
        if scale.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(scale).all()):
            fail(op, arg, "finite values", "non-finite values")
        return 0.0, scale
    fail(op, arg, "a number or a per-sample (B,) tensor", type(scale).__name__)


def check_rescale(op: str, arg: str, rescale: float) -> float:
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0:
        fail(op, arg, "a number in [0, 1]", rescale)
    return float(rescale)


def check_guided_batch(op: str, arg: str, model_out: Tensor) -> int:
    if model_out.dim() == 0 or model_out.shape[0] % 2:
        fail(op, arg, "an even batch: the [uncond; cond] halves concatenated on dim 0", describe(model_out))
    return model_out.shape[0] // 2


def rescale_factor(op: str, backend: str, model_out: Tensor, scale: float, scale_t: Optional[Tensor], rescale: float) -> Tensor:
    """The per-sample rescale multiplier on a kernel backend (model_out contiguous)."""
    return kernel_op("guidance_rescale_factor", backend)(model_out, scale, scale_t, rescale)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def guidance_combine(model_out: Tensor, scale: Scale, *, rescale: float = 0.0) -> Tensor:
    """Classifier-free guidance on the batched output ``model_out = cat([uncond, cond])``.

    Returns ``u + scale * (c - u)`` of shape ``(B, ...)`` in ``model_out``'s dtype, computed in
    float32. ``scale`` is a number or a per-sample ``(B,)`` tensor. ``rescale`` (phi) mixes in the
    guided output rescaled to the cond output's per-sample standard deviation.
    """
    op = "guidance_combine"
    check_tensor(op, "model_out", model_out, dtypes=FLOAT_DTYPES, min_ndim=1)
    b = check_guided_batch(op, "model_out", model_out)
    scale_f, scale_t = check_scale(op, "scale", scale, b, model_out.device)
    rescale = check_rescale(op, "rescale", rescale)
    # A float64 per-sample scale keeps the float64 reference (the kernels read float32 scales).
    dtypes = (model_out.dtype,) + ((scale_t.dtype,) if scale_t is not None and scale_t.dtype == torch.float64 else ())
    backend = FAMILY.select(op, model_out.device, dtypes)
    if backend == "reference" or needs_grad(model_out, scale_t):
        # Autograd runs through the reference: the kernels serve inference.
        return guidance_combine_reference(model_out, scale if scale_t is None else scale_t, rescale=rescale)
    if model_out.numel() == 0:
        return model_out.new_empty((b, *model_out.shape[1:]))
    model_out = model_out.contiguous()
    if scale_t is not None:
        scale_t = scale_t.to(torch.float32).contiguous()
    factor = rescale_factor(op, backend, model_out, scale_f, scale_t, rescale) if rescale > 0 else None
    return kernel_op(op, backend)(model_out, scale_f, scale_t, factor)


# ---------------------------------------------------------------------------------------------
# Registration: fake kernels (shapes only) and the Triton variants
# ---------------------------------------------------------------------------------------------
def _combine_fake(model_out: Tensor, scale: float, scale_per_sample: Optional[Tensor], factor: Optional[Tensor]) -> Tensor:
    return model_out.new_empty((model_out.shape[0] // 2, *model_out.shape[1:]))


def _rescale_fake(model_out: Tensor, scale: float, scale_per_sample: Optional[Tensor], rescale: float) -> Tensor:
    return model_out.new_empty((model_out.shape[0] // 2,), dtype=torch.float32)


register_fake(["guidance_combine", "guidance_combine_triton"], _combine_fake)
register_fake(["guidance_rescale_factor", "guidance_rescale_factor_triton"], _rescale_fake)
register_triton("guidance_combine", "guidance", "guidance_combine")
register_triton("guidance_rescale_factor", "guidance", "guidance_rescale_factor")
