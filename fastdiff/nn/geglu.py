"""GEGLU (Shazeer, "GLU Variants Improve Transformer", 2020) as in diffusers' feed-forwards.

`GEGLU` has diffusers' ``GEGLU`` parameters (``proj``: Linear to 2 * dim_out), so its state dicts load
unchanged, and runs the gated GELU on the projection with the fused `fastdiff.ops.geglu` (one pass
over the projection instead of a GELU pass and a product pass). The projection's second half is the gate.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..ops import geglu


class GEGLU(nn.Module):
    """``a * gelu(gate)`` with ``a, gate = proj(x).chunk(2, -1)``; ``approximate`` "none" or "tanh"."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True, *, approximate: str = "none"):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # diffusers accepts (and ignores) a deprecated `scale` argument here; so does this module.
        return geglu(self.proj(hidden_states), approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
