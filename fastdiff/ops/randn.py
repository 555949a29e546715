"""Standard-normal noise with ``torch.randn``'s exact values, drawn faster on CPU.

A stochastic sampler step at SD-latent sizes spends most of its time drawing noise on CPU:
``torch.randn`` pays a virtual call per MT19937 word (about 250 us for a 4x4x64x64 draw on one
core, several times the fused update itself). A drop-in scheduler must draw the same numbers as
diffusers' (same generator, same values, the generator left in the same state), so fastdiff does
not use a different generator: ``fastdiff._C``'s ``torch_randn_`` runs PyTorch's own algorithm
(the engine, the 24-bit uniforms, Box-Muller over 16-value blocks with ATen's AVX2 log/sincos, the
redrawn tail) in a tight loop.

Whether this build reproduces PyTorch's values is checked at run time against ``torch.randn``
itself, once for float32 and once for float16/bfloat16 (sizes that end mid-block); a build or a
PyTorch that does not match (for that precision), a CPU without AVX2, PyTorch's own non-AVX2 kernels (``ATEN_CPU_CAPABILITY=default``)
and everything the fast path does not take (other devices and dtypes, fewer than 16 values,
tracing) get ``torch.randn`` itself, as does a run with a backend other than ``cpu`` forced
(``fastdiff.backend("reference")`` samples with plain PyTorch throughout).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend

#: dtypes the fast sampler fills (PyTorch computes float16/bfloat16 noise in float32 and rounds)
FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_state: dict[bool, Optional[str]] = {}  # reduced precision? -> why not fast (None: fast)


def randn_reference(shape: Sequence[int], *, generator: Optional[torch.Generator] = None,
                    device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """The specification: ``torch.randn(shape, generator=generator, device=device, dtype=dtype)``."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _self_check(reduced: bool) -> Optional[str]:
    """None when torch_randn_ reproduces torch.randn here for float32 (``reduced``: float16 and
    bfloat16, whose path PyTorch has changed across versions), else why not."""
    compiled = _backend.compiled()
    if compiled is None:
        return "fastdiff._C is not available"
    if compiled.cpu_isa() != "avx2":  # x86-64 builds carry the sampler; it runs with the avx2 kernels
        return "no AVX2 normal sampler here (not an x86-64 AVX2 CPU, or FASTDIFF_CPU_ISA=base)"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"PyTorch runs its {torch.backends.cpu.get_cpu_capability()} kernels, whose normal sampler differs"
    cases = ((1249, torch.bfloat16), (1249, torch.float16)) if reduced else ((1249, torch.float32), (2 * 624 * 16 + 48, torch.float32))
    for n, dtype in cases:
        ours, theirs = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
        got = torch.ops.fastdiff.torch_randn_(torch.empty(n, dtype=dtype), ours)
        want = torch.randn(n, generator=theirs, dtype=dtype)
        if not (torch.equal(got, want) and torch.equal(torch.randn(8, generator=ours), torch.randn(8, generator=theirs))):
            return f"torch_randn_ does not reproduce torch.randn {torch.__version__} ({dtype}, {n} values)"
    return None


def fast_path_reason(dtype: torch.dtype = torch.float32) -> Optional[str]:
    """None when `randn` can take the fast sampler for CPU tensors of ``dtype``, else why it cannot
    (checked once per process for float32, and once for float16/bfloat16)."""
    if dtype not in FAST_DTYPES:
        return f"the fast sampler fills float32, float16 or bfloat16, not {dtype}"
    reduced = dtype != torch.float32
    if reduced not in _state:
        _state[reduced] = _self_check(reduced)
    return _state[reduced]  # type: ignore[return-value]


def randn(shape: Sequence[int], *, generator: Optional[torch.Generator] = None,
          device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``torch.randn(shape, generator=generator, device=device, dtype=dtype)``: the same values, and
    ``generator`` (or PyTorch's default CPU generator) left in the same state. Faster on CPU."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    dev = torch.device(device) if device is not None else torch.get_default_device()
    shape = tuple(shape)
    if (dev.type == "cpu" and dtype in FAST_DTYPES and math.prod(shape) >= 16
            and (generator is None or generator.device.type == "cpu")
            and _backend.forced() in (None, "cpu") and not torch.compiler.is_compiling() and fast_path_reason(dtype) is None):
        return torch.ops.fastdiff.torch_randn_(torch.empty(shape, dtype=dtype), generator)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
