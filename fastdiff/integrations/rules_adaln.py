"""Rules for diffusers' adaLN transformer blocks: DiT and PixArt (``BasicTransformerBlock`` with
``norm_type`` ada_norm_zero / ada_norm_single), SD3 (``JointTransformerBlock``), and the adaLN
norms on their own (``AdaLayerNormZero``, ``AdaLayerNormContinuous``, the latter with LayerNorm or
RMSNorm).

A block's fused forward does what diffusers' forward does, in the same order, with three seams on
fastdiff's ops: the first modulated norm (`adaln_modulate`), the attention residual joined with the
MLP half's modulated norm (`gated_residual_adaln`, one pass) and the gated MLP residual
(`gated_residual`). Inputs it does not cover (feed-forward chunking, GLIGEN, 4-D hidden states) go
to diffusers' forward, per call.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from .fused import modulate, refuse_norm, residual, residual_modulate
from .patching import Rule, original_forward, swap_forward


def _is(m: nn.Module, module: str, name: str) -> bool:
    """isinstance(m, diffusers.<module>.<name>) without importing diffusers for models that do not use it."""
    return any(c.__name__ == name and c.__module__.startswith("diffusers." + module) for c in type(m).__mro__)


def _zero_chunks(norm: nn.Module, emb: Optional[Tensor], timestep=None, class_labels=None, dtype=None) -> tuple[Tensor, ...]:
    """The six adaLN-Zero chunks of an ``AdaLayerNormZero`` (shift, scale, gate for attention, then MLP)."""
    if norm.emb is not None:
        emb = norm.emb(timestep, class_labels, hidden_dtype=dtype)
    return norm.linear(norm.silu(emb)).chunk(6, dim=1)


# ---- BasicTransformerBlock (DiT: ada_norm_zero, PixArt: ada_norm_single) ---------------------------------
def _basic_block_forward(self, hidden_states: Tensor, attention_mask=None, encoder_hidden_states=None,
                         encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                         added_cond_kwargs=None) -> Tensor:
    kwargs = dict(cross_attention_kwargs or {})
    if hidden_states.dim() != 3 or self._chunk_size is not None or "gligen" in kwargs:
        return original_forward(self)(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                      timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
    kwargs.pop("scale", None)  # deprecated and ignored by diffusers too
    x = hidden_states
    if self.norm_type == "ada_norm_zero":
        chunks = _zero_chunks(self.norm1, None, timestep, class_labels, x.dtype)
        norm_attn, norm_mlp = self.norm1.norm, self.norm3
    else:  # ada_norm_single: per-sample (B, 1, D) chunks from the table plus the model's timestep embedding
        chunks = (self.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)
        norm_attn, norm_mlp = self.norm1, self.norm2
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
    n = modulate(x, shift_msa, scale_msa, norm_attn)
    a = self.attn1(n, encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                   attention_mask=attention_mask, **kwargs)
    if self.attn2 is None:
        x, n = residual_modulate(x, gate_msa, a, shift_mlp, scale_mlp, norm_mlp)
    else:
        x = residual(x, gate_msa, a)
        c = x if self.norm_type == "ada_norm_single" else self.norm2(x)  # PixArt: no norm before cross-attention
        x = self.attn2(c, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs) + x
        n = modulate(x, shift_mlp, scale_mlp, norm_mlp)
    return residual(x, gate_mlp, self.ff(n))


def _refuse_basic(m: nn.Module) -> Optional[str]:
    if m.norm_type not in ("ada_norm_zero", "ada_norm_single"):
        return f"norm_type {m.norm_type!r} has no adaLN modulation to fuse (its attention is patched on its own)"
    if m.pos_embed is not None or hasattr(m, "fuser"):
        return "positional embeddings / GLIGEN fuser inside the block: not handled"
    if m.norm_type == "ada_norm_zero":
        return refuse_norm(m.norm1.norm, "norm1.norm") or refuse_norm(m.norm3, "norm3")
    return refuse_norm(m.norm1, "norm1") or refuse_norm(m.norm2, "norm2")


# ---- JointTransformerBlock (SD3 MMDiT) -------------------------------------------------------------------
def _joint_block_forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, temb: Tensor,
                         joint_attention_kwargs: Optional[dict[str, Any]] = None):
    if self._chunk_size is not None or hidden_states.dim() != 3:
        return original_forward(self)(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs)
    x, c = hidden_states, encoder_hidden_states
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _zero_chunks(self.norm1, temb)
    n = modulate(x, shift_msa, scale_msa, self.norm1.norm)
    if self.context_pre_only:
        nc = _continuous_forward(self.norm1_context, c, temb)
    else:
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = _zero_chunks(self.norm1_context, temb)
        nc = modulate(c, c_shift_msa, c_scale_msa, self.norm1_context.norm)
    a, ca = self.attn(hidden_states=n, encoder_hidden_states=nc, **(joint_attention_kwargs or {}))
    x, n = residual_modulate(x, gate_msa, a, shift_mlp, scale_mlp, self.norm2)
    x = residual(x, gate_mlp, self.ff(n))
    if self.context_pre_only:
        return None, x
    c, nc = residual_modulate(c, c_gate_msa, ca, c_shift_mlp, c_scale_mlp, self.norm2_context)
    return residual(c, c_gate_mlp, self.ff_context(nc)), x


def _refuse_joint(m: nn.Module) -> Optional[str]:
    if m.use_dual_attention:
        return "use_dual_attention (SD3.5's second attention): not handled"
    if not _is(m.norm1, "models.normalization", "AdaLayerNormZero"):
        return f"norm1 is {type(m.norm1).__name__}, not AdaLayerNormZero"
    if m.context_pre_only:
        context = _refuse_continuous(m.norm1_context)
    else:
        context = refuse_norm(m.norm1_context.norm, "norm1_context.norm") or refuse_norm(m.norm2_context, "norm2_context")
    return refuse_norm(m.norm1.norm, "norm1.norm") or refuse_norm(m.norm2, "norm2") or context


# ---- the norms on their own ------------------------------------------------------------------------------
def _zero_forward(self, x: Tensor, timestep=None, class_labels=None, hidden_dtype=None, emb=None):
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _zero_chunks(self, emb, timestep, class_labels, hidden_dtype)
    return modulate(x, shift_msa, scale_msa, self.norm), gate_msa, shift_mlp, scale_mlp, gate_mlp


def _continuous_forward(self, x: Tensor, conditioning_embedding: Tensor) -> Tensor:
    scale, shift = self.linear(self.silu(conditioning_embedding).to(x.dtype)).chunk(2, dim=1)
    return modulate(x, shift, scale, self.norm)


def _refuse_continuous(m: nn.Module) -> Optional[str]:
    return refuse_norm(m.norm, "norm")


_BLOCK_NORMS = ("norm1", "norm1_context", "norm2", "norm2_context", "norm3")

RULES = [
    Rule("fused adaLN block (adaln_modulate, gated_residual_adaln, gated_residual)",
         matches=lambda m: _is(m, "models.attention", "BasicTransformerBlock"),
         refuse=_refuse_basic, install=lambda m: swap_forward(m, _basic_block_forward), folds=_BLOCK_NORMS),
    Rule("fused MMDiT block (adaln_modulate, gated_residual_adaln, gated_residual)",
         matches=lambda m: _is(m, "models.attention", "JointTransformerBlock"),
         refuse=_refuse_joint, install=lambda m: swap_forward(m, _joint_block_forward), folds=_BLOCK_NORMS),
    Rule("adaln_modulate", matches=lambda m: _is(m, "models.normalization", "AdaLayerNormZero"),
         refuse=lambda m: refuse_norm(m.norm, "norm"), install=lambda m: swap_forward(m, _zero_forward)),
    Rule("adaln_modulate", matches=lambda m: _is(m, "models.normalization", "AdaLayerNormContinuous"),
         refuse=_refuse_continuous, install=lambda m: swap_forward(m, _continuous_forward)),
    Rule("", matches=lambda m: _is(m, "models.normalization", "AdaLayerNormSingle"),
         refuse=lambda m: "computes PixArt's modulation vectors only (no norm); the blocks apply them, fused",
         install=lambda m: {}),
]
