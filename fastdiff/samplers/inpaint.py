"""Inpainting's per-step blend of the known region (see fastdiff/samplers/loop.py's docstring)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .plan import Plan

#: above this many bytes, inpainting forms each step's known region on the fly (two passes, not one)
INPAINT_TABLE_BYTES = 256 * 2**20


class Inpaint:
    """Per-step blend of the known region (see the module docstring)."""

    def __init__(self, plan: Plan, image: Tensor, mask: Tensor, noise: Tensor):
        keep = 1 - mask
        self.mask = mask.to(noise.dtype).expand_as(noise).contiguous() if mask.shape != noise.shape else mask.to(noise.dtype).contiguous()
        self.p = keep * image
        self.q = keep * noise
        # after evaluation j the state is at levels[j + 1]; the final output keeps the clean image
        lv = list(plan.levels[1:-1]) + [(1.0, 0.0)]
        self.levels = lv
        nbytes = len(lv) * noise.numel() * noise.element_size()
        self.known: Optional[Tensor] = None
        if nbytes <= INPAINT_TABLE_BYTES:
            pq = torch.tensor(lv, dtype=torch.float32).to(noise.device)
            shape = (len(lv),) + (1,) * noise.dim()
            self.known = (pq[:, 0].reshape(shape) * self.p.unsqueeze(0) + pq[:, 1].reshape(shape) * self.q.unsqueeze(0)).to(noise.dtype)

    def known_at(self, j: int) -> Tensor:
        if self.known is not None:
            return self.known[j]
        p, q = self.levels[j]
        return torch.add(self.p * p, self.q, alpha=q)

    def __call__(self, j: int, x: Tensor) -> Tensor:
        return torch.addcmul(self.known_at(j), self.mask, x)
