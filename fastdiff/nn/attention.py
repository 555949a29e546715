"""`fastdiff.nn.Attention`: multi-head self/cross attention on `fastdiff.ops.attention`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import attention


class Attention(nn.Module):
    """Multi-head attention with diffusers-like arguments and parameter names.

    Self-attention when ``cross_attention_dim`` is None, else cross-attention on
    ``encoder_hidden_states`` of width ``cross_attention_dim``. Parameters are named as in diffusers'
    ``Attention`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``; ``norm_q``/``norm_k`` for
    ``qk_norm``), so its state dict loads here. ``fused_projections=True`` (or ``fuse_projections()``
    after loading) holds one ``to_qkv`` (self) or ``to_kv`` (cross) projection instead: one matmul,
    whose q/k/v slices go to the kernel as strided views, no copies.

    ``out_dim`` follows diffusers: when given, it is the width of the projections and of the
    output, and ``heads`` becomes ``out_dim // dim_head``.

    Projections are viewed as (B, N, heads, dim_head), the kernels' layout, so no transpose is made
    on the way in or out.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        out_bias: bool = True,
        out_dim: Optional[int] = None,
        qk_norm: Optional[str] = None,
        eps: float = 1e-5,
        scale: Optional[float] = None,
        fused_projections: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        if out_dim is not None:  # diffusers' meaning: the inner width too, heads = out_dim // dim_head
            if out_dim % dim_head:
                raise ValueError(f"fastdiff.nn.Attention: out_dim must be a multiple of dim_head, got {out_dim} and {dim_head}")
            heads = out_dim // dim_head
        if heads < 1 or dim_head < 1:
            raise ValueError(f"fastdiff.nn.Attention: heads and dim_head must be >= 1, got {heads} and {dim_head}")
        self.heads, self.dim_head = heads, dim_head
        self.inner_dim = heads * dim_head
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.scale = dim_head**-0.5 if scale is None else float(scale)
        self.use_bias = bias
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias, **kw)
        self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias, **kw)
        self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias, **kw)
        self.fused_projections = False
        if qk_norm is None:
            self.norm_q = self.norm_k = None
        elif qk_norm == "layer_norm":
            self.norm_q = nn.LayerNorm(dim_head, eps=eps, **kw)
            self.norm_k = nn.LayerNorm(dim_head, eps=eps, **kw)
        elif qk_norm == "rms_norm":
            self.norm_q = nn.RMSNorm(dim_head, eps=eps, **kw)
            self.norm_k = nn.RMSNorm(dim_head, eps=eps, **kw)
        else:
            raise ValueError(f"fastdiff.nn.Attention: qk_norm must be None, 'layer_norm' or 'rms_norm', got {qk_norm!r}")
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, out_dim or query_dim, bias=out_bias, **kw), nn.Dropout(dropout)])
        if fused_projections:
            self.fuse_projections()

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Replace to_q/to_k/to_v (self) or to_k/to_v (cross) by one concatenated projection."""
        if self.fused_projections:
            return
        parts = [self.to_k, self.to_v] if self.is_cross_attention else [self.to_q, self.to_k, self.to_v]
        w = parts[0].weight
        fused = nn.Linear(w.shape[1], w.shape[0] * len(parts), bias=self.use_bias, device=w.device, dtype=w.dtype)
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if self.use_bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        if self.is_cross_attention:
            self.to_kv = fused
        else:
            self.to_qkv = fused
            del self.to_q
        del self.to_k, self.to_v
        self.fused_projections = True

    def _project(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if self.fused_projections and not self.is_cross_attention:
            return self.to_qkv(x).chunk(3, dim=-1)
        q = self.to_q(x)
        context = x if context is None else context
        if self.fused_projections:
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            k, v = self.to_k(context), self.to_v(context)
        return q, k, v

    def forward(
        self, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None
    ) -> Tensor:
        """hidden_states (B, N, query_dim) -> (B, N, out_dim).

        encoder_hidden_states (B, M, cross_attention_dim) for cross-attention (self-attention modules
        refuse it). attention_mask as in `fastdiff.ops.attention`: a bool (B, M) key-padding mask
        (True = attend) or an additive float bias broadcastable to (B, heads, N, M).
        """
        if encoder_hidden_states is not None and not self.is_cross_attention:
            raise ValueError("fastdiff.nn.Attention: encoder_hidden_states given to a self-attention module (no cross_attention_dim)")
        if hidden_states.dim() != 3:
            raise ValueError(f"fastdiff.nn.Attention: hidden_states must be (B, N, C), got shape {tuple(hidden_states.shape)}")
        q, k, v = self._project(hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)) for t in (q, k, v))  # views
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        out = attention(q, k, v, mask=attention_mask, scale=self.scale)
        return self.to_out[1](self.to_out[0](out.flatten(2)))

    def extra_repr(self) -> str:
        kind = f"cross_attention_dim={self.cross_attention_dim}" if self.is_cross_attention else "self"
        return f"heads={self.heads}, dim_head={self.dim_head}, {kind}, fused_projections={self.fused_projections}"
