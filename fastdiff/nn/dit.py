"""A DiT transformer block (adaLN-Zero) on the fused adaln ops.

Per block: ``n = adaLN(x; shift_msa, scale_msa)``, ``x = x + gate_msa * attn(n)``,
``n = adaLN(x; shift_mlp, scale_mlp)``, ``x = x + gate_mlp * mlp(n)``. The residual update after the
attention and the MLP half's normalisation are one `gated_residual_adaln` pass. Submodule and
parameter names follow diffusers' ``BasicTransformerBlock(norm_type="ada_norm_zero")`` as built by
``DiTTransformer2DModel`` (self-attention only), so its state dicts load unchanged. Attention goes
through ``torch.nn.functional.scaled_dot_product_attention`` for now.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn import functional as F

from ..ops import adaln_modulate, gated_residual, gated_residual_adaln
from .adaln import AdaLNZero


class _SelfAttention(nn.Module):
    """Multi-head self-attention with diffusers' parameter names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, bias: bool, out_bias: bool, dropout: float):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, x: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        o = o.transpose(1, 2).reshape(b, n, -1)
        return self.to_out[1](self.to_out[0](o))


class _Projection(nn.Module):
    """The MLP's input projection and activation: GELU (exact or tanh) of ``proj(x)``, or GEGLU."""

    def __init__(self, dim: int, inner: int, activation: str, bias: bool):
        super().__init__()
        self.activation = activation
        self.proj = nn.Linear(dim, 2 * inner if activation == "geglu" else inner, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        if self.activation == "geglu":
            h, gate = h.chunk(2, dim=-1)
            return h * F.gelu(gate)
        return F.gelu(h, approximate="tanh" if self.activation == "gelu-approximate" else "none")


class _FeedForward(nn.Module):
    ACTIVATIONS = ("gelu", "gelu-approximate", "geglu")

    def __init__(self, dim: int, inner: int, activation: str, bias: bool, dropout: float):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"fastdiff.nn.DiTBlock: activation_fn expected one of {self.ACTIVATIONS}, got {activation!r}")
        self.net = nn.ModuleList([_Projection(dim, inner, activation, bias), nn.Dropout(dropout),
                                  nn.Linear(inner, dim, bias=bias)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning, state-dict compatible with diffusers'
    ``BasicTransformerBlock(dim, heads, head_dim, norm_type="ada_norm_zero", ...)``.

    ``forward(hidden_states, timestep=None, class_labels=None, emb=None, attention_mask=None)``: give
    ``timestep`` and ``class_labels`` when built with ``num_embeds_ada_norm`` (as DiT is), else the
    conditioning vector ``emb`` (B, dim).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, *,
                 num_embeds_ada_norm: Optional[int] = None, activation_fn: str = "gelu-approximate",
                 attention_bias: bool = True, attention_out_bias: bool = True, norm_elementwise_affine: bool = False,
                 norm_eps: float = 1e-5, ff_inner_dim: Optional[int] = None, ff_bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = AdaLNZero(dim, num_embeds_ada_norm)
        self.attn1 = _SelfAttention(dim, num_attention_heads, attention_head_dim, bias=attention_bias,
                                    out_bias=attention_out_bias, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = _FeedForward(dim, ff_inner_dim or 4 * dim, activation_fn, ff_bias, dropout)

    def forward(self, hidden_states: Tensor, timestep: Optional[Tensor] = None,
                class_labels: Optional[Tensor] = None, emb: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        x = hidden_states
        chunks = self.norm1.modulation(timestep, class_labels, x.dtype, emb)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (c.to(x.dtype) for c in chunks)
        n = adaln_modulate(x, shift_msa, scale_msa, eps=self.norm1.eps, norm=self.norm1.norm)
        a = self.attn1(n, attention_mask)
        weight = self.norm3.weight.to(x.dtype) if self.norm3.weight is not None else None
        bias = self.norm3.bias.to(x.dtype) if self.norm3.bias is not None else None
        x, n = gated_residual_adaln(x, gate_msa, a, shift_mlp, scale_mlp, eps=self.norm3.eps, weight=weight, bias=bias)
        return gated_residual(x, gate_mlp, self.ff(n))
