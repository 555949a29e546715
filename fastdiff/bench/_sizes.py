"""Named latent sizes and dtypes for the benchmarks.

A size is the latent x of shape (B, ...); the guided model output is (2B, ...). Sizes run from a
Stable Diffusion 1.5 latent through SDXL to video latents (CogVideoX-like 13 latent frames of 60x104,
a Wan-like 720p latent of 21 frames of 90x160).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Size:
    name: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


_ALL = [
    Size("tiny-b1", (1, 4, 8, 8)),
    Size("tiny-b2", (2, 3, 7, 11)),  # odd sizes: tails of every vector loop
    Size("sd15-b1", (1, 4, 64, 64)),
    Size("sd15-b4", (4, 4, 64, 64)),
    Size("sdxl-b1", (1, 4, 128, 128)),
    Size("sdxl-b4", (4, 4, 128, 128)),
    Size("video-b1", (1, 16, 13, 60, 104)),
    Size("video-b2", (2, 16, 13, 60, 104)),
    Size("video720-b1", (1, 16, 21, 90, 160)),
    Size("video720-b2", (2, 16, 21, 90, 160)),
]
SIZES = {s.name: s for s in _ALL}

PRESETS: dict[str, list[str]] = {
    "tiny": ["tiny-b1", "tiny-b2"],
    "sd15": ["sd15-b1", "sd15-b4"],
    "sdxl": ["sdxl-b1", "sdxl-b4"],
    "video": ["video-b1", "video-b2", "video720-b1", "video720-b2"],
    "quick": ["sd15-b1", "sdxl-b1", "video-b1"],
}
PRESETS["default"] = PRESETS["sd15"] + PRESETS["sdxl"] + PRESETS["video"]

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def parse_sizes(spec: str) -> list[Size]:
    """Comma-separated preset names, size names or explicit shapes such as ``2x4x64x64``."""
    out: list[Size] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in PRESETS:
            out.extend(SIZES[n] for n in PRESETS[item])
        elif item in SIZES:
            out.append(SIZES[item])
        elif re.fullmatch(r"\d+(x\d+)+", item):
            shape = tuple(int(d) for d in item.split("x"))
            if 0 in shape:
                raise ValueError(f"size {item!r} has a zero dimension")
            out.append(Size(item, shape))
        else:
            names = ", ".join(list(PRESETS) + list(SIZES))
            raise ValueError(f"unknown size {item!r}: expected one of {names}, or a shape like 2x4x64x64")
    seen: set[str] = set()
    unique = [s for s in out if not (s.name in seen or seen.add(s.name))]
    if not unique:
        raise ValueError("no sizes given")
    return unique


def parse_dtypes(spec: str) -> list[torch.dtype]:
    out = []
    for item in (s.strip().lower() for s in spec.split(",")):
        if item not in DTYPES:
            raise ValueError(f"unknown dtype {item!r}: expected float32, float16 or bfloat16")
        if DTYPES[item] not in out:
            out.append(DTYPES[item])
    if not out:
        raise ValueError("no dtypes given")
    return out
