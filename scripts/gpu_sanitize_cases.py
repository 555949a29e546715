#!/usr/bin/env python3
"""Small cases of every CUDA kernel family, for compute-sanitizer (memcheck, racecheck) on a GPU.

    compute-sanitizer --tool memcheck python scripts/gpu_sanitize_cases.py [--family attention]
    python scripts/gpu_sanitize_cases.py --device cpu        # the same calls on CPU tensors (dry run)

Each case calls one public op (forward, and backward where the op has one) on a forced backend
(cuda on a GPU), with sizes chosen to reach the kernels' edges: odd lengths, tails past the vector
width, a storage offset that breaks 16-byte alignment, rows longer than one block, key-length and
head-dim specialisations of the attention kernels, a key-padding mask. Tensors are tiny: the
sanitizer slows each launch by orders of magnitude. Each result is compared loosely with the
reference (this proves the call ran the kernel's arithmetic; tests/ops holds the tight checks); a
mismatch or an error makes the exit status 1. Run without PyTorch's caching allocator
(PYTORCH_NO_CUDA_MEMORY_CACHING=1) so reads past a tensor's end leave its allocation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import fastdiff  # noqa: E402
from fastdiff.ops import (  # noqa: E402
    adaln_modulate, adaln_modulate_reference, attention, attention_reference, gated_residual,
    gated_residual_adaln, gated_residual_adaln_reference, gated_residual_reference, geglu, geglu_reference,
    group_norm, group_norm_reference, guidance_combine, guidance_combine_reference, sampler_update,
    sampler_update_reference,
)

CASES: dict[str, list[tuple[str, Callable[[str, str], None]]]] = {}


def case(family: str, name: str):
    def register(fn):
        CASES.setdefault(family, []).append((name, fn))
        return fn
    return register


def rand(*shape: int, dtype=torch.float32, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` starting one element past its allocation's start (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float) -> None:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = max(1.0, want.abs().max().item() if want.numel() else 0.0)
    if not err <= tol * scale:  # NaN fails too
        raise AssertionError(f"{what}: max error {err:.3g} > {tol:.1g} x {scale:.3g}")


TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


# ---- guidance ---------------------------------------------------------------------------------
@case("guidance", "combine odd sizes, fp16, per-sample scale")
def _(dev: str, backend: str) -> None:
    m = rand(6, 3, 7, 11, dtype=torch.float16, device=dev)
    s = torch.tensor([1.5, 4.0, 8.0], device=dev)
    with fastdiff.backend(backend):
        out = guidance_combine(m, s)
    close(out, guidance_combine_reference(m.double(), s.double()), "guidance_combine", TOL[torch.float16])


@case("guidance", "combine with rescale (reduction over several chunks), misaligned bf16")
def _(dev: str, backend: str) -> None:
    m = misaligned(rand(4, 5, 1031, dtype=torch.bfloat16, device=dev))
    with fastdiff.backend(backend):
        out = guidance_combine(m, 7.5, rescale=0.7)
    close(out, guidance_combine_reference(m.double(), 7.5, rescale=0.7), "guidance_combine rescale", TOL[torch.bfloat16])


# ---- sampler_update ---------------------------------------------------------------------------
def _row(k: int, slot: int, dev: str) -> torch.Tensor:
    r = torch.rand(6 + k, generator=torch.Generator().manual_seed(k)) * 2 - 1
    r[5] = slot
    return r.to(dev)


@case("sampler_update", "guided step with noise and a 3-slot history, odd sizes")
def _(dev: str, backend: str) -> None:
    x, z = rand(3, 5, 9, 11, device=dev), rand(3, 5, 9, 11, device=dev, seed=1)
    m, h = rand(6, 5, 9, 11, device=dev, seed=2), rand(3, 3, 5, 9, 11, device=dev, seed=3)
    h_ref = h.double().clone()
    ref = sampler_update_reference(x.double(), m.double(), _row(3, 2, dev).double(), history=h_ref, noise=z.double(),
                                   guidance_scale=5.0)
    with fastdiff.backend(backend):
        out = sampler_update(x, m, _row(3, 2, dev), history=h, noise=z, guidance_scale=5.0)
    close(out, ref, "sampler_update", TOL[torch.float32])
    close(h, h_ref, "sampler_update history", TOL[torch.float32])


@case("sampler_update", "misaligned mixed dtypes (bf16 x, fp16 model output), per-sample scale, rescale")
def _(dev: str, backend: str) -> None:
    x = misaligned(rand(2, 4, 8, 9, dtype=torch.bfloat16, device=dev))
    m = misaligned(rand(4, 4, 8, 9, dtype=torch.float16, device=dev, seed=1))
    h = misaligned(rand(2, 2, 4, 8, 9, dtype=torch.bfloat16, device=dev, seed=2))
    s = torch.tensor([2.0, 6.0], device=dev)
    h_ref = h.double().clone()
    ref = sampler_update_reference(x.double(), m.double(), _row(2, 1, dev).double(), history=h_ref,
                                   guidance_scale=s.double(), guidance_rescale=0.5)
    with fastdiff.backend(backend):
        out = sampler_update(x, m, _row(2, 1, dev), history=h, guidance_scale=s, guidance_rescale=0.5)
    close(out, ref, "sampler_update mixed", TOL[torch.bfloat16])


# ---- adaln ------------------------------------------------------------------------------------
def _grads(fn, inputs, seed=5):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gs = [rand(*o.shape, dtype=o.dtype, device=o.device.type, seed=seed + i) for i, o in enumerate(outs)]
    return list(outs), list(torch.autograd.grad(outs, leaves, gs))


def _compare_with_reference(name, fast, ref, inputs, dtype, backend):
    with fastdiff.backend(backend):
        outs, grads = _grads(fast, inputs)
    ref_outs, ref_grads = _grads(ref, [t.double() for t in inputs])
    for i, (a, b) in enumerate(zip(outs + grads, ref_outs + ref_grads)):
        close(a, b, f"{name} output/gradient {i}", TOL[dtype] * 4)


@case("adaln", "modulate forward+backward, odd D, per-token and per-sample modulation, affine")
def _(dev: str, backend: str) -> None:
    for per_token in (False, True):
        x = rand(2, 5, 77, dtype=torch.bfloat16, device=dev)
        mod = (2, 5, 77) if per_token else (2, 77)
        shift, scale = rand(*mod, dtype=torch.bfloat16, device=dev, seed=1), rand(*mod, dtype=torch.bfloat16, device=dev, seed=2)
        w, b = rand(77, dtype=torch.bfloat16, device=dev, seed=3), rand(77, dtype=torch.bfloat16, device=dev, seed=4)
        _compare_with_reference(
            "adaln_modulate", lambda *t: adaln_modulate(t[0], t[1], t[2], weight=t[3], bias=t[4]),
            lambda *t: adaln_modulate_reference(t[0], t[1], t[2], weight=t[3], bias=t[4]),
            [x, shift, scale, w, b], torch.bfloat16, backend,
        )


@case("adaln", "modulate rows too long for registers (D = 2049, odd: the streaming kernel), RMS norm, fp32")
def _(dev: str, backend: str) -> None:
    x = rand(1, 3, 2049, device=dev)
    shift, scale = rand(1, 2049, device=dev, seed=1), rand(1, 2049, device=dev, seed=2)
    _compare_with_reference(
        "adaln_modulate rms", lambda *t: adaln_modulate(*t, norm="rms"),
        lambda *t: adaln_modulate_reference(*t, norm="rms"), [x, shift, scale], torch.float32, backend,
    )


@case("adaln", "gated_residual and gated_residual_adaln forward+backward, fp16, odd sizes")
def _(dev: str, backend: str) -> None:
    x, h = rand(2, 9, 40, dtype=torch.float16, device=dev), rand(2, 9, 40, dtype=torch.float16, device=dev, seed=1)
    gate = rand(2, 40, dtype=torch.float16, device=dev, seed=2)
    shift, scale = rand(2, 40, dtype=torch.float16, device=dev, seed=3), rand(2, 40, dtype=torch.float16, device=dev, seed=4)
    _compare_with_reference("gated_residual", gated_residual, gated_residual_reference, [x, gate, h], torch.float16, backend)
    _compare_with_reference("gated_residual_adaln", gated_residual_adaln, gated_residual_adaln_reference,
                            [x, gate, h, shift, scale], torch.float16, backend)


# ---- attention --------------------------------------------------------------------------------
def _attention_case(dev, backend, b, nq, nk, h, d, dtype, masked):
    q, k, v = (rand(b, n, h, d, dtype=dtype, device=dev, seed=i) for i, n in enumerate((nq, nk, nk)))
    mask = None
    if masked:
        mask = torch.ones(b, nk, dtype=torch.bool)
        mask[0, nk // 2:] = False
        mask = mask.to(dev)
    _compare_with_reference(
        f"attention B={b} Nq={nq} Nk={nk} H={h} D={d}", lambda *t: attention(*t, mask=mask),
        lambda *t: attention_reference(*t, mask=mask), [q, k, v], dtype, backend,
    )


@case("attention", "cross-attention (one key block): Nk = 77, D = 40, fp16, key-padding mask")
def _(dev: str, backend: str) -> None:
    _attention_case(dev, backend, 2, 37, 77, 2, 40, torch.float16, True)


@case("attention", "self-attention (tiled keys): N = 300, D = 64 and 72, bf16")
def _(dev: str, backend: str) -> None:
    for d in (64, 72):
        _attention_case(dev, backend, 1, 300, 300, 2, d, torch.bfloat16, False)


@case("attention", "wide heads: D = 128 and 160 (and 256), odd lengths, fp16")
def _(dev: str, backend: str) -> None:
    for d in (128, 160, 256):
        _attention_case(dev, backend, 1, 45, 270, 1, d, torch.float16, d == 160)


# ---- geglu -------------------------------------------------------------------------------------
@case("geglu", "forward+backward, exact and tanh, odd half-width (scalar path) and a 16-byte-path width")
def _(dev: str, backend: str) -> None:
    for half, dtype in ((37, torch.float16), (64, torch.bfloat16), (40, torch.float32)):
        for approx in ("none", "tanh"):
            _compare_with_reference(f"geglu {approx} H={half}", lambda x: geglu(x, approximate=approx),
                                    lambda x: geglu_reference(x, approximate=approx),
                                    [rand(3, 5, 2 * half, dtype=dtype, device=dev)], dtype, backend)


@case("geglu", "misaligned input (the scalar path on a vector-friendly width)")
def _(dev: str, backend: str) -> None:
    x = misaligned(rand(4, 2 * 64, dtype=torch.float16, device=dev))
    with fastdiff.backend(backend):
        out = geglu(x)
    close(out, geglu_reference(x.double()), "geglu misaligned", TOL[torch.float16])


# ---- group_norm --------------------------------------------------------------------------------
@case("group_norm", "NCHW and channels-last forward+backward with SiLU, odd spatial size, fp16/bf16")
def _(dev: str, backend: str) -> None:
    for dtype, cl in ((torch.float16, False), (torch.bfloat16, True), (torch.float32, False)):
        x = rand(2, 12, 9, 7, dtype=dtype, device=dev)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = rand(12, dtype=dtype, device=dev, seed=1), rand(12, dtype=dtype, device=dev, seed=2)
        _compare_with_reference(f"group_norm cl={cl}", lambda *t: group_norm(t[0], 4, t[1], t[2], activation="silu"),
                                lambda *t: group_norm_reference(t[0], 4, t[1], t[2], activation="silu"),
                                [x, w, b], dtype, backend)


@case("group_norm", "groups spanning several blocks (VAE-like), no affine, fp32")
def _(dev: str, backend: str) -> None:
    _compare_with_reference("group_norm large group", lambda x: group_norm(x, 2), lambda x: group_norm_reference(x, 2),
                            [rand(1, 4, 150, 131, device=dev)], torch.float32, backend)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", help="fastdiff backend to force (default: cuda on a GPU, auto on CPU)")
    ap.add_argument("--family", action="append", choices=sorted(CASES), help="only these families (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    opts = ap.parse_args()
    families = opts.family or list(CASES)
    if opts.list:
        for fam in families:
            for name, _ in CASES[fam]:
                print(f"{fam}: {name}")
        return 0
    backend = opts.backend or ("cuda" if opts.device == "cuda" else "auto")
    failed = 0
    for fam in families:
        for name, fn in CASES[fam]:
            t0 = time.time()
            try:
                fn(opts.device, backend)
                if opts.device == "cuda":
                    torch.cuda.synchronize()
                status = "ok"
            except Exception:  # noqa: BLE001 - report every case
                failed += 1
                status = "FAIL\n" + traceback.format_exc()
            print(f"{fam:15s} {name} [{backend} on {opts.device}, {time.time() - t0:.1f} s]: {status}", flush=True)
    print(f"{sum(len(CASES[f]) for f in families) - failed} cases ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
