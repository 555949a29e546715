"""fastdiff.nn: drop-in modules built on fastdiff.ops."""

from .attention import Attention

__all__ = ["Attention"]
