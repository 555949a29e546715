"""fastdiff.ops.randn is torch.randn: the same values, the generator left in the same state; on CPU it
runs PyTorch's sampler in fastdiff._C (torch_randn_), validated against torch.randn at first use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdiff._C as C
import fastdiff
from fastdiff.ops.randn import randn, randn_reference
from fastdiff.ops.randn import fast_path_reason

ROOT = Path(__file__).resolve().parents[2]
FAST = fast_path_reason() is None
needs_fast = pytest.mark.skipif(not FAST, reason=f"no fast path here: {fast_path_reason()}")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, torch.int16))


def same_draws(shape, dtype, seed: int, *, skip: int = 0) -> None:
    """randn and torch.randn from equally seeded generators: identical bits, and identical draws after."""
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    if skip:  # start mid-way through the engine's 624-word block
        torch.randn(skip, generator=ours), torch.randn(skip, generator=theirs)
    got = randn(shape, generator=ours, dtype=dtype)
    want = torch.randn(shape, generator=theirs, dtype=dtype)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(bits(got), bits(want))
    assert torch.equal(torch.rand(700, generator=ours), torch.rand(700, generator=theirs))


@pytest.mark.skipif(not torch.__version__.startswith("2.13."), reason="reproduction verified against PyTorch 2.13; "
                    "other versions are checked at run time and may take torch.randn")
def test_the_fast_path_is_taken_on_avx2_machines():
    if C.cpu_isa() == "avx2" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert fast_path_reason(torch.float32) is None and fast_path_reason(torch.bfloat16) is None
    assert "float64" in fast_path_reason(torch.float64)


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [16, 17, 31, 32, 623, 624, 625, 1247, 1248, 1249, 5000, 65536 + 9])
def test_values_and_generator_state_match_torch(dtype, n):
    if fast_path_reason(dtype) is not None:
        pytest.skip(fast_path_reason(dtype))
    for seed, skip in ((0, 0), (1, 1), (2, 623), (12345, 311)):
        same_draws((n,), dtype, seed, skip=skip)


@needs_fast
@pytest.mark.parametrize("shape", [(4, 4, 64, 64), (1, 4, 64, 64), (2, 3, 5, 7), (1, 16)])
def test_latent_shapes(shape):
    same_draws(shape, torch.float32, 7)


@needs_fast
def test_the_default_generator_is_torch_default_generator():
    torch.manual_seed(3)
    got, got_after = randn((4, 1000)), torch.rand(10)
    torch.manual_seed(3)
    want, want_after = torch.randn((4, 1000)), torch.rand(10)
    assert torch.equal(got, want) and torch.equal(got_after, want_after)


@pytest.mark.parametrize("case", [dict(shape=(15,)), dict(shape=(0,)), dict(shape=(3, 5), dtype=torch.float64),
                                  dict(shape=()), dict(shape=(8, 8), device="meta")])
def test_what_the_fast_path_does_not_take_is_torch_randn(case):
    shape, dtype, device = case["shape"], case.get("dtype"), case.get("device")
    g = None if device == "meta" else torch.Generator().manual_seed(5)
    got = randn(shape, generator=g, dtype=dtype, device=device)
    want = randn_reference(shape, generator=None if g is None else torch.Generator().manual_seed(5), dtype=dtype, device=device)
    assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device
    if device != "meta":
        assert torch.equal(got, want)


@needs_fast
def test_the_op_refuses_what_it_cannot_fill():
    op = torch.ops.fastdiff.torch_randn_
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        op(torch.empty(32, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match="at least 16"):
        op(torch.empty(15), None)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(torch.empty(32, 2)[:, 0], None)


def test_the_base_build_falls_back_to_torch_randn():
    code = ("import torch; from fastdiff.ops.randn import randn, fast_path_reason; g = torch.Generator().manual_seed(1); "
            "x = randn((100,), generator=g); print(fast_path_reason()); "
            "print(torch.equal(x, torch.randn(100, generator=torch.Generator().manual_seed(1))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "FASTDIFF_CPU_ISA": "base"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    reason, equal = out.stdout.strip().splitlines()
    assert "AVX2" in reason and equal == "True"


@needs_fast
def test_a_forced_reference_backend_draws_with_torch_randn(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.ops.fastdiff, "torch_randn_", lambda *a: calls.append(a))
    with fastdiff.backend("reference"):
        got = randn((64,), generator=torch.Generator().manual_seed(2))
    assert calls == [] and torch.equal(got, torch.randn(64, generator=torch.Generator().manual_seed(2)))


@needs_fast
def test_a_precision_whose_check_failed_draws_with_torch_randn(monkeypatch):
    from fastdiff.ops import randn as module

    monkeypatch.setitem(module._state, True, "torch_randn_ does not reproduce torch.randn (bfloat16)")
    calls = []
    real = torch.ops.fastdiff.torch_randn_
    monkeypatch.setattr(torch.ops.fastdiff, "torch_randn_", lambda *a: calls.append(a[0].dtype) or real(*a))
    got = randn((64,), generator=torch.Generator().manual_seed(4), dtype=torch.bfloat16)
    assert torch.equal(got, torch.randn(64, generator=torch.Generator().manual_seed(4), dtype=torch.bfloat16))
    randn((64,), generator=torch.Generator().manual_seed(4))  # float32 keeps its fast path
    assert calls == [torch.float32]
