"""fastdiff ops: typed Python entry points over the `torch.ops.fastdiff` custom ops.

Each family module holds the entry point, its pure-PyTorch reference, the fake kernel and the
registration of its Triton variant.
"""

from ._common import InputError
from .attention import attention, attention_reference
from .guidance import guidance_combine, guidance_combine_reference
from .sampler_update import sampler_update, sampler_update_reference

__all__ = [
    "InputError",
    "attention",
    "attention_reference",
    "guidance_combine",
    "guidance_combine_reference",
    "sampler_update",
    "sampler_update_reference",
]
