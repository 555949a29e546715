"""Argument checks with uniform messages, helpers of the references, and the registration helpers every
op family uses."""

from __future__ import annotations

import importlib
from typing import Any, Callable, NoReturn, Optional, Sequence

import torch


class InputError(ValueError):
    """A fastdiff op was called with arguments it cannot take; the message names op and argument."""


def fail(op: str, arg: str, expected: str, got: Any) -> NoReturn:
    raise InputError(f"fastdiff.{op}: argument '{arg}' expected {expected}, got {got}")


def describe(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)}, {t.dtype}, on {t.device}"


def check_tensor(
    op: str,
    arg: str,
    t: Any,
    *,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    device: Optional[torch.device] = None,
    shape: Optional[Sequence[int]] = None,
    min_ndim: int = 0,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__)
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        fail(op, arg, f"dtype {names}", t.dtype)
    if device is not None and t.device != device:
        fail(op, arg, f"a tensor on {device} (like the other inputs)", f"a tensor on {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        fail(op, arg, f"shape {tuple(shape)}", tuple(t.shape))
    if t.dim() < min_ndim:
        fail(op, arg, f"at least {min_ndim} dimension(s)", f"shape {tuple(t.shape)}")
    return t


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def acc_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """The references' arithmetic: float64 when any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) per-sample vector shaped to broadcast against `like` (B, ...)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def register_triton(op: str, module: str, fn: str) -> None:
    """Register `fastdiff::<op>_triton` to call fastdiff.triton.<module>.<fn>, imported on first use.

    Triton is imported lazily: it is optional and slow to import.
    """

    def impl(*args: Any) -> Any:
        mod = importlib.import_module(f"fastdiff.triton.{module}")
        return getattr(mod, fn)(*args)

    torch.library.impl(f"fastdiff::{op}_triton", "CompositeExplicitAutograd")(impl)


def register_fake(ops: Sequence[str], fake: Callable[..., Any]) -> None:
    for name in ops:
        torch.library.register_fake(f"fastdiff::{name}")(fake)


def kernel_op(op: str, backend: str) -> Callable[..., Any]:
    """The torch.ops callable serving `op` on a compiled or triton backend."""
    if backend == "triton":
        return getattr(torch.ops.fastdiff, f"{op}_triton").default
    return getattr(torch.ops.fastdiff, op).default
