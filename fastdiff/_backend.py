"""Which backends exist here, which one serves a call, and the `fastdiff.backend(name)` context.

Backends: ``cuda`` (hand-written kernels in fastdiff._C), ``triton``, ``cpu`` (C++ kernels in
fastdiff._C) and ``reference`` (pure PyTorch, the specification). Without a forced choice a CUDA
tensor goes to cuda, else triton; a CPU tensor to cpu; anything a kernel cannot serve (float64, say)
to the reference. A forced backend that cannot serve the inputs raises and says why.

Every op family declares what each backend serves in one `Family` (dtypes, compiled kernels, its own
limits on shapes) and every op picks its backend through `Family.select`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Callable, Iterator, Optional, Sequence

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


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class Support:
    """What one backend serves for an op family, beyond what the backend itself needs.

    A backend's devices and whether it is importable are its own (`device_reason`). A family adds:
    ``dtypes`` its kernels take (every dtype of a call must be one); ``kernels``, the fastdiff ops
    that a compiled backend (cpu, cuda) must carry in this build of fastdiff._C; ``check(backend,
    dtypes, **features)``, the family's own limits on a call (shapes, head dims, ...): why not, or
    None; or ``missing``, why this backend never serves the family.
    """

    __slots__ = ("dtypes", "kernels", "check", "missing")

    def __init__(
        self,
        *,
        dtypes: Sequence[torch.dtype] = KERNEL_DTYPES,
        kernels: Sequence[str] = (),
        check: Optional[Callable[..., Optional[str]]] = None,
        missing: Optional[str] = None,
    ):
        self.dtypes, self.kernels, self.check, self.missing = tuple(dtypes), tuple(kernels), check, missing


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _carries(key: str, ops: Sequence[str]) -> bool:
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastdiff::{op}", key) for op in ops)
    except RuntimeError:  # an op fastdiff._C does not define (not built, or built before it existed)
        return False


_FAMILIES: dict[str, "Family"] = {}


class Family:
    """The backends of one op family and what each serves: the one selection path of every op.

    Declared once per family module (``Family("adaln", cpu=Support(...), cuda=..., triton=...)``);
    a backend not declared does not serve the family. ``select`` picks the backend for one call;
    ``reasons`` says, for every backend, why it cannot serve a call (None where it can).
    """

    def __init__(self, name: str, **backends: Support):
        for b in backends:
            _check_name(b, f"Family({name!r})")
        self.name = name
        self.backends = backends
        # Read once: the dispatcher query cannot be traced by torch.compile.
        self._carried = {b: _carries(_DISPATCH_KEYS[b], s.kernels) for b, s in backends.items() if b in _DISPATCH_KEYS}
        _FAMILIES[name] = self

    def carried(self, backend: str) -> bool:
        """Whether this build of fastdiff._C carries the family's kernels for `backend` (cpu, cuda)."""
        return self._carried.get(backend, False)

    def reason(self, backend: str, device: torch.device, dtypes: Sequence[torch.dtype] = (), **features) -> Optional[str]:
        """Why `backend` cannot serve a call on `device` with these dtypes and features, or None."""
        if backend == "reference":
            return None
        s = self.backends.get(backend)
        if s is None:
            return f"fastdiff has no {backend} kernels for {self.name}"
        if s.missing is not None:
            return s.missing
        why = device_reason(backend, device)
        if why is not None:
            return why
        if backend in _DISPATCH_KEYS and not self._carried[backend]:
            return f"fastdiff._C carries no {backend} kernels for {self.name} (rebuild the extension)"
        if s.check is not None:
            why = s.check(backend, dtypes, **features)
            if why is not None:
                return why
        for d in dtypes:
            if d not in s.dtypes:
                return f"the {backend} kernels of {self.name} take {_dtype_names(s.dtypes)}, got {d}"
        return None

    def select(self, op: str, device: torch.device, dtypes: Sequence[torch.dtype] = (), **features) -> str:
        """The backend that serves this call of `op`: the forced one (raising `BackendUnavailable`
        with the reason when it cannot), else the first that can of cuda > triton on CUDA tensors,
        cpu on CPU tensors, else the reference."""
        want = forced()
        if want is not None:
            why = self.reason(want, device, dtypes, **features)
            if why is not None:
                raise BackendUnavailable(f"fastdiff.{op}: backend '{want}' cannot serve these inputs: {why}")
            return want
        for name in ("cuda", "triton") if device.type == "cuda" else ("cpu",):
            if self.reason(name, device, dtypes, **features) is None:
                return name
        return "reference"

    def reasons(self, device: torch.device, dtypes: Sequence[torch.dtype] = (), **features) -> dict[str, Optional[str]]:
        """Every backend and why it cannot serve such a call (None: it can)."""
        return {b: self.reason(b, device, dtypes, **features) for b in BACKENDS}


def family(name: str) -> Family:
    """The declared `Family` of an op family ("guidance", "adaln", ...)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"fastdiff: no op family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


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
