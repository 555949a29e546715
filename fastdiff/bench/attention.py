"""Benchmark fastdiff.ops.attention against every SDPA backend and eager attention on diffusion shapes.

    python -m fastdiff.bench.attention [--models sd15,sdxl,dit,pixart] [--modes fwd,bwd,fwd+bwd]
                                       [--dtype bf16|fp16] [--out DIR] [--quick] [--tune [--table PATH]]
    python -m fastdiff.bench.attention --cpu [--threads 1 --clock cpu]   # the C++ CPU kernel vs SDPA, eager

GPU: for each shape, fastdiff (each attention backend that serves it here: cuda, triton) and
PyTorch's SDPA with each backend forced (flash, efficient, cudnn, math) and eager
matmul-softmax-matmul, in forward, backward and forward+backward, timed with CUDA events
(``triton.testing.do_bench``, median). Each implementation gets its own natural layout, made
contiguous: fastdiff (B, N, H, D), SDPA and eager (B, H, N, D). Reported: milliseconds, TFLOP/s
(forward 4 B H Nq Nk D; backward 2.5x that: five matmuls to the forward's two), and for
cross-attention (memory-bound: Nk is 77 or 120 text tokens) GB/s and the fraction of the memory
floor, the bytes the forward must move (read q, k, v, write out; the backward: read q, k, v, out,
dO, write dq, dk, dv) at the device-to-device copy bandwidth measured in the same run. The speedup
column is the fastest SDPA backend's time over fastdiff's. ``fastdiff-auto`` is what a user's call
runs: the kernel or SDPA, as the dispatch table says (fastdiff/ops/attention_dispatch.py).
``--tune`` writes that table's entries from this run's forward times: per shape, SDPA's fastest
backend where it beats the kernel that auto selection runs (cuda, else triton), the kernel otherwise.

Without a GPU this module says so and, with ``--cpu``, times the C++ CPU kernel (forced, and
``fastdiff-auto``: the kernel or SDPA as attention_dispatch.cpu_choice routes it) against SDPA and
eager attention at CPU shapes, float32, forward and forward+backward, in interleaved rounds
(bench/_timing.py; ``--clock cpu`` with one thread on a shared machine), reporting medians and
medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ._case import error_summary

#: (model, label, B, H, Nq, Nk, D): Nk = Nq is self-attention. SD-1.5 at 512 px (64x64 latent),
#: batch 8 = 4 images with classifier-free guidance; SDXL at 1024 px, batch 2; DiT-XL/2 at 256
#: and 512 px; PixArt-alpha at 1024 px with 120 T5 tokens.
SHAPES: list[tuple[str, str, int, int, int, int, int]] = [
    ("sd15", "64x64 self", 8, 8, 4096, 4096, 40),
    ("sd15", "64x64 cross", 8, 8, 4096, 77, 40),
    ("sd15", "32x32 self", 8, 8, 1024, 1024, 80),
    ("sd15", "32x32 cross", 8, 8, 1024, 77, 80),
    ("sd15", "16x16 self", 8, 8, 256, 256, 160),
    ("sd15", "16x16 cross", 8, 8, 256, 77, 160),
    ("sd15", "8x8 self", 8, 8, 64, 64, 160),
    ("sd15", "8x8 cross", 8, 8, 64, 77, 160),
    ("sdxl", "64x64 self", 2, 10, 4096, 4096, 64),
    ("sdxl", "64x64 cross", 2, 10, 4096, 77, 64),
    ("sdxl", "32x32 self", 2, 20, 1024, 1024, 64),
    ("sdxl", "32x32 cross", 2, 20, 1024, 77, 64),
    ("dit", "256px self", 8, 16, 256, 256, 72),
    ("dit", "512px self", 8, 16, 1024, 1024, 72),
    ("pixart", "1024px self", 2, 16, 4096, 4096, 72),
    ("pixart", "1024px cross", 2, 16, 4096, 120, 72),
]
QUICK = {("sd15", "64x64 self"), ("sd15", "64x64 cross"), ("dit", "512px self"), ("pixart", "1024px cross")}
MODES = ("fwd", "bwd", "fwd+bwd")
#: CPU shapes (B, H, Nq, Nk, D): a small SD-like U-Net's self- and cross-attention (head dims 8 and 16), then
#: wider heads (64, DiT's 72).
CPU_SHAPES = [(2, 4, 1024, 1024, 8), (2, 4, 1024, 77, 8), (2, 8, 256, 256, 16), (2, 4, 256, 77, 16),
              (2, 4, 256, 256, 64), (2, 16, 256, 256, 72)]


@dataclasses.dataclass
class Case:
    model: str
    label: str
    b: int
    h: int
    nq: int
    nk: int
    d: int

    @property
    def cross(self) -> bool:
        return self.nk != self.nq

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.b * self.h * self.nq * self.nk * self.d
        return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]

    def bytes(self, mode: str, elem: int) -> float:
        """Bytes each mode must move at the least (module docstring)."""
        q = self.b * self.nq * self.h * self.d * elem
        kv = self.b * self.nk * self.h * self.d * elem
        fwd = 2 * q + 2 * kv  # read q, k, v; write out
        bwd = 3 * q + 2 * kv + q + 2 * kv  # read q, out, dO, k, v; write dq, dk, dv
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def cases(models: Sequence[str], quick: bool) -> list[Case]:
    out = [Case(*s) for s in SHAPES if s[0] in models]
    return [c for c in out if (c.model, c.label) in QUICK] if quick else out


# ---------------------------------------------------------------------------------------------
# Implementations: each returns a forward callable on its own layout
# ---------------------------------------------------------------------------------------------
def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, N, D) matmul-softmax-matmul, what a model without fused attention runs."""
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def implementations(c: Case, dtype: torch.dtype, device: str) -> dict[str, tuple[Callable[[], torch.Tensor], tuple]]:
    """name -> (forward callable, its leaf inputs)."""
    from torch.nn.attention import sdpa_kernel

    import fastdiff
    from fastdiff.ops import attention

    scale = 1.0 / math.sqrt(c.d)
    g = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(True)

    impls: dict[str, tuple[Callable[[], torch.Tensor], tuple]] = {}
    qn, kn, vn = leaf(c.b, c.nq, c.h, c.d), leaf(c.b, c.nk, c.h, c.d), leaf(c.b, c.nk, c.h, c.d)
    for backend in ("cuda", "triton"):
        def run_fastdiff(backend: str = backend) -> torch.Tensor:
            with fastdiff.backend(backend):
                return attention(qn, kn, vn, scale=scale)

        impls[f"fastdiff-{backend}"] = (run_fastdiff, (qn, kn, vn))
    # What a user's call runs: the dispatch table's choice of kernel or SDPA (attention_dispatch.py).
    impls["fastdiff-auto"] = (lambda: attention(qn, kn, vn, scale=scale), (qn, kn, vn))
    qh, kh, vh = leaf(c.b, c.h, c.nq, c.d), leaf(c.b, c.h, c.nk, c.d), leaf(c.b, c.h, c.nk, c.d)
    for name, be in sdpa_backends().items():
        def run_sdpa(be: Any = be) -> torch.Tensor:
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(qh, kh, vh, scale=scale)

        impls[f"sdpa-{name}"] = (run_sdpa, (qh, kh, vh))
    impls["eager"] = (lambda: eager_attention(qh, kh, vh, scale), (qh, kh, vh))
    return impls


