"""adaLN-Zero conditioning (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

`AdaLNZero` maps a conditioning vector through SiLU and one Linear to six modulation chunks
(shift, scale, gate for the attention half, then for the MLP half) and applies the first pair with
the fused `fastdiff.ops.adaln_modulate`. Parameter names follow diffusers' ``AdaLayerNormZero``
(``linear``, and ``emb`` when it embeds timesteps and class labels itself), so its state dicts load
unchanged.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import adaln_modulate


def timestep_features(timesteps: Tensor, channels: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period ** (-i / (half - 1))``, float32 (B, channels)."""
    half = channels // 2
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    # Evaluated in this order, in float32, so the features match diffusers' to the last bit.
    freqs = torch.exp((-math.log(max_period) * i) / (half - 1))
    angles = timesteps.float()[:, None] * freqs[None]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn.functional.pad(out, (0, channels % 2)) if channels % 2 else out


class _TimestepMLP(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(t)))


class _LabelTable(nn.Module):
    """Class-label embeddings with one extra "null" row for classifier-free guidance when dropout_prob > 0."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class TimestepLabelEmbedding(nn.Module):
    """Conditioning of class-conditional DiT: MLP(sinusoidal(t)) + embedding(label), (B, dim).

    Submodule names match diffusers' ``CombinedTimestepLabelEmbeddings``."""

    def __init__(self, num_classes: int, dim: int, class_dropout_prob: float = 0.1, channels: int = 256):
        super().__init__()
        self.channels = channels
        self.timestep_embedder = _TimestepMLP(channels, dim)
        self.class_embedder = _LabelTable(num_classes, dim, class_dropout_prob)

    def forward(self, timestep: Tensor, class_labels: Tensor, hidden_dtype: Optional[torch.dtype] = None) -> Tensor:
        t = timestep_features(timestep, self.channels)
        t = self.timestep_embedder(t.to(hidden_dtype) if hidden_dtype is not None else t)
        return t + self.class_embedder(class_labels)


class AdaLNZero(nn.Module):
    """SiLU + Linear(dim, 6 dim) producing the six adaLN-Zero modulation chunks, then the fused modulation.

    ``forward(x, timestep, class_labels, hidden_dtype, emb)`` returns, like diffusers'
    ``AdaLayerNormZero``, ``(norm(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp,
    gate_mlp)`` with the chunks (B, dim). Give ``emb`` (B, dim), or, when built with
    ``num_embeddings``, ``timestep`` and ``class_labels``. The linear starts at zero ("adaLN-Zero": every
    block starts as the identity), unless ``zero_init=False``.
    """

    def __init__(self, embedding_dim: int, num_embeddings: Optional[int] = None, *, bias: bool = True,
                 eps: float = 1e-6, norm: str = "layer", class_dropout_prob: float = 0.1, zero_init: bool = True):
        super().__init__()
        self.dim, self.eps, self.norm = embedding_dim, eps, norm
        self.emb = TimestepLabelEmbedding(num_embeddings, embedding_dim, class_dropout_prob) if num_embeddings else None
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=bias)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            if bias:
                nn.init.zeros_(self.linear.bias)

    def modulation(self, timestep: Optional[Tensor] = None, class_labels: Optional[Tensor] = None,
                   hidden_dtype: Optional[torch.dtype] = None, emb: Optional[Tensor] = None) -> tuple[Tensor, ...]:
        """The six chunks (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (B, dim)."""
        if self.emb is not None:
            if timestep is None or class_labels is None:
                raise ValueError("fastdiff.nn.AdaLNZero: built with num_embeddings, it needs timestep and class_labels")
            emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
        elif emb is None:
            raise ValueError("fastdiff.nn.AdaLNZero: pass the conditioning vector emb (B, dim)")
        return self.linear(self.silu(emb)).chunk(6, dim=1)

    def forward(self, x: Tensor, timestep: Optional[Tensor] = None, class_labels: Optional[Tensor] = None,
                hidden_dtype: Optional[torch.dtype] = None, emb: Optional[Tensor] = None) -> tuple[Tensor, ...]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(timestep, class_labels,
                                                                                         hidden_dtype, emb)
        out = adaln_modulate(x, shift_msa.to(x.dtype), scale_msa.to(x.dtype), eps=self.eps, norm=self.norm)
        return out, gate_msa, shift_mlp, scale_mlp, gate_mlp
