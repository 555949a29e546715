"""Which implementation serves `fastdiff.ops.attention` on a GPU: fastdiff's kernel or SDPA's best backend.

The promise is that ``fastdiff.ops.attention`` is never slower than PyTorch's SDPA. Where fastdiff's
kernel loses, the call goes to SDPA with the backend (flash, efficient, cudnn, math) that measured
fastest. The choice is per (GPU arch, dtype, head dim, query length, key length) and comes from
``attention_table.json`` beside this module, filled from GPU measurements by ``fastdiff bench
attention --tune``. Without a measurement for a call the defaults are what review predicts:

- fastdiff's kernel for short-K/V cross-attention (Nk <= 256 keys, fewer than the queries: one key
  block, a plain softmax, no rescaling) and for head dims other than 64, 128 and 256 (SDPA's fused
  backends pad those or fall back to slower paths);
- SDPA (its own backend choice) otherwise.

Lookup ("nearest bucket"): among the table's entries for the same arch, dtype and head dim, and on
the same side of the short-K/V boundary as the call, the one nearest in log2 of the query and key
lengths serves, if it lies within a factor of 4 in the two lengths together (distance
|log2(Nq/Nq_e)| + |log2(Nk/Nk_e)| <= 2); ties go to the entry listed first. Nothing near enough: the
defaults. Measurements never carry across GPU architectures or dtypes.

SDPA serves only calls it computes exactly as fastdiff defines them: no mask or bias (fastdiff gives
fully masked rows zeros where SDPA gives NaN), inputs not forced onto a backend
(``fastdiff.backend(...)`` always runs that backend), CUDA tensors and float32 CPU tensors.

CPU (no table; `cpu_choice`): the C++ kernel is AVX2, PyTorch's CPU SDPA runs matrix products and
exp on AVX-512 where the CPU has it. Measured (benchmarks/results/cpu/, one thread, float32), the
kernel wins for head dim 8 (1.6-2.3x) and for short-K/V cross-attention up to D = 16; SDPA wins
self-attention at D >= 16 and everything at D >= 64. So float32 CPU calls go to SDPA except those;
fp16/bf16 (not measured against SDPA) and masked calls stay on the kernel.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: The table kept in the repository; FASTDIFF_ATTENTION_TABLE names another one.
TABLE_PATH = Path(__file__).with_name("attention_table.json")
SCHEMA = 1
#: Key lengths up to this are one key block for the kernels (fastdiff/triton/attention.py SHORT_KV_MAX).
SHORT_KV_MAX = 256
#: Head dims SDPA's fused backends serve natively.
SDPA_HEAD_DIMS = (64, 128, 256)
#: Largest log2 distance at which a measured entry still speaks for a call (see the docstring).
MAX_DISTANCE = 2.0
IMPLS = ("kernel", "sdpa")
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class TableError(ValueError):
    """The attention dispatch table is malformed (the message names the file, the entry and the field)."""


@dataclass(frozen=True)
class Entry:
    arch: str  # "sm_90"
    dtype: str  # "bfloat16" or "float16"
    head_dim: int
    nq: int
    nk: int
    impl: str  # "kernel" or "sdpa"
    sdpa_backend: Optional[str] = None  # the fastest SDPA backend measured (None: let SDPA choose)
    kernel_ms: Optional[float] = None
    sdpa_ms: Optional[float] = None


@dataclass(frozen=True)
class Choice:
    impl: str  # "kernel" or "sdpa"
    sdpa_backend: Optional[str]
    source: str  # "table" or "default"
    entry: Optional[Entry] = None


def _bad(where: str, what: str, expected: str, got: Any) -> TableError:
    return TableError(f"fastdiff attention dispatch table {where}: {what} expected {expected}, got {got!r}")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def parse_table(data: Any, source: str = "<table>") -> list[Entry]:
    """Entries of a table document, validated; raises TableError naming what is wrong."""
    if not isinstance(data, dict):
        raise _bad(source, "the document", "a JSON object with 'schema' and 'entries'", type(data).__name__)
    if data.get("schema") != SCHEMA:
        raise _bad(source, "'schema'", str(SCHEMA), data.get("schema"))
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise _bad(source, "'entries'", "a list", type(raw).__name__)
    entries: list[Entry] = []
    seen: set[tuple] = set()
    for i, e in enumerate(raw):
        where = f"{source} entry {i}"
        if not isinstance(e, dict):
            raise _bad(where, "the entry", "an object", type(e).__name__)
        missing = [k for k in ("arch", "dtype", "head_dim", "nq", "nk", "impl") if k not in e]
        if missing:
            raise _bad(where, "fields", "arch, dtype, head_dim, nq, nk, impl", f"missing {', '.join(missing)}")
        unknown = sorted(set(e) - {f.name for f in Entry.__dataclass_fields__.values()} - {"note"})
        if unknown:
            raise _bad(where, "fields", "only the known ones (and 'note')", unknown)
        if not (isinstance(e["arch"], str) and e["arch"].startswith("sm_") and e["arch"][3:].isdigit()):
            raise _bad(where, "'arch'", "'sm_<major><minor>' such as 'sm_90'", e["arch"])
        if e["dtype"] not in DTYPES:
            raise _bad(where, "'dtype'", " or ".join(DTYPES), e["dtype"])
        for k in ("head_dim", "nq", "nk"):
            if not _positive_int(e[k]):
                raise _bad(where, f"'{k}'", "a positive integer", e[k])
        if e["impl"] not in IMPLS:
            raise _bad(where, "'impl'", " or ".join(IMPLS), e["impl"])
        sb = e.get("sdpa_backend")
        if sb is not None and sb not in SDPA_BACKENDS:
            raise _bad(where, "'sdpa_backend'", f"null or one of {', '.join(SDPA_BACKENDS)}", sb)
        for k in ("kernel_ms", "sdpa_ms"):
            v = e.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise _bad(where, f"'{k}'", "null or a positive number of milliseconds", v)
        entry = Entry(**{k: v for k, v in e.items() if k != "note"})
        key = (entry.arch, entry.dtype, entry.head_dim, entry.nq, entry.nk)
        if key in seen:
            raise _bad(where, "(arch, dtype, head_dim, nq, nk)", "to be unique", key)
        seen.add(key)
        entries.append(entry)
    return entries


def load_table(path: Optional[os.PathLike] = None) -> list[Entry]:
    path = Path(path or os.environ.get("FASTDIFF_ATTENTION_TABLE") or TABLE_PATH)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TableError(f"fastdiff attention dispatch table {path}: not valid JSON ({e})") from None
    return parse_table(data, str(path))


def default_choice(head_dim: int, nq: int, nk: int) -> Choice:
    """What review predicts before any measurement (module docstring)."""
    short_cross = nk <= SHORT_KV_MAX and nk < nq
    impl = "kernel" if short_cross or head_dim not in SDPA_HEAD_DIMS else "sdpa"
    return Choice(impl, None, "default")


#: CPU: the kernel serves every head dim up to this, and short-K/V cross-attention up to CPU_CROSS_HEAD_DIM.
CPU_HEAD_DIM = 8
CPU_CROSS_HEAD_DIM = 16


def cpu_choice(head_dim: int, nq: int, nk: int) -> str:
    """'kernel' or 'sdpa' for an unmasked float32 CPU call (module docstring)."""
    short_cross = nk <= SHORT_KV_MAX and nk < nq
    return "kernel" if head_dim <= CPU_HEAD_DIM or (short_cross and head_dim <= CPU_CROSS_HEAD_DIM) else "sdpa"


def _distance(e: Entry, nq: int, nk: int) -> float:
    return abs(math.log2(nq / e.nq)) + abs(math.log2(nk / e.nk))


def choose(entries: list[Entry], arch: str, dtype: str, head_dim: int, nq: int, nk: int) -> Choice:
    """The implementation for one call: the nearest measured entry, else the default."""
    short = nk <= SHORT_KV_MAX
    best: Optional[Entry] = None
    best_d = math.inf
    for e in entries:
        if (e.arch, e.dtype, e.head_dim) != (arch, dtype, head_dim) or (e.nk <= SHORT_KV_MAX) != short:
            continue
        d = _distance(e, max(nq, 1), max(nk, 1))
        if d < best_d:  # strict: the first listed wins a tie
            best, best_d = e, d
    if best is None or best_d > MAX_DISTANCE:
        return default_choice(head_dim, nq, nk)
    return Choice(best.impl, best.sdpa_backend if best.impl == "sdpa" else None, "table", best)


# ---------------------------------------------------------------------------------------------
# The call path
# ---------------------------------------------------------------------------------------------
_TABLE: Optional[list[Entry]] = None
_ARCH: dict[int, str] = {}


def table() -> list[Entry]:
    """The table in use, loaded once (a malformed table raises TableError at the first CUDA call)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = load_table()
    return _TABLE


