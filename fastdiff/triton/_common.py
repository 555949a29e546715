"""What every Triton op module shares: cheap argument checks, launch sizes, the per-sample tiling.

The typed entry points in fastdiff/ops/ already check and normalise their inputs; the checks here
guard the raw ``torch.ops.fastdiff.<op>_triton`` calls, which take whatever they are given. They
read shapes, dtypes, devices and strides only (never values: that would sync with the device).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch
import triton
import triton.language as tl

from .. import _backend
from ..ops._common import check_tensor, describe, fail

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Elements per program of the elementwise kernels: 16 per thread at 4 warps, i.e. several
#: 16-byte loads in flight per stream. Tunable (module attribute, or each op's ``block=``).
BLOCK = 2048
#: Elements per partial of the rescale reduction (one program each).
REDUCE_BLOCK = 4096
#: Partials the combine step of the rescale reduction folds per loop iteration.
COMBINE_BLOCK = 256
#: Smallest block: tiny samples get one small program each rather than a mostly masked 2048 lanes.
MIN_BLOCK = 16

_INT32_MAX = 2**31 - 1


def block_for(n: int, block: Optional[int], default: int) -> int:
    """The block for samples of `n` elements: the power of two covering `n`, capped at the default."""
    cap = default if block is None else block
    if cap < 1 or cap & (cap - 1):
        raise ValueError(f"fastdiff triton: block sizes are powers of two, got {cap}")
    return max(1, min(cap, max(MIN_BLOCK, triton.next_power_of_2(max(n, 1)))))


def warps_for(block: int) -> int:
    return max(1, min(8, block // 512))


def wide(n: int, block: int) -> bool:
    """Whether in-sample offsets can pass 2**31 (then the kernels compute them in int64)."""
    return n + block > _INT32_MAX


def grid_for(op: str, batch: int, n: int, block: int) -> tuple[int]:
    programs = batch * triton.cdiv(n, block)
    if programs > _INT32_MAX:
        fail(op, "model_out", f"at most {_INT32_MAX} blocks of {block} elements", f"{programs} blocks")
    return (programs,)


def check_runnable(op: str, arg: str, t: torch.Tensor) -> None:
    if _backend.device_reason("triton", t.device) is not None:
        fail(op, arg, "a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 set before triton is imported)", f"a tensor on {t.device}")


def check_input(op: str, arg: str, t: object, *, device: Optional[torch.device] = None,
                dtypes=KERNEL_DTYPES, min_ndim: int = 0) -> torch.Tensor:
    """A kernel input: a tensor of a kernel dtype, on `device`, contiguous (the kernels index it flat)."""
    check_tensor(op, arg, t, dtypes=dtypes, device=device, min_ndim=min_ndim)
    if not t.is_contiguous():
        fail(op, arg, "a contiguous tensor (the typed entry point in fastdiff.ops makes it so)", describe(t))
    return t


def check_per_sample(op: str, arg: str, t: Optional[torch.Tensor], batch: int, device: torch.device) -> None:
    if t is not None:
        check_input(op, arg, t, device=device, dtypes=(torch.float32,))
        if tuple(t.shape) != (batch,):
            fail(op, arg, f"a float32 tensor of shape ({batch},)", describe(t))


def even_batch(op: str, arg: str, model_out: torch.Tensor) -> int:
    if model_out.dim() == 0 or model_out.shape[0] % 2:
        fail(op, arg, "an even batch: the [uncond; cond] halves concatenated on dim 0", describe(model_out))
    return model_out.shape[0] // 2


def on_device(t: torch.Tensor) -> ContextManager[object]:
    """Launch on `t`'s GPU (Triton launches on the current device), or nothing on CPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@triton.jit
def sample_tile(n, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """This program's (sample, block index, element offsets in the sample, mask).

    Programs tile each sample of `n` elements in BLOCK-sized pieces, sample-major, so per-sample
    scalars are loaded once per program and no element needs an integer division.
    """
    pid = tl.program_id(0)
    nblk = tl.cdiv(n, BLOCK)
    b = pid // nblk
    blk = pid - b * nblk
    if WIDE:
        offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = blk * BLOCK + tl.arange(0, BLOCK)
    return b, blk, offs, offs < n


@triton.jit
def guided(u, c, s):
    """Classifier-free guidance in float32: u + s (c - u)."""
    return u + s * (c - u)
