"""Hashable stand-ins for cache keys: plans and scheduler programs are cached by the value of the
configuration and arguments that define them, lists, arrays and tensors included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def frozen(v: Any) -> Any:
    """``v`` as nested tuples (mappings sorted by key; arrays and tensors by dtype, shape and bytes).
    What is left unhashable makes ``hash`` of the result raise TypeError: callers then skip the cache."""
    if isinstance(v, Mapping):
        return tuple(sorted((k, frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(frozen(x) for x in v)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    return v
