"""Test setup: which backends run here, poisoned allocations, and comparison helpers."""

import os

import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU. Set before any
# triton import: @triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastdiff  # noqa: E402
from fastdiff import _backend  # noqa: E402


def kernel_backends() -> list[tuple[str, str]]:
    """(backend, device) pairs this machine can run: every kernel backend on every device it serves."""
    out = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for name in ("cuda", "triton", "cpu"):
            if _backend.device_reason(name, torch.device(dev)) is None:
                out.append((name, dev))
    return out


def pytest_generate_tests(metafunc):
    if "backend_device" in metafunc.fixturenames:
        pairs = kernel_backends()
        metafunc.parametrize("backend_device", pairs, ids=[f"{b}-{d}" for b, d in pairs])


@pytest.fixture(autouse=True)
def poison_allocations():
    """Fill every uninitialised allocation with NaN, so an element a kernel forgets to write fails."""
    old = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.utils.deterministic.fill_uninitialized_memory = fill
