"""`GroupNormSiLU`: torch.nn.GroupNorm, optionally followed by SiLU, on the fused fastdiff op.

Parameters and buffers are exactly torch.nn.GroupNorm's (``weight``, ``bias``, or none when
``affine=False``), so a GroupNorm's state dict loads unchanged; ``activation=None`` makes it a
drop-in GroupNorm, ``"silu"`` fuses the SiLU of U-Net / VAE ResNet blocks.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..ops import group_norm


class GroupNormSiLU(nn.GroupNorm):
    """``silu(GroupNorm(x))`` (or plain GroupNorm with ``activation=None``) in one fused kernel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 activation: Optional[str] = "silu", device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        if activation not in (None, "silu"):
            raise ValueError(f"fastdiff.nn.GroupNormSiLU: argument 'activation' expected None or 'silu', got {activation!r}")
        self.activation = activation

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation: Optional[str] = "silu") -> "GroupNormSiLU":
        """The same normalisation as `norm`, sharing its parameters (no copy)."""
        new = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, activation=activation, device="meta")
        new.weight, new.bias = norm.weight, norm.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps, activation=self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}"