def arch_of(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _ARCH:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCH[index] = f"sm_{major}{minor}"
    return _ARCH[index]


def sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, backend: Optional[str] = None) -> Tensor:
    """SDPA on (B, N, H, D) tensors in their own dtype, returned as a contiguous (B, Nq, H, D) tensor."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if backend is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
        with sdpa_kernel(getattr(SDPBackend, names[backend])):
            out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
    return out.transpose(1, 2).contiguous()


def maybe_sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, masked: bool, forced: bool) -> Optional[Tensor]:
    """SDPA's result when the table (or the default) sends this call to SDPA, else None (use the kernel)."""
    if masked or forced:
        return None
    b, nq, h, d = q.shape
    if q.device.type == "cpu" and q.dtype == torch.float32:
        return sdpa(q, k, v, scale) if cpu_choice(d, nq, k.shape[1]) == "sdpa" else None
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    choice = choose(table(), arch_of(q.device), str(q.dtype).removeprefix("torch."), d, nq, k.shape[1])
    if choice.impl != "sdpa":
        return None
    return sdpa(q, k, v, scale, choice.sdpa_backend)


def describe() -> dict[str, Any]:
    """The table for `fastdiff info`: where it is, the default rule and every measured entry."""
    path = os.environ.get("FASTDIFF_ATTENTION_TABLE") or str(TABLE_PATH)
    try:
        entries = load_table(path)
    except (OSError, TableError) as e:
        return {"table": path, "error": str(e)}
    rows = {
        f"{e.arch} {e.dtype} D={e.head_dim} Nq={e.nq} Nk={e.nk}": (
            f"{e.impl}{'[' + e.sdpa_backend + ']' if e.sdpa_backend else ''}"
            + (f" (kernel {e.kernel_ms:.3f} ms, sdpa {e.sdpa_ms:.3f} ms)" if e.kernel_ms and e.sdpa_ms else "")
        )
        for e in entries
    }
    return {
        "table": path,
        "default": (f"kernel for Nk <= {SHORT_KV_MAX} and Nk < Nq (short-K/V cross-attention) and for head dims other than "
                    f"{', '.join(map(str, SDPA_HEAD_DIMS))}; SDPA otherwise; masked calls always the kernel"),
        "cpu": (f"float32: kernel for D <= {CPU_HEAD_DIM} and for short-K/V cross-attention with D <= {CPU_CROSS_HEAD_DIM}, "
                "SDPA otherwise; fp16/bf16 and masked calls: the kernel"),
        "entries": rows or "none measured yet (`fastdiff bench attention --tune` on a GPU fills them)",
    }


def merge(entries: list[Entry], new: list[Entry]) -> list[Entry]:
    """`entries` with `new` added, replacing those with the same (arch, dtype, head_dim, nq, nk); sorted."""
    key = lambda e: (e.arch, e.dtype, e.head_dim, e.nq, e.nk)  # noqa: E731
    out = {key(e): e for e in entries}
    out.update({key(e): e for e in new})
    return [out[k] for k in sorted(out)]


def write_table(entries: list[Entry], path: Optional[os.PathLike] = None) -> Path:
    path = Path(path or TABLE_PATH)
    rows = [{k: v for k, v in e.__dict__.items() if v is not None} for e in entries]
    parse_table({"schema": SCHEMA, "entries": rows}, str(path))  # never write what cannot be read back
    doc = {"schema": SCHEMA, "comment": "fastdiff.ops.attention dispatch; see fastdiff/ops/attention_dispatch.py. "
           "Written by `fastdiff bench attention --tune` on a GPU.", "entries": rows}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    global _TABLE
    _TABLE = None  # re-read on the next call
    return path
