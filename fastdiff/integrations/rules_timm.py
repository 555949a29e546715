"""Rules for DiT written the way facebookresearch/DiT's ``models.py`` writes it, recognised by structure.

A block: ``norm1``/``norm2`` LayerNorms, ``attn``, ``mlp`` and ``adaLN_modulation = Sequential(SiLU,
Linear(D, 6 D))``, a ``forward(x, c)``, defined in a module with a ``modulate(x, shift, scale)``
helper. Its forward is ``x += gate_msa * attn(modulate(norm1(x), ...)); x += gate_mlp *
mlp(modulate(norm2(x), ...))``, which the fused forward computes with one `adaln_modulate`, one
`gated_residual_adaln` and one `gated_residual`. The final layer (``norm_final``, ``linear`` and a
``Linear(D, 2 D)`` modulation) gets `adaln_modulate`. timm's ``Attention`` (``qkv``, ``proj``,
``num_heads``) runs `fastdiff.ops.attention` on strided views of the fused qkv projection.
"""

from __future__ import annotations

import inspect
import sys
from typing import Optional

from torch import Tensor, nn

from ..ops import attention
from .fused import modulate, refuse_norm, residual, residual_modulate
from .patching import Rule, original_forward, swap_forward


def _base(m: object) -> object:
    """The layer under a PEFT adapter wrapper (peft's layers have get_base_layer), else m."""
    get = getattr(m, "get_base_layer", None)
    return get() if callable(get) else m


def _modulation(m: nn.Module, chunks: int) -> bool:
    seq = getattr(m, "adaLN_modulation", None)
    if not isinstance(seq, nn.Sequential) or len(seq) != 2 or not isinstance(seq[0], nn.SiLU):
        return False
    lin = _base(seq[1])
    return isinstance(lin, nn.Linear) and lin.out_features == chunks * lin.in_features


def _has_modulate_helper(m: nn.Module) -> bool:
    return callable(getattr(sys.modules.get(type(m).__module__), "modulate", None))


def _takes(m: nn.Module, *names: str) -> bool:
    """forward(self, <len(names)> required positional arguments, anything optional)."""
    params = list(inspect.signature(type(m).forward).parameters.values())[1:]
    required = [p for p in params if p.default is inspect.Parameter.empty]
    return len(required) == len(names) and all(p.kind == p.POSITIONAL_OR_KEYWORD for p in required)


def _is_block(m: nn.Module) -> bool:
    return (_modulation(m, 6) and all(isinstance(getattr(m, n, None), nn.Module) for n in ("norm1", "norm2", "attn", "mlp"))
            and _has_modulate_helper(m) and _takes(m, "x", "c"))


def _is_final(m: nn.Module) -> bool:
    return (_modulation(m, 2) and isinstance(getattr(m, "norm_final", None), nn.Module)
            and isinstance(getattr(m, "linear", None), nn.Module) and _has_modulate_helper(m) and _takes(m, "x", "c"))


def _block_forward(self, x: Tensor, c: Tensor) -> Tensor:
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
    x, n = residual_modulate(x, gate_msa, self.attn(modulate(x, shift_msa, scale_msa, self.norm1)), shift_mlp, scale_mlp, self.norm2)
    return residual(x, gate_mlp, self.mlp(n))


def _final_forward(self, x: Tensor, c: Tensor) -> Tensor:
    shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
    return self.linear(modulate(x, shift, scale, self.norm_final))


# ---- timm's Attention --------------------------------------------------------------------------------------
def _is_timm_attention(m: nn.Module) -> bool:
    qkv, proj = _base(getattr(m, "qkv", None)), _base(getattr(m, "proj", None))
    return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
            and qkv.out_features == 3 * proj.in_features and _takes(m, "x"))


def _refuse_timm_attention(m: nn.Module) -> Optional[str]:
    width = _base(m.proj).in_features
    if width % m.num_heads:
        return f"qkv width {width} is not a multiple of num_heads={m.num_heads}"
    if not isinstance(getattr(m, "scale", None), float):
        return "no float softmax scale attribute"
    return None


def _timm_attention_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
    drop = getattr(self, "attn_drop", None)
    if args or any(v is not None for v in kwargs.values()) or x.dim() != 3 or (
            self.training and isinstance(drop, nn.Dropout) and drop.p > 0):
        return original_forward(self)(x, *args, **kwargs)  # masks, attention dropout: the module's own forward
    q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # (B, N, H, D) strided views
    q_norm, k_norm = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    out = attention(q, k, v, scale=self.scale).flatten(2)
    norm = getattr(self, "norm", None)
    if norm is not None:
        out = norm(out)
    out = self.proj(out)
    drop = getattr(self, "proj_drop", None)
    return drop(out) if drop is not None else out


RULES = [
    Rule("fused DiT block (adaln_modulate, gated_residual_adaln, gated_residual)", matches=_is_block,
         refuse=lambda m: refuse_norm(m.norm1, "norm1") or refuse_norm(m.norm2, "norm2"),
         install=lambda m: swap_forward(m, _block_forward), folds=("norm1", "norm2")),
    Rule("adaln_modulate (DiT final layer)", matches=_is_final, refuse=lambda m: refuse_norm(m.norm_final, "norm_final"),
         install=lambda m: swap_forward(m, _final_forward), folds=("norm_final",)),
    Rule("fastdiff.ops.attention (qkv as strided views)", matches=_is_timm_attention, refuse=_refuse_timm_attention,
         install=lambda m: swap_forward(m, _timm_attention_forward)),
]
