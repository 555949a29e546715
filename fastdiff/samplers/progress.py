"""The optional tqdm progress bar of the sampling loops (eager and CUDA-graph)."""

from __future__ import annotations

import sys
from typing import Optional


def progress_bar(enabled: Optional[bool], total: int, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc=desc, leave=False)
