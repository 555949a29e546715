"""Which backends exist here, which one serves a call, and the `fastdiff.backend(name)` context.

Backends: ``cuda`` (hand-written kernels in fastdiff._C), ``triton``, ``cpu`` (C++ kernels in
fastdiff._C) and ``reference`` (pure PyTorch, the specification). Without a forced choice a CUDA
tensor goes to cuda, else triton; a CPU tensor to cpu; anything a kernel cannot serve (float64, say)
to the reference. A forced backend that cannot serve the inputs raises and says why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Callable, Iterator, Optional

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# A plain module-level stack (not a ContextVar) so that torch.compile can read it while tracing.
_forced: list[str] = []


class BackendUnavailable(RuntimeError):
    """A forced backend cannot serve the given inputs; the message says why."""


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"fastdiff: {source} expected one of {', '.join(BACKENDS)}, got {name!r}")
    return name


_env_backend = os.environ.get("FASTDIFF_BACKEND", "").strip().lower() or None
if _env_backend is not None and _env_backend != "auto":
    _check_name(_env_backend, "FASTDIFF_BACKEND")
elif _env_backend == "auto":
    _env_backend = None


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force every fastdiff op called inside the block onto one backend (or ``"auto"``)."""
    name = name.lower()
    if name != "auto":
        _check_name(name, "backend()")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def forced() -> Optional[str]:
    """The backend forced by the innermost `backend()` block, else by FASTDIFF_BACKEND, else None."""
    if _forced:
        return None if _forced[-1] == "auto" else _forced[-1]
    return _env_backend


try:
    from . import _C as _compiled
except ImportError:  # not built: fastdiff/__init__.py explains; only triton/reference could serve
    _compiled = None

_triton_found = importlib.util.find_spec("triton") is not None


# Plain functions over module constants (no lru_cache): torch.compile traces them without warnings.
def compiled():
    """fastdiff._C, or None when the extension is missing."""
    return _compiled


def cuda_compiled() -> bool:
    return bool(_compiled is not None and _compiled.cuda_compiled)


def triton_importable() -> bool:
    return _triton_found


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_reason(name: str, device: torch.device) -> Optional[str]:
    """Why backend `name` cannot run on `device`, or None when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        if compiled() is None:
            return "fastdiff._C (the compiled extension) could not be imported"
        if device.type != "cpu":
            return f"the cpu backend serves CPU tensors, got tensors on {device}"
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend serves CUDA tensors, got tensors on {device}"
        if not cuda_compiled():
            return "fastdiff._C was built without CUDA kernels (torch without CUDA, or FASTDIFF_CUDA=0)"
        return None
    if name == "triton":
        if not triton_importable():
            return "triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreting():
            return None
        return f"triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
    raise AssertionError(name)


def dtype_reason(dtype: torch.dtype) -> Optional[str]:
    if dtype not in KERNEL_DTYPES:
        return f"the kernels take float32, float16 or bfloat16, got {dtype}"
    return None


def select(op: str, device: torch.device, reason: Callable[[str], Optional[str]]) -> str:
    """Pick the backend for one call of `op`.

    `reason(name)` returns why backend `name` cannot serve this call (dtype, head dim, ...), or None;
    device and availability checks are added here.
    """

    def why_not(name: str) -> Optional[str]:
        return device_reason(name, device) or (None if name == "reference" else reason(name))

    want = forced()
    if want is not None:
        why = why_not(want)
        if why is not None:
            raise BackendUnavailable(f"fastdiff.{op}: backend '{want}' cannot serve these inputs: {why}")
        return want
    order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    for name in order:
        if why_not(name) is None:
            return name
    return "reference"


def available() -> dict[str, str]:
    """Each backend and whether it is usable here, in words (for `fastdiff info`)."""
    out = {}
    c = compiled()
    out["cpu"] = f"compiled ({c.cpu_isa()} kernels)" if c is not None else "missing: fastdiff._C not importable"
    if c is None:
        out["cuda"] = "missing: fastdiff._C not importable"
    elif c.cuda_compiled:
        out["cuda"] = f"compiled for sm_{c.cuda_archs.replace(',', ', sm_')}" + (
            "" if torch.cuda.is_available() else " (no CUDA device visible)"
        )
    else:
        out["cuda"] = "not compiled (torch without CUDA, or FASTDIFF_CUDA=0)"
    if triton_importable():
        import triton

        where = "CUDA" if torch.cuda.is_available() else ("CPU interpreter" if triton_interpreting() else "no CUDA device; set TRITON_INTERPRET=1 to run on CPU")
        out["triton"] = f"importable (triton {triton.__version__}, {where})"
    else:
        out["triton"] = "not installed"
    out["reference"] = "always (pure PyTorch)"
    return out
