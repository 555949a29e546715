"""Rules for diffusers' ``Attention`` modules: fastdiff processors in place of diffusers' default ones.

Only processors whose computation fastdiff's reproduces are replaced: ``AttnProcessor2_0`` /
``AttnProcessor`` / ``FusedAttnProcessor2_0`` (self, cross, the VAE's spatial attention) and
``JointAttnProcessor2_0`` (SD3's joint attention). Anything else (IP-Adapter, custom or attention-
backend processors, classes other than diffusers' ``Attention``) is left alone and named.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .diffusers_attention import FastDiffAttnProcessor, FastDiffJointAttnProcessor
from .patching import Rule, swap_processor

_PLAIN = ("AttnProcessor2_0", "AttnProcessor", "FusedAttnProcessor2_0")
_JOINT = ("JointAttnProcessor2_0",)


def _is_diffusers_attention(m: nn.Module) -> bool:
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return False
    return isinstance(m, Attention)


def _processor(m: nn.Module) -> str:
    return type(m.processor).__name__


def _refuse_plain(m: nn.Module) -> Optional[str]:
    if getattr(m, "added_kv_proj_dim", None) is not None:
        return "added key/value projections with a non-joint processor (UnCLIP-style): not handled"
    if not m.scale_qk and _processor(m) != "AttnProcessor":
        return "scale_qk=False: AttnProcessor2_0 ignores the module's scale; kept for identical outputs"
    return None


def _refuse_joint(m: nn.Module) -> Optional[str]:
    if not m.scale_qk:
        return "scale_qk=False: JointAttnProcessor2_0 ignores the module's scale; kept for identical outputs"
    return None


RULES = [
    Rule("FastDiffAttnProcessor (fastdiff.ops.attention)",
         matches=lambda m: _is_diffusers_attention(m) and _processor(m) in _PLAIN,
         refuse=_refuse_plain, install=lambda m: swap_processor(m, FastDiffAttnProcessor()), swaps="processor"),
    Rule("FastDiffJointAttnProcessor (fastdiff.ops.attention, joint tokens)",
         matches=lambda m: _is_diffusers_attention(m) and _processor(m) in _JOINT,
         refuse=_refuse_joint, install=lambda m: swap_processor(m, FastDiffJointAttnProcessor()), swaps="processor"),
    # Reported, not patched: a diffusers Attention with a processor fastdiff does not reproduce.
    Rule("", matches=lambda m: _is_diffusers_attention(m) and _processor(m) not in _PLAIN + _JOINT,
         refuse=lambda m: (f"processor {_processor(m)} set by hand (fastdiff.unpatch does not remove it)"
                           if _processor(m).startswith("FastDiff") else
                           f"processor {_processor(m)} is not one fastdiff reproduces"),
         install=lambda m: {}, swaps="processor"),
]
