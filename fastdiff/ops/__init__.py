"""fastdiff ops: typed Python entry points over the `torch.ops.fastdiff` custom ops.

Each family module holds the entry point, its pure-PyTorch reference, the fake kernel and the
registration of its Triton variant. Beside them, `fastdiff.ops.randn.randn` draws torch.randn's values
faster on CPU (the schedulers' and samplers' noise); it is no kernel family and has no backends to force.
"""

from ._common import InputError
from .adaln import (
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual,
    gated_residual_adaln,
    gated_residual_adaln_reference,
    gated_residual_reference,
)
from .attention import attention, attention_reference
from .geglu import geglu, geglu_reference
from .group_norm import group_norm, group_norm_reference
from .guidance import guidance_combine, guidance_combine_reference
from .sampler_update import sampler_update, sampler_update_reference

__all__ = [
    "InputError",
    "adaln_modulate",
    "adaln_modulate_reference",
    "gated_residual",
    "gated_residual_adaln",
    "gated_residual_adaln_reference",
    "gated_residual_reference",
    "attention",
    "attention_reference",
    "geglu",
    "geglu_reference",
    "group_norm",
    "group_norm_reference",
    "guidance_combine",
    "guidance_combine_reference",
    "sampler_update",
    "sampler_update_reference",
]
