"""Rules for GroupNorm + SiLU (``ResnetBlock2D``, in U-Nets and VAEs) and GEGLU feed-forwards.

They use ``fastdiff.ops.group_norm(x, num_groups, weight, bias, *, eps, activation="silu")`` and
``fastdiff.ops.geglu(x, approximate=...)``.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import ops
from .patching import Rule, original_forward, swap_forward


def _is(m: nn.Module, name: str) -> bool:
    return any(c.__name__ == name and c.__module__.startswith("diffusers.") for c in type(m).__mro__)


def _gn_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    return ops.group_norm(x, norm.num_groups, norm.weight, norm.bias, eps=norm.eps, activation="silu")


def _resnet_forward(self, input_tensor: Tensor, temb: Optional[Tensor], *args, **kwargs) -> Tensor:
    if args or kwargs:
        return original_forward(self)(input_tensor, temb, *args, **kwargs)
    h = _gn_silu(self.norm1, input_tensor)
    if self.upsample is not None:
        input_tensor, h = self.upsample(input_tensor), self.upsample(h)
    elif self.downsample is not None:
        input_tensor, h = self.downsample(input_tensor), self.downsample(h)
    h = self.conv1(h)
    if self.time_emb_proj is not None and temb is not None:
        temb = self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))[:, :, None, None]
        h = h + temb
    h = self.conv2(self.dropout(_gn_silu(self.norm2, h)))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
    return (input_tensor + h) / self.output_scale_factor


def _refuse_resnet(m: nn.Module) -> Optional[str]:
    # "default" adds the time embedding before norm2; any other mode without a time projection (the VAE
    # decoder's "group") is plain norm2 too. scale_shift modulates after norm2: not this fusion.
    if m.time_embedding_norm != "default" and (m.time_embedding_norm == "scale_shift" or m.time_emb_proj is not None):
        return f"time_embedding_norm {m.time_embedding_norm!r}: not handled"
    if not isinstance(m.nonlinearity, nn.SiLU):
        return f"nonlinearity {type(m.nonlinearity).__name__}, not SiLU"
    if not (type(m.norm1) is nn.GroupNorm and type(m.norm2) is nn.GroupNorm):
        return "norm1/norm2 are not plain GroupNorms"
    return None


def _geglu_forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
    return ops.geglu(self.proj(hidden_states), approximate="none")


RULES = [
    Rule("group_norm + SiLU (fastdiff.ops.group_norm)", matches=lambda m: _is(m, "ResnetBlock2D"),
         refuse=_refuse_resnet, install=lambda m: swap_forward(m, _resnet_forward), folds=("norm1", "norm2")),
    Rule("fastdiff.ops.geglu", matches=lambda m: _is(m, "GEGLU") and type(m).__name__ == "GEGLU",
         install=lambda m: swap_forward(m, _geglu_forward)),
]
