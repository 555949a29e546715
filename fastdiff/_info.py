"""`fastdiff.info()`: versions, devices and which backends serve here."""

from __future__ import annotations

import platform
from typing import Any

import torch

from . import _backend


def info() -> dict[str, Any]:
    import fastdiff

    out: dict[str, Any] = {
        "fastdiff": fastdiff.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "forced_backend": _backend.forced(),
        "backends": _backend.available(),
    }
    from .ops.attention import support as attention_support

    out["attention"] = attention_support()  # which attention kernels serve what
    from .ops.attention_dispatch import describe as attention_dispatch

    out["attn_dispatch"] = attention_dispatch()  # kernel or SDPA, per GPU arch and shape
    return out
