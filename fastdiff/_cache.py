"""Small caches keyed by value: plans, validated sampler configurations and scheduler programs are
looked up by the configuration and arguments that define them, lists, arrays and tensors included."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, Hashable, Optional, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def frozen(v: Any) -> Any:
    """``v`` as nested tuples (mappings sorted by key; arrays and tensors by dtype, shape and bytes)."""
    if isinstance(v, Mapping):
        return tuple(sorted((k, frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(frozen(x) for x in v)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    return v


def cache_key(*parts: Any) -> Optional[tuple]:
    """A hashable key made of ``parts`` by value, or None when one of them cannot be (the caller
    then works without the cache)."""
    try:
        key = frozen(parts)
        hash(key)
    except TypeError:
        return None
    return key


class LRU(Generic[V]):
    """A mapping of at most ``size`` entries that forgets the least recently used one."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> Optional[V]:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
