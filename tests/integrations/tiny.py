"""Tiny random-weight diffusers models and pipelines, built from configs (no download), for the
patch / accelerate / generate tests. Weights are re-drawn with a visible spread (zero-initialised
adaLN layers would make every block the identity and every comparison trivial)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from torch import nn

import diffusers
from diffusers.utils import logging as dlogging

dlogging.set_verbosity_error()


def randomise(model: nn.Module, seed: int = 0, std: float = 0.15) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # norm weights around 1, everything else around 0
            p.copy_(torch.randn(p.shape, generator=g) * std + float(name.endswith("weight") and p.dim() == 1))
    return model.eval()


def sd_unet(cross: int = 32, sdxl: bool = False, pooled: int = 32) -> nn.Module:
    torch.manual_seed(0)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=8 * 6 + pooled) if sdxl else {}
    return randomise(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=cross, attention_head_dim=4, norm_num_groups=32, **extra))


def controlnet(cross: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return randomise(diffusers.ControlNetModel(
        in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64),
        layers_per_block=1, cross_attention_dim=cross, attention_head_dim=4, norm_num_groups=32,
        conditioning_embedding_out_channels=(8, 16)))


def vae() -> nn.Module:
    torch.manual_seed(0)
    return randomise(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1), std=0.1)


def dit() -> nn.Module:
    torch.manual_seed(0)
    return randomise(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000))


def pixart() -> nn.Module:
    torch.manual_seed(0)
    return randomise(diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, cross_attention_dim=16, caption_channels=12))


def sd3() -> nn.Module:
    torch.manual_seed(0)
    return randomise(diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4, pos_embed_max_size=16))


def clip(tmp: Path, hidden: int = 32, projection: bool = False):
    """A character-level CLIP tokenizer (vocab written to ``tmp``) and a 2-layer CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + " .,!":
        for tok in (c, c + "</w>"):
            vocab.setdefault(tok, len(vocab))
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=16)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    encoder = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    return tokenizer, encoder
