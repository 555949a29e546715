"""Putting fastdiff's kernels into models people already have.

`patch` / `unpatch` swap fused kernels into an ``nn.Module`` wherever they compute the same thing
(the rules live one family per module: ``rules_attention``, ``rules_adaln``, ``rules_norm``,
``rules_timm``); `accelerate` / `unaccelerate` do that for a diffusers pipeline and swap in fastdiff's
scheduler; `generate` runs a pipeline's own text encoding and decoding around `fastdiff.sample`.
Nothing here is imported by ``import fastdiff`` until it is used (diffusers is optional).
"""

from .accelerate import accelerate, unaccelerate
from .generate import generate
from .patching import patch, unpatch
from .report import PatchReport

__all__ = ["PatchReport", "accelerate", "generate", "patch", "unaccelerate", "unpatch"]
