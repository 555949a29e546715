"""The trained digits DiT: a small class-conditional diffusion transformer on scikit-learn's 8x8 digits.

Two checkpoints ship inside the package as safetensors (no pickle, no network): ``ddpm`` predicts
the noise under a linear-beta DDPM schedule, ``flow`` predicts the flow-matching velocity
``noise - x0``. Both were trained by ``scripts/train_digits_dit.py`` on fastdiff's own ops
(`fastdiff.nn.DiTBlock` adaLN-Zero blocks, `fastdiff.nn.Attention`), and their safetensors metadata
records the architecture, the sampler configuration, the default guidance scale, the training
command, the SHA-256 of the training data and of the weights (checked on every load).

Images are 8x8, one channel, in [-1, 1] for the model (pixel values 0..16 mapped linearly);
`sample_digits` returns them in [0, 1]. Label ``NULL_CLASS`` (10) is the unconditional input that
classifier-free guidance contrasts with.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..nn import Attention, DiTBlock
from ..nn.adaln import TimestepLabelEmbedding
from ..ops import adaln_modulate

KINDS = ("ddpm", "flow")
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
IMAGE_SIZE = 8
#: the training data's pixel range (sklearn's digits are integers 0..16)
PIXEL_MAX = 16.0

#: samplers of fastdiff.sample that do not fit a plain DDPM or flow checkpoint, and why
UNFIT = {
    "lcm": "LCM's step assumes a consistency-distilled model; these checkpoints are plain diffusion models",
    "tcd": "TCD's step, as LCM's, assumes a consistency-distilled model",
    "ddim_inversion": "it runs an image back to noise (for editing), it does not generate",
    "edm_euler": "it feeds the model EDM's noise input (log(sigma) / 4) where these checkpoints take DDPM timesteps",
    "ipndm": "it steps its own fixed noise schedule, not the one these checkpoints were trained on",
    "dpmpp_2m_inversion": "it runs an image back to noise (for editing), it does not generate",
    "edm_dpmpp_2m": "it feeds the model EDM's noise input (log(sigma) / 4) where these checkpoints take DDPM timesteps",
}


class DigitsDiT(nn.Module):
    """A class-conditional DiT on (B, 1, 8, 8) images: patchify, adaLN-Zero blocks, adaLN final layer.

    ``forward(x, t, labels)``: ``t`` (B,) or a scalar, the scheduler's timestep on a 0..1000 scale
    (``sigma * 1000`` for the flow model); ``labels`` (B,) int64 in 0..10, 10 being the null class.
    Returns the prediction (noise or velocity), x's shape.
    """

    def __init__(self, *, image_size: int = IMAGE_SIZE, patch_size: int = 2, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_ratio: int = 2, freq_channels: int = 64, class_dropout_prob: float = 0.1):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"DigitsDiT: image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.config = dict(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, freq_channels=freq_channels, class_dropout_prob=class_dropout_prob)
        self.image_size, self.patch_size, self.dim = image_size, patch_size, dim
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(patch_size * patch_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.cond = TimestepLabelEmbedding(NUM_CLASSES, dim, class_dropout_prob, channels=freq_channels)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = DiTBlock(dim, heads, dim // heads, ff_inner_dim=mlp_ratio * dim)
            # fastdiff.ops.attention rather than the block's SDPA module; the parameter names are the same
            block.attn1 = Attention(dim, heads=heads, dim_head=dim // heads, bias=True)
            self.blocks.append(block)
        self.final_modulation = nn.Linear(dim, 2 * dim)
        self.final = nn.Linear(dim, patch_size * patch_size)
        for layer in (self.final_modulation, self.final):  # the network starts by predicting zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        b, p, s = x.shape[0], self.patch_size, self.image_size
        g = s // p
        tokens = x.reshape(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
        h = self.patch_embed(tokens) + self.pos_embed
        t = t.reshape(-1).expand(b) if t.dim() == 0 or t.numel() == 1 else t
        emb = self.cond(t, labels, hidden_dtype=h.dtype)
        for block in self.blocks:
            h = block(h, emb=emb)
        shift, scale = self.final_modulation(nn.functional.silu(emb)).chunk(2, dim=1)
        h = self.final(adaln_modulate(h, shift, scale, eps=1e-6))
        return h.reshape(b, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, s, s)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def weights_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors (names, dtypes, shapes and bytes, in name order): what a load checks."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_path(kind: str):
    _check_kind(kind)
    return resources.files(__package__).joinpath(f"digits_dit_{kind}.safetensors")


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"fastdiff.models: kind expected one of {', '.join(KINDS)}, got {kind!r}")


def load_checkpoint(path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a digits DiT safetensors file, its weights checked against the recorded hash."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    want = meta.get("weights_sha256")
    got = weights_sha256(state)
    if want != got:
        raise RuntimeError(f"fastdiff.models: the weights in {path} hash to {got}, not to the recorded {want}: the file "
                           "is damaged")
    return state, meta


@lru_cache(maxsize=None)
def _load(kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    with resources.as_file(checkpoint_path(kind)) as p:
        if not p.is_file():
            raise FileNotFoundError(f"fastdiff.models: the {kind} checkpoint {p} is missing from this installation")
        return load_checkpoint(p)


def checkpoint_metadata(kind: str = "ddpm") -> dict[str, Any]:
    """The checkpoint's metadata, JSON fields decoded: model (architecture), scheduler (sampler
    config), guidance_scale (default), train_command, data_sha256, weights_sha256, ..."""
    _, meta = _load(_kind(kind))
    out: dict[str, Any] = dict(meta)
    for key in ("model", "scheduler", "training"):
        if key in out:
            out[key] = json.loads(out[key])
    if "guidance_scale" in out:
        out["guidance_scale"] = float(out["guidance_scale"])
    return out


def _kind(kind: Any) -> str:
    _check_kind(kind)
    return kind


def digits_dit(kind: str = "ddpm") -> DigitsDiT:
    """The trained digits DiT (``kind`` "ddpm": noise prediction, or "flow": flow matching), in eval mode on the CPU."""
    state, _ = _load(_kind(kind))
    model = DigitsDiT(**checkpoint_metadata(kind)["model"])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def scheduler_config(kind: str = "ddpm") -> dict[str, Any]:
    """The schedule the checkpoint was trained with, as diffusers scheduler config keys."""
    return dict(checkpoint_metadata(kind)["scheduler"])


def default_guidance(kind: str = "ddpm") -> float:
    return float(checkpoint_metadata(kind)["guidance_scale"])


def fitting_samplers(kind: str = "ddpm") -> list[str]:
    """The `fastdiff.samplers.NAMED` samplers whose scheduler takes this checkpoint's schedule and
    prediction type (LCM aside: see ``UNFIT``)."""
    from ..samplers import NAMED, make_sampler

    cfg = scheduler_config(kind)
    out = []
    for name in NAMED:
        if name in UNFIT:
            continue
        try:
            sampler = make_sampler(name, cfg)
        except (ValueError, TypeError):
            continue
        # A flow checkpoint needs the scheduler to place its levels on the flow path (use_flow_sigmas
        # or a flow-matching scheduler); taking the prediction type alone would run it on a VP schedule.
        params = sampler.scheduler_class._init_params()
        flow_ok = "use_flow_sigmas" not in cfg or "use_flow_sigmas" in params or "shift" in params
        if sampler.prediction_type == cfg["prediction_type"] and flow_ok:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def _labels(labels: Union[Tensor, Sequence[int], int], device: torch.device) -> Tensor:
    t = torch.as_tensor(labels, device=device) if not isinstance(labels, Tensor) else labels.to(device)
    if isinstance(labels, (list, tuple)) and not labels:
        raise ValueError("fastdiff.models.sample_digits: labels is empty")
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"fastdiff.models.sample_digits: labels expected integers (N,) in 0..9, got shape "
                         f"{tuple(t.shape)} of {t.dtype}")
    if t.numel() == 0:
        raise ValueError("fastdiff.models.sample_digits: labels is empty")
    bad = t[(t < 0) | (t >= NUM_CLASSES)]
    if bad.numel():
        raise ValueError(f"fastdiff.models.sample_digits: labels expected digits 0..9, got {int(bad[0])}")
    return t.long()


def guided_model_fn(model: DigitsDiT, labels: Tensor, guided: bool):
    """``model_fn(x, t)`` for `fastdiff.sample`: on the doubled batch ``[null labels; labels]`` when guided."""
    cond = torch.cat([torch.full_like(labels, NULL_CLASS), labels]) if guided else labels

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, cond)

    return model_fn


def to_unit(x: Tensor) -> Tensor:
    """Model space [-1, 1] -> images in [0, 1] (clamped)."""
    return ((x + 1) * 0.5).clamp_(0, 1)


def sample_digits(
    labels: Union[Tensor, Sequence[int], int],
    *,
    kind: str = "ddpm",
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    guidance_scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[bool] = False,
) -> Tensor:
    """Images of the requested digits, (N, 1, 8, 8) in [0, 1], through `fastdiff.sample`.

    guidance_scale: classifier-free guidance, fused into each update (default: the checkpoint's,
    ``default_guidance(kind)``; 1 turns it off, samples the conditional model alone). sampler: any of
    ``fitting_samplers(kind)``. generator seeds the initial and per-step noise (CPU generator, or one
    on ``device``).
    """
    from ..samplers import sample

    kind = _kind(kind)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    fits = fitting_samplers(kind)
    if sampler not in fits:
        raise ValueError(f"fastdiff.models.sample_digits: sampler expected one of {', '.join(fits)} for the {kind} "
                         f"checkpoint, got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"fastdiff.models.sample_digits: steps expected a positive integer, got {steps!r}")
    y = _labels(labels, dev)
    scale = default_guidance(kind) if guidance_scale is None else float(guidance_scale)
    if not scale == scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"fastdiff.models.sample_digits: guidance_scale expected a finite number, got {guidance_scale!r}")
    model = _model_on(kind, str(dev))
    gen_dev = generator.device if generator is not None else dev
    noise = torch.randn((y.numel(), 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator, device=gen_dev).to(dev)
    guided = scale != 1.0
    with torch.no_grad():
        x = sample(guided_model_fn(model, y, guided), noise, sampler=sampler, steps=steps,
                   guidance_scale=scale if guided else None, config=scheduler_config(kind),
                   generator=generator if gen_dev == dev else None, progress=progress)
    return to_unit(x)


@lru_cache(maxsize=8)
def _model_on(kind: str, device: str) -> DigitsDiT:
    return digits_dit(kind).to(device)


def image_grid(images: Tensor, columns: int, scale: int = 8, gap: int = 6):
    """A PIL image of (N, 1, H, W) images in [0, 1], ``columns`` per row, ink dark on white,
    each pixel a ``scale`` x ``scale`` block (nearest neighbour), ``gap`` background pixels between tiles."""
    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // columns)
    tile_h, tile_w = h * scale + gap, w * scale + gap
    canvas = np.full((rows * tile_h + gap, columns * tile_w + gap), 255, dtype=np.uint8)
    pix = (255 * (1 - images.detach().float().cpu().clamp(0, 1))).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        block = pix[i, 0].repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[gap + r * tile_h: gap + r * tile_h + h * scale, gap + c * tile_w: gap + c * tile_w + w * scale] = block
    return Image.fromarray(canvas, mode="L")
