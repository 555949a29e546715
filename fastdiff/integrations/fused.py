"""The adaLN seams of a transformer block, on fastdiff's fused ops, given the block's own norm modules.

Each helper reads the normalisation (LayerNorm or RMSNorm, eps, affine weight and bias) off the
module the block already has and calls the fused op; when the call falls outside what the op takes
(tensors of different dtypes, not (B, N, D)), it computes the block's own expression instead, so a
patched block runs wherever the original did.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..ops import adaln_modulate, gated_residual, gated_residual_adaln


def norm_args(norm: nn.Module) -> Optional[tuple[str, float, Optional[Tensor], Optional[Tensor]]]:
    """(kind, eps, weight, bias) of a LayerNorm / RMSNorm over the last dim, or None for anything else."""
    if isinstance(norm, nn.LayerNorm):
        return ("layer", norm.eps, norm.weight, norm.bias) if len(norm.normalized_shape) == 1 else None
    if type(norm).__name__ == "RMSNorm" and isinstance(getattr(norm, "eps", None), float):
        shape = getattr(norm, "normalized_shape", getattr(norm, "dim", ()))
        if len(tuple(shape)) == 1:  # torch's nn.RMSNorm and diffusers' RMSNorm
            return "rms", norm.eps, getattr(norm, "weight", None), getattr(norm, "bias", None)
    return None


def refuse_norm(norm: Optional[nn.Module], where: str) -> Optional[str]:
    if norm is None or norm_args(norm) is None:
        return f"{where} is {type(norm).__name__}, not a LayerNorm/RMSNorm over the last dim"
    return None


def _tok(t: Tensor) -> Tensor:
    return t.unsqueeze(1) if t.dim() == 2 else t


def _fits(x: Tensor, *tensors: Optional[Tensor]) -> bool:
    return x.dim() == 3 and all(t is None or (t.dtype == x.dtype and t.device == x.device) for t in tensors)


def modulate(x: Tensor, shift: Tensor, scale: Tensor, norm: nn.Module) -> Tensor:
    """``norm(x) * (1 + scale) + shift`` (shift, scale per sample (B, D) / (B, 1, D) or per token)."""
    kind, eps, w, b = norm_args(norm)
    if _fits(x, shift, scale, w, b):
        return adaln_modulate(x, shift, scale, eps=eps, weight=w, bias=b, norm=kind)
    return norm(x) * (1 + _tok(scale)) + _tok(shift)


def residual(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``x + gate * h``."""
    if _fits(x, gate, h) and h.shape == x.shape:
        return gated_residual(x, gate, h)
    return x + _tok(gate) * h


def residual_modulate(x: Tensor, gate: Tensor, h: Tensor, shift: Tensor, scale: Tensor, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """``(x', modulate(x', shift, scale, norm))`` with ``x' = x + gate * h``, one pass."""
    kind, eps, w, b = norm_args(norm)
    if _fits(x, gate, h, shift, scale, w, b) and h.shape == x.shape:
        return gated_residual_adaln(x, gate, h, shift, scale, eps=eps, weight=w, bias=b, norm=kind)
    x = residual(x, gate, h)
    return x, modulate(x, shift, scale, norm)
