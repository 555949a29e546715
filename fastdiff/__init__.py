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

__all__ = ["__version__", "accelerate", "generate", "patch", "unaccelerate", "unpatch", "backend", "BackendUnavailable",
           "info", "models", "nn", "ops", "sample", "samplers", "schedulers"]


def __getattr__(name: str):
    # fastdiff.schedulers and the integrations (patch / accelerate / generate) need diffusers, so they
    # are imported on first use: `import fastdiff` stays light and works without diffusers.
    if name == "schedulers":
        import importlib

        return importlib.import_module(".schedulers", __name__)
    if name in ("patch", "unpatch", "accelerate", "unaccelerate", "generate", "PatchReport"):
        from . import integrations

        return getattr(integrations, name)
    raise AttributeError(f"module 'fastdiff' has no attribute {name!r}")
