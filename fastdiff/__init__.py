"""fastdiff: fused CUDA, Triton and CPU kernels for diffusion sampling and training."""

from __future__ import annotations

__version__ = "0.1.0"

from . import _backend

if _backend.compiled() is None:  # the op schemas live in the extension
    raise ImportError(
        "fastdiff: the compiled extension fastdiff._C could not be imported; reinstall with "
        "`pip install --no-build-isolation .` against the installed torch"
    )

from . import nn, ops, samplers, schedulers  # noqa: E402
from ._backend import BackendUnavailable, backend  # noqa: E402
from ._info import info  # noqa: E402
from .samplers import sample  # noqa: E402


def __getattr__(name: str):
    # patch / accelerate / generate import diffusers' classes lazily: `import fastdiff` stays light.
    if name in ("patch", "unpatch", "accelerate", "unaccelerate", "generate", "PatchReport"):
        from . import integrations

        return getattr(integrations, name)
    raise AttributeError(f"module 'fastdiff' has no attribute {name!r}")


__all__ = ["__version__", "accelerate", "generate", "patch", "unaccelerate", "unpatch", "backend", "BackendUnavailable", "info", "nn", "ops", "sample", "samplers", "schedulers"]