def timed_callable(fwd: Callable[[], torch.Tensor], leaves: tuple, mode: str) -> Callable[[], Any]:
    if mode == "fwd":
        def run() -> Any:
            with torch.no_grad():
                return fwd()
        return run
    if mode == "fwd+bwd":
        def run_both() -> Any:
            out = fwd()
            return torch.autograd.grad(out, leaves, torch.ones_like(out))
        return run_both
    out = fwd()  # backward alone: one graph, replayed
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)


def outcome(impl: str, e: BaseException) -> str:
    """'skipped' when an implementation declines a shape (fastdiff backend not built; an SDPA backend
    without a kernel for it; out of memory), 'failed' for anything else (a compile error, a crash)."""
    import fastdiff

    if isinstance(e, (fastdiff.BackendUnavailable, torch.cuda.OutOfMemoryError)):
        return "skipped"
    if impl.startswith("sdpa-") and isinstance(e, RuntimeError):
        return "skipped"
    return "failed"


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), measured now."""
    from triton.testing import do_bench

    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, quantiles=[0.5])[0]
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def run_gpu(opts: argparse.Namespace) -> dict[str, Any]:
    from triton.testing import do_bench

    import fastdiff

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[opts.dtype]
    device = "cuda"
    bandwidth = copy_bandwidth(device)
    rows: list[dict[str, Any]] = []
    for c in cases(opts.models, opts.quick):
        impls = implementations(c, dtype, device)
        for mode in opts.modes:
            for name, (fwd, leaves) in impls.items():
                row: dict[str, Any] = dict(model=c.model, case=c.label, B=c.b, H=c.h, Nq=c.nq, Nk=c.nk, D=c.d, mode=mode, impl=name)
                try:
                    fn = timed_callable(fwd, leaves, mode)
                    fn()
                    torch.cuda.synchronize()
                    ms = do_bench(fn, warmup=opts.warmup, rep=opts.rep, quantiles=[0.5])[0]
                except Exception as e:  # noqa: BLE001 - one implementation's failure never ends the run
                    row[outcome(name, e)] = error_summary(e)
                    print(f"{c.model:6s} {c.label:13s} {mode:7s} {name:16s} {outcome(name, e)}: {row[outcome(name, e)]}", flush=True)
                    torch.cuda.empty_cache()
                    rows.append(row)
                    continue
                row["ms"] = ms
                row["tflops"] = c.flops(mode) / (ms * 1e-3) / 1e12
                if c.cross:
                    nbytes = c.bytes(mode, torch.finfo(dtype).bits // 8)
                    row["gbps"] = nbytes / (ms * 1e-3) / 1e9
                    row["floor_fraction"] = (nbytes / bandwidth) / (ms * 1e-3)
                rows.append(row)
                print(_row_line(row), flush=True)
            torch.cuda.empty_cache()
        del impls
    return dict(meta=_meta(dtype, bandwidth=bandwidth), rows=rows)


def tuned_entries(rows: list[dict[str, Any]], dtype: torch.dtype, arch: str, kernel_impl: str) -> list[Any]:
    """Dispatch-table entries from forward timings: per shape, fastdiff's kernel (`kernel_impl`, the
    backend auto selection runs) against the fastest SDPA backend; SDPA only where it is faster."""
    from fastdiff.ops import attention_dispatch

    out = []
    for key in dict.fromkeys((r["Nq"], r["Nk"], r["D"]) for r in rows if r["mode"] == "fwd"):
        sel = {r["impl"]: r for r in rows if r["mode"] == "fwd" and (r["Nq"], r["Nk"], r["D"]) == key and "ms" in r}
        sdpa = {n.removeprefix("sdpa-"): r["ms"] for n, r in sel.items() if n.startswith("sdpa-")}
        if kernel_impl not in sel or not sdpa:
            continue  # nothing to compare: the default stays
        best = min(sdpa, key=sdpa.get)
        kernel_ms = sel[kernel_impl]["ms"]
        out.append(attention_dispatch.Entry(arch, str(dtype).removeprefix("torch."), key[2], key[0], key[1],
                         "kernel" if kernel_ms <= sdpa[best] else "sdpa", best, round(kernel_ms, 5), round(sdpa[best], 5)))
    return out


def tune(opts: argparse.Namespace, result: dict[str, Any]) -> list[Any]:
    """`--tune`: merge this run's entries into the dispatch table (opts.table, else the repository's)."""
    from fastdiff import _backend
    from fastdiff.ops import attention_dispatch as dispatch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[opts.dtype]
    probe = torch.empty(1, 1, 1, 64, dtype=dtype, device="cuda")
    # The backend auto selection gives this dtype's D = 64 calls (the kernel the table weighs against SDPA).
    chosen = _backend.family("attention").select("attention", probe.device, (dtype,), head_dim=64, bias_grad=False)
    kernel_impl = f"fastdiff-{chosen}"
    new = tuned_entries(result["rows"], dtype, dispatch.arch_of(probe.device), kernel_impl)
    target = opts.table or dispatch.TABLE_PATH
    base = dispatch.load_table(target if os.path.exists(target) else dispatch.TABLE_PATH)
    path = dispatch.write_table(dispatch.merge(base, new), target)
    for e in new:
        print(f"tune: {e.arch} {e.dtype} D={e.head_dim} Nq={e.nq} Nk={e.nk}: {e.impl} "
              f"(kernel {e.kernel_ms:.3f} ms, best SDPA {e.sdpa_backend} {e.sdpa_ms:.3f} ms)")
    print(f"tune: {len(new)} entries written to {path}")
    return new


# ---------------------------------------------------------------------------------------------
# CPU: the C++ kernel against SDPA and eager attention
# ---------------------------------------------------------------------------------------------
CPU_IMPLS = ("fastdiff-cpu", "fastdiff-auto", "sdpa", "eager")


def cpu_implementations(b: int, h: int, nq: int, nk: int, d: int) -> dict[str, tuple[Callable[[], torch.Tensor], tuple]]:
    """name -> (forward callable, leaves), float32 CPU: the kernel forced, what auto runs, SDPA, eager."""
    import fastdiff
    from fastdiff.ops import attention

    g = torch.Generator().manual_seed(0)
    qh, kh, vh = (torch.randn(b, h, n, d, generator=g).requires_grad_(True) for n in (nq, nk, nk))
    qn, kn, vn = (t.transpose(1, 2) for t in (qh, kh, vh))  # diffusers' layout, as the patched models pass it
    scale = 1.0 / math.sqrt(d)

    def forced() -> torch.Tensor:
        with fastdiff.backend("cpu"):
            return attention(qn, kn, vn, scale=scale)

    leaves = (qh, kh, vh)
    return {
        "fastdiff-cpu": (forced, leaves),
        "fastdiff-auto": (lambda: attention(qn, kn, vn, scale=scale), leaves),
        "sdpa": (lambda: F.scaled_dot_product_attention(qh, kh, vh, scale=scale), leaves),
        "eager": (lambda: eager_attention(qh, kh, vh, scale), leaves),
    }


def run_cpu(opts: argparse.Namespace) -> dict[str, Any]:
    from . import _timing

    if opts.threads:
        torch.set_num_threads(opts.threads)
    plan = _timing.TimingPlan(rounds=opts.pairs, warmup=2, min_sample_s=opts.min_sample_ms * 1e-3, clock=opts.clock)
    rows: list[dict[str, Any]] = []
    shapes = CPU_SHAPES[:2] if opts.quick else CPU_SHAPES
    for b, h, nq, nk, d in shapes:
        impls = cpu_implementations(b, h, nq, nk, d)
        for mode in [m for m in opts.modes if m in ("fwd", "fwd+bwd")]:
            # Interleaved, rotated rounds (bench/_timing.py): ratios are per round, the same moment.
            times = _timing.time_cpu({n: timed_callable(f, leaves, mode) for n, (f, leaves) in impls.items()}, plan)
            row: dict[str, Any] = dict(B=b, H=h, Nq=nq, Nk=nk, D=d, mode=mode, dtype="float32",
                                       ms={n: _timing.median(t) * 1e3 for n, t in times.items()})
            for base in ("sdpa", "eager"):
                for impl in ("fastdiff-cpu", "fastdiff-auto"):
                    row[f"{base}/{impl}"] = _timing.speedup_summary(times[base], times[impl])["median"]
            rows.append(row)
            print(f"B={b} H={h} Nq={nq} Nk={nk} D={d} {mode}: "
                  + ", ".join(f"{n} {ms:.3f} ms" for n, ms in row["ms"].items())
                  + f"; sdpa/kernel {row['sdpa/fastdiff-cpu']:.2f}x, sdpa/auto {row['sdpa/fastdiff-auto']:.2f}x", flush=True)
    return dict(meta=_meta(torch.float32, threads=torch.get_num_threads(), clock=opts.clock, rounds=opts.pairs), rows=rows)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def _meta(dtype: torch.dtype, **extra: Any) -> dict[str, Any]:
    import fastdiff

    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine(),
        torch=torch.__version__, cuda=torch.version.cuda, fastdiff=fastdiff.__version__, dtype=str(dtype).replace("torch.", ""),
        command="python -m fastdiff.bench.attention " + " ".join(sys.argv[1:]),
        commit=_git_commit(),
    )
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    meta.update(extra)
    return meta


def _git_commit() -> Optional[str]:
    import subprocess

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _row_line(r: dict[str, Any]) -> str:
    extra = f" {r['gbps']:7.0f} GB/s ({100 * r['floor_fraction']:3.0f}% of floor)" if "gbps" in r else ""
    return f"{r['model']:6s} {r['case']:13s} {r['mode']:7s} {r['impl']:16s} {r['ms']:8.3f} ms {r['tflops']:6.1f} TFLOP/s{extra}"


def markdown(result: dict[str, Any]) -> str:
    """One table per mode: a row per shape, a column per implementation (ms), plus the speedup."""
    rows = result["rows"]
    meta = result["meta"]
    head = [f"# Attention benchmark: {meta['device']}, {meta['dtype']}", "",
            f"torch {meta['torch']}, triton {meta.get('triton', '-')}, commit {meta.get('commit')}, `{meta['command']}`", ""]
    if rows and "impl" not in rows[0]:  # CPU table
        head += [f"{meta.get('threads')} thread(s), {meta.get('clock')} clock, medians of {meta.get('rounds')} interleaved "
                 "rounds; ratios are medians of per-round ratios.", "",
                 "| shape (B, H, Nq, Nk, D) | mode | " + " | ".join(f"{i} ms" for i in CPU_IMPLS)
                 + " | sdpa / fastdiff-cpu | sdpa / fastdiff-auto | eager / fastdiff-auto |", "|---|---|" + "---|" * (len(CPU_IMPLS) + 3)]
        head += [f"| {r['B']}, {r['H']}, {r['Nq']}, {r['Nk']}, {r['D']} | {r['mode']} | "
                 + " | ".join(f"{r['ms'][i]:.3f}" for i in CPU_IMPLS)
                 + f" | {r['sdpa/fastdiff-cpu']:.2f}x | {r['sdpa/fastdiff-auto']:.2f}x | {r['eager/fastdiff-auto']:.2f}x |" for r in rows]
        return "\n".join(head) + "\n"
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    out = head
    for mode in dict.fromkeys(r["mode"] for r in rows):
        out += [f"## {mode}", "", "| model | shape (B, H, Nq, Nk, D) | " + " | ".join(impls) + " | best SDPA / fastdiff | fastdiff TFLOP/s | fastdiff % of memory floor |",
                "|" + "---|" * (len(impls) + 5)]
        keys = dict.fromkeys((r["model"], r["case"]) for r in rows if r["mode"] == mode)
        for key in keys:
            sel = {r["impl"]: r for r in rows if r["mode"] == mode and (r["model"], r["case"]) == key}
            any_r = next(iter(sel.values()))
            cells = [f"{sel[i]['ms']:.3f}" if i in sel and "ms" in sel[i] else "FAILED" if "failed" in sel.get(i, {}) else "n/a"
                     for i in impls]
            fast = [r for n, r in sel.items() if n.startswith("fastdiff") and "ms" in r]
            best_fast = min(fast, key=lambda r: r["ms"]) if fast else None
            sdpa = [r["ms"] for n, r in sel.items() if n.startswith("sdpa") and "ms" in r]
            speed = f"{min(sdpa) / best_fast['ms']:.2f}x" if best_fast and sdpa else "n/a"
            tfl = f"{best_fast['tflops']:.0f}" if best_fast else "n/a"
            floor = f"{100 * best_fast['floor_fraction']:.0f}%" if best_fast and "floor_fraction" in best_fast else "-"
            shape = f"{any_r['B']}, {any_r['H']}, {any_r['Nq']}, {any_r['Nk']}, {any_r['D']}"
            out.append(f"| {key[0]} {key[1]} | {shape} | " + " | ".join(cells) + f" | {speed} | {tfl} | {floor} |")
        out.append("")
    failed = [r for r in rows if "failed" in r]
    if failed:
        out += ["FAILED:", ""] + sorted({f"- {r['impl']} ({r['mode']}, D={r['D']}, Nq={r['Nq']}, Nk={r['Nk']}): {r['failed']}"
                                         for r in failed}) + [""]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        out += ["Not run:", ""] + sorted({f"- {r['impl']} ({r['mode']}, D={r['D']}): {r['skipped']}" for r in skipped}) + [""]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="fastdiff.bench.attention", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sd15,sdxl,dit,pixart", help="comma-separated subset of sd15, sdxl, dit, pixart")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of fwd, bwd, fwd+bwd")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"), help="input dtype (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a few representative shapes only")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--cpu", action="store_true", help="time the C++ CPU kernel against SDPA and eager (float32)")
    ap.add_argument("--pairs", type=int, default=7, help="--cpu: interleaved timing rounds")
    ap.add_argument("--min-sample-ms", type=float, default=20.0, help="--cpu: each timing repeats the call for this long")
    ap.add_argument("--threads", type=int, default=0, help="--cpu: torch threads (default: torch's current setting)")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="--cpu: wall time or this process's CPU time (one thread on a shared machine)")
    ap.add_argument("--out", help="directory for attention.json and attention.md")
    ap.add_argument("--tune", action="store_true", help="GPU: write the forward timings' kernel-or-SDPA choice per "
                    "shape into the dispatch table (fastdiff/ops/attention_dispatch.py)")
    ap.add_argument("--table", help="--tune: the table file to update (default: fastdiff/ops/attention_table.json)")
    opts = ap.parse_args(argv)
    opts.models = [m.strip() for m in opts.models.split(",") if m.strip()]
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    bad = [m for m in opts.models if m not in {s[0] for s in SHAPES}] + [m for m in opts.modes if m not in MODES]
    if bad:
        ap.error(f"unknown model or mode: {', '.join(bad)}")
    if opts.tune and "fwd" not in opts.modes:
        ap.error("--tune chooses by forward time: --modes must include fwd")
    if torch.cuda.is_available() and not opts.cpu:
        result = run_gpu(opts)
        if opts.tune:
            tune(opts, result)
    elif opts.cpu:
        print("fastdiff.bench.attention --cpu: the C++ CPU kernel (forced, and as auto dispatch routes it) against SDPA "
              "and eager attention, float32."
              + (" --tune needs a GPU: the table is unchanged." if opts.tune else ""))
        result = run_cpu(opts)
    else:
        print("fastdiff.bench.attention: no CUDA device. The attention kernels are GPU kernels, so their benchmark needs "
              "a GPU; run with --cpu to time the CPU kernel against SDPA and eager attention instead."
              + (" --tune needs a GPU: the table is unchanged." if opts.tune else ""))
        return 0
    table = markdown(result)
    print(table)
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
        with open(os.path.join(opts.out, "attention.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(opts.out, "attention.md"), "w") as f:
            f.write(table)
    return 1 if any("failed" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
