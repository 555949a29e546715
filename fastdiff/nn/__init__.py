"""Drop-in modules built on the fastdiff ops."""

from .adaln import AdaLNZero, TimestepLabelEmbedding
from .dit import DiTBlock

__all__ = ["AdaLNZero", "DiTBlock", "TimestepLabelEmbedding"]
