"""Benchmark: classifier-free guidance combine, fastdiff against eager PyTorch.

Eager: ``u, c = out.chunk(2); u + s * (c - u)``. fastdiff: ``fastdiff.ops.guidance_combine(out, s)``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from .. import ops
from ._case import BASELINE, FASTDIFF, Candidate, Case, copy_floor, on_backend
from ._sizes import Size

OP = "guidance_combine"
SCALE = 7.5

# Bytes per latent element N (e = bytes per element of the dtype):
#   fused:  reads u and c once (2N), writes the guided output once (N)            -> 3N e
#   eager:  c - u reads 2N, writes N; s * t reads N, writes N; u + t reads 2N,
#           writes N                                                              -> 8N e,
#           and allocates two full-size temporaries per call.
TRAFFIC = "fused minimum: read u and c, write the output = 3 x N x bytes/element (eager moves 8 x N x bytes/element)"


def eager(model_out: Tensor, scale: float) -> Tensor:
    u, c = model_out.chunk(2)
    return u + scale * (c - u)


def guided_inputs(size: Size, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    """A batched [uncond; cond] output (2B, ...): cond close to uncond, as with a trained model."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(size.shape, generator=g)
    c = u + 0.5 * torch.randn(size.shape, generator=g)
    return torch.cat([u, c]).to(device=device, dtype=dtype)


def _fastdiff_candidate(backend: str, model_out: Tensor, device: torch.device) -> Candidate:
    # ops.guidance_combine is looked up at call time: the tests replace it to prove a wrong kernel is caught.
    call = on_backend(backend, "guidance", OP, device, (model_out.dtype,), lambda: ops.guidance_combine(model_out, SCALE))
    return Candidate(f"fastdiff[{backend}]", FASTDIFF, call, lambda: {"out": call()})


def cases(sizes: Sequence[Size], dtypes: Sequence[torch.dtype], device: torch.device, backends: Sequence[str]) -> Iterator[Case]:
    """One case per (size, dtype), built when it is about to run (large inputs are not kept)."""
    for size in sizes:
        for dtype in dtypes:
            model_out = guided_inputs(size, dtype, device)
            nbytes = 3 * size.elements * model_out.element_size()
            cands = [Candidate("eager", BASELINE, lambda m=model_out: eager(m, SCALE), lambda m=model_out: {"out": eager(m, SCALE)})]
            cands += [_fastdiff_candidate(b, model_out, device) for b in backends]
            cands.append(copy_floor(nbytes, dtype, device))
            yield Case(
                bench="guidance",
                variant=None,
                size=size,
                dtype=dtype,
                device=device,
                nbytes=nbytes,
                traffic=TRAFFIC,
                expected=lambda m=model_out: {"out": eager(m.double(), SCALE)},
                candidates=cands,
            )
