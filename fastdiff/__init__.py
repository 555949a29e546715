"""fastdiff: fused CUDA, Triton and CPU kernels for diffusion sampling and training."""

from __future__ import annotations

__version__ = "0.1.0"

from . import _backend

if _backend.compiled() is None:  # the op schemas live in the extension
    raise ImportError(
        "fastdiff: the compiled extension fastdiff._C could not be imported; reinstall with "
        "`pip install --no-build-isolation .` against the installed torch"
    )

from . import nn, ops, samplers  # noqa: E402
from ._backend import BackendUnavailable, backend  # noqa: E402
from ._info import info  # noqa: E402
from .samplers import sample  # noqa: E402
from . import models  # noqa: E402

__all__ = ["__version__", "backend", "BackendUnavailable", "info", "nn", "ops", "sample", "samplers", "schedulers"]


def __getattr__(name: str):
    # fastdiff.schedulers needs diffusers, so it is imported on first use rather than with fastdiff
    if name == "schedulers":
        import importlib

        return importlib.import_module(".schedulers", __name__)
    raise AttributeError(f"module 'fastdiff' has no attribute {name!r}")
