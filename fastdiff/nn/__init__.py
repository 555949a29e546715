"""fastdiff.nn: drop-in modules built on fastdiff.ops."""

from .adaln import AdaLNZero, TimestepLabelEmbedding
from .attention import Attention
from .dit import DiTBlock
from .group_norm import GroupNormSiLU

__all__ = ["AdaLNZero", "Attention", "DiTBlock", "GroupNormSiLU", "TimestepLabelEmbedding"]
