"""A diffusers attention processor that runs `fastdiff.ops.attention`.

    from fastdiff.integrations.diffusers_attention import FastDiffAttnProcessor
    unet.set_attn_processor(FastDiffAttnProcessor())

It does what diffusers' ``AttnProcessor2_0`` does around the attention call (spatial norm, 4-D
feature maps, group norm, cross-attention norm, q/k norms, attention masks through
``attn.prepare_attention_mask``, output projection and dropout, residual connection, output
rescale), with two differences that save memory traffic:

* the projections are viewed as (B, N, heads, head_dim) and handed to the kernel as they are,
  no transposes: the kernels read (B, N, H, D) through strides, and the output comes back in the
  layout the output projection wants. With ``attn.fuse_projections()`` the q/k/v slices of the
  fused ``to_qkv`` (or ``to_kv``) output are passed as strided views, again without copies;
* a per-batch mask (B, Nk) or (B, 1|Nq, Nk) is broadcast over heads instead of repeated.

The softmax scale is ``attn.scale`` (``dim_head ** -0.5`` unless the module was built with
``scale_qk=False``, where ``AttnProcessor2_0`` ignores the module's scale and diffusers' classic
``AttnProcessor`` does not). Modules with extra key/value projections (``added_kv_proj_dim``) or
other attention classes are not handled: set this processor on plain ``Attention`` modules only.

`FastDiffJointAttnProcessor` does what ``JointAttnProcessor2_0`` does for SD3's MMDiT blocks: the
image tokens and the text tokens (``add_q_proj`` / ``add_k_proj`` / ``add_v_proj``, their own q/k
norms) attend jointly, concatenated along the tokens, and are split again after the kernel.
`fastdiff.patch` sets these processors where diffusers' default ones are set.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..ops import attention


def _project(attn: Any, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as (B, N, inner) tensors (slices of one fused projection where the module has one)."""
    fused = getattr(attn, "fused_projections", False)
    if encoder_hidden_states is None and fused and getattr(attn, "to_qkv", None) is not None:
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)  # views: no copy
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    if fused and getattr(attn, "to_kv", None) is not None:
        key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    return query, key, value


def _attention_bias(attn: Any, mask: Tensor, kv_len: int, batch: int) -> Tensor:
    """diffusers' attention_mask as a bias broadcastable to (B, heads, Nq, Nk)."""
    if mask.dim() in (2, 3) and mask.shape[0] == batch and mask.shape[-1] == kv_len:
        # What prepare_attention_mask + view would give, without repeating the mask per head.
        mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
    else:
        mask = attn.prepare_attention_mask(mask, kv_len, batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    if mask.dtype == torch.bool:  # SDPA's convention: True = attend
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask


class FastDiffAttnProcessor:
    """diffusers attention processor backed by fastdiff's attention kernels (see the module docstring)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if getattr(attn, "added_kv_proj_dim", None) is not None:
            raise NotImplementedError(
                "FastDiffAttnProcessor: modules with added key/value projections (added_kv_proj_dim) are not handled; "
                "keep diffusers' processor on them"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        kv_len = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        bias = None if attention_mask is None else _attention_bias(attn, attention_mask, kv_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = _project(attn, hidden_states, encoder_hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        # (B, N, heads * head_dim) -> (B, N, heads, head_dim): a view, the kernels' layout.
        query, key, value = (t.unflatten(-1, (heads, head_dim)) for t in (query, key, value))
        if attn.norm_q is not None:  # norms over head_dim: the same in either layout
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = attention(query, key, value, mask=bias, scale=attn.scale)
        out = out.flatten(2).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _heads(t: Tensor, heads: int) -> Tensor:
    """(B, N, heads * head_dim) -> (B, N, heads, head_dim), a view."""
    return t.unflatten(-1, (heads, t.shape[-1] // heads))


class FastDiffJointAttnProcessor:
    """diffusers' joint (MMDiT) attention processor on fastdiff's attention kernels (see the module docstring)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,  # ignored, as JointAttnProcessor2_0 ignores it
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        heads = attn.heads
        query, key, value = (_heads(p(hidden_states), heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_image = query.shape[1]
        if encoder_hidden_states is not None:
            cq, ck, cv = (_heads(p(encoder_hidden_states), heads) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            # (B, N, H, D) layout: the joint sequence is a concatenation along the tokens (dim 1).
            query, key, value = torch.cat([query, cq], 1), torch.cat([key, ck], 1), torch.cat([value, cv], 1)

        out = attention(query, key, value, scale=attn.scale).flatten(2).to(query.dtype)
        context_out = None
        if encoder_hidden_states is not None:
            out, context_out = out[:, :n_image], out[:, n_image:]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if context_out is None else (out, context_out)
