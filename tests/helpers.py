"""Comparison helpers shared by the tests."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from fastdiff.ops.randn import fast_path_reason

_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, *, ulps: float = 2.0, rtol32: float = 1e-5):
    """fp32 within rtol32 (relative to the output's scale), fp16/bf16 within `ulps` ulp; NaN never passes."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "output holds NaN"
    scale = ref.abs().max().item() if ref.numel() else 0.0
    if out.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=rtol32, atol=rtol32 * scale)
    elif out.dtype in _ULP:
        eps = _ULP[out.dtype]
        torch.testing.assert_close(out.double(), ref, rtol=ulps * eps, atol=1e-3 * eps * scale + 1e-7)
    else:
        torch.testing.assert_close(out.double(), ref, rtol=1e-12, atol=1e-12 * scale)


class DispatchedOps(TorchDispatchMode):
    """Records every op dispatched inside it (``ops``); ``compute()``: those other than element
    selection, allocations and random draws (what "one launch per step" counts). A draw through
    fastdiff.ops.randn (fastdiff::torch_randn_) is torch.randn's draw and is recorded as
    ``aten.randn.fastdiff``; its one-time check against torch.randn runs before recording starts."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __enter__(self):
        fast_path_reason(torch.float32), fast_path_reason(torch.bfloat16)
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.ops.append("aten.randn.fastdiff" if name.startswith("fastdiff.torch_randn_") else name)
        return func(*args, **(kwargs or {}))

    def compute(self) -> list[str]:
        return [op for op in self.ops if not op.startswith(("aten.select", "aten.empty", "aten.randn"))]
