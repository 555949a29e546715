"""Benchmark of the adaln family against eager PyTorch and torch.compile of the same expressions.

    python -m fastdiff.bench.adaln [--device cpu|cuda] [--shapes dit|all] [--save DIR] ...

For each shape, op (adaln_modulate, gated_residual_adaln, gated_residual) and mode (forward,
backward, forward+backward) it times three implementations of the same expression back to back,
round after round: eager PyTorch, torch.compile(fullgraph=True) of the eager code, and the fastdiff
op; it reports median times and the median of the per-round ratios (CPU timings drift between
runs, so only ratios from the same round are compared). Backward is ``torch.autograd.grad`` of a
retained graph, so all three pay the same autograd overhead. On GPU it also reports GB/s from the
bytes each op must move (the DRAM floor). Modulation is per sample (B, D), as in DiT.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.nn import functional as F

from ._case import error_summary

# (name, B, N, D): DiT-XL/2 at 256 and 512 px, PixArt-alpha / SD3 at 1024 px, FLUX at 1024 px.
SHAPES = {
    "dit-xl-256": (2, 256, 1152),
    "dit-xl-512": (2, 1024, 1152),
    "pixart-1024": (2, 4096, 1152),
    "sd3-1024": (2, 4096, 1536),
    "flux-1024": (1, 4096, 3072),
}
SHAPE_SETS = {"dit": ["dit-xl-256", "dit-xl-512"], "all": list(SHAPES)}
OPS = ("adaln_modulate", "gated_residual_adaln", "gated_residual")
MODES = ("forward", "backward", "forward+backward")
EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# The expressions: eager PyTorch (also what torch.compile gets) and fastdiff
# ---------------------------------------------------------------------------------------------
def eager_modulate(x, shift, scale):
    return F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def eager_gated_residual(x, gate, h):
    return x + gate[:, None] * h


def eager_fused(x, gate, h, shift, scale):
    x = x + gate[:, None] * h
    return x, F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def fastdiff_fns():
    from fastdiff.ops import adaln_modulate, gated_residual, gated_residual_adaln

    return {
        "adaln_modulate": lambda x, shift, scale: adaln_modulate(x, shift, scale, eps=EPS),
        "gated_residual": gated_residual,
        "gated_residual_adaln": lambda x, gate, h, shift, scale: gated_residual_adaln(x, gate, h, shift, scale, eps=EPS),
    }


EAGER = {"adaln_modulate": eager_modulate, "gated_residual": eager_gated_residual, "gated_residual_adaln": eager_fused}


def op_inputs(op: str, b: int, n: int, d: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, k=1.0):
        return (torch.randn(*shape, generator=g) * k).to(dtype=dtype, device=device)

    x, h = r(b, n, d), r(b, n, d)
    shift, scale, gate = r(b, d, k=0.5), r(b, d, k=0.5), r(b, d, k=0.5)
    return {"adaln_modulate": [x, shift, scale], "gated_residual": [x, gate, h],
            "gated_residual_adaln": [x, gate, h, shift, scale]}[op]


def bytes_moved(op: str, mode: str, b: int, n: int, d: int, elem: int) -> int:
    """Bytes each op must read and write at least (full (B, N, D) tensors; per-sample vectors and statistics ignored)."""
    full = {  # (forward, backward) tensor passes
        "adaln_modulate": (2, 3),           # x -> out ; g, x -> grad_x
        "gated_residual": (3, 3),           # x, h -> out ; g -> grad_h (grad_x is g), g, h -> grad_gate
        "gated_residual_adaln": (4, 6),     # x, h -> x_out, out ; g_xo, g_out, x_out, h -> grad_x, grad_h
    }[op]
    passes = {"forward": full[0], "backward": full[1], "forward+backward": full[0] + full[1]}[mode]
    return passes * b * n * d * elem


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def make_timer(device: str, clock: str = "wall") -> Callable[[Callable[[], object]], tuple[float, float]]:
    """(median, best) seconds per call: torch.utils.benchmark blocks on CPU, CUDA events (triton's do_bench) on GPU.

    clock (CPU only): "wall" or "cpu", this process's CPU time (see fastdiff.bench._timing.CLOCKS)."""
    if device == "cuda":
        try:
            from triton.testing import do_bench

            def gpu_time(fn):
                median, best = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.0])
                return median * 1e-3, best * 1e-3

            return gpu_time
        except ImportError:
            pass

        def cuda_time(fn):
            for _ in range(5):
                fn()
            times = []
            for _ in range(30):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)
            return statistics.median(times), min(times)

        return cuda_time

    from torch.utils import benchmark

    from ._timing import CLOCKS

    now = CLOCKS[clock]

    def cpu_time(fn):
        m = benchmark.Timer("fn()", globals={"fn": fn}, timer=lambda: now() * 1e-9).blocked_autorange(min_run_time=0.3)
        return m.median, min(m.times)

    return cpu_time


def as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def mode_callable(fn: Callable, inputs: list[torch.Tensor], mode: str) -> Callable[[], object]:
    """A no-argument callable running `mode` of fn on inputs (graph built once for 'backward')."""
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return fn(*inputs)
        return forward
    leaves = [t.detach().requires_grad_() for t in inputs]
    if mode == "backward":
        outs = as_tuple(fn(*leaves))
        grads = [torch.randn_like(o) for o in outs]
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)
    grads = [torch.randn_like(o) for o in as_tuple(fn(*leaves))]

    def both():
        return torch.autograd.grad(as_tuple(fn(*leaves)), leaves, grads)

    return both


@dataclass
class Row:
    shape: str
    b: int
    n: int
    d: int
    op: str
    mode: str
    dtype: str
    times: dict  # implementation -> median seconds
    best: dict  # implementation -> fastest block over all rounds, seconds
    speedup: dict  # implementation -> median of (its time / fastdiff time) per round
    best_speedup: dict  # implementation -> its best time / fastdiff's best time
    gbps: Optional[float]
    errors: dict = field(default_factory=dict)  # implementation -> why it failed (then it has no times)


def bench_one(shape: str, op: str, mode: str, dtype: torch.dtype, device: str, backend: str, rounds: int,
              compile_: bool, timer) -> Row:
    import fastdiff

    b, n, d = SHAPES[shape]
    inputs = op_inputs(op, b, n, d, dtype, device)
    ours = fastdiff_fns()[op]

    def ours_on_backend(*args):
        with fastdiff.backend(backend):
            return ours(*args)

    def compiled_eager():
        torch._dynamo.reset()
        return torch.compile(EAGER[op], fullgraph=True, dynamic=False)

    makers = {"eager": lambda: EAGER[op], "compile": compiled_eager, "fastdiff": lambda: ours_on_backend}
    if not compile_:
        del makers["compile"]
    impls, errors = {}, {}
    for k, make in makers.items():  # build and warm up (and compile); a failure drops that implementation only
        try:
            fn = mode_callable(make(), inputs, mode)
            fn()
            fn()
            impls[k] = fn
        except Exception as e:  # noqa: BLE001 - reported in the row and the table
            errors[k] = error_summary(e)
    per_round = {k: [] for k in impls}
    best = {k: float("inf") for k in impls}
    for _ in range(rounds):
        for k, fn in list(impls.items()):
            try:
                median, fastest = timer(fn)
            except Exception as e:  # noqa: BLE001
                errors[k] = error_summary(e)
                del impls[k], per_round[k], best[k]
                continue
            per_round[k].append(median)
            best[k] = min(best[k], fastest)
    times = {k: statistics.median(v) for k, v in per_round.items()}
    others = [k for k in impls if k != "fastdiff"] if "fastdiff" in impls else []
    speedup = {k: statistics.median(a / f for a, f in zip(per_round[k], per_round["fastdiff"])) for k in others}
    best_speedup = {k: best[k] / best["fastdiff"] for k in others}
    gbps = None
    if device == "cuda" and "fastdiff" in times:
        gbps = bytes_moved(op, mode, b, n, d, inputs[0].element_size()) / times["fastdiff"] / 1e9
    return Row(shape, b, n, d, op, mode, str(dtype).replace("torch.", ""), times, best, speedup, best_speedup, gbps, errors)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str, backend: str, threads: int) -> dict:
    import fastdiff

    env = {
        "date": datetime.date.today().isoformat(),
        "commit": _git_commit(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else _cpu_name(),
        "threads": threads if device == "cpu" else None,
        "backend": backend,
        "torch": torch.__version__,
        "fastdiff": fastdiff.__version__,
        "python": platform.python_version(),
        "command": "python -m fastdiff.bench.adaln " + " ".join(sys.argv[1:]),
    }
    if device == "cpu":
        env["cpu_isa"] = fastdiff._backend.compiled().cpu_isa()
    return env


def markdown(rows: list[Row], env: dict) -> str:
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    lines = [
        f"# adaln benchmark ({env['date']}, commit {env['commit']})",
        "",
        f"Device: {env['device']}" + (f", {env['threads']} threads" if env.get("threads") else "")
        + f"; fastdiff backend `{env['backend']}`; torch {env['torch']}.",
        f"Command: `{env['command']}`",
        "",
        "Times are medians (ms); 'vs X' = median over rounds of (X's time / fastdiff's time), measured back to back "
        "in the same round; 'best' = ratio of the fastest blocks seen over all rounds (least disturbed by other "
        "load on the machine). Modulation per sample (B, D).",
        "",
    ]
    has_compile = any("compile" in r.times or "compile" in r.errors for r in rows)
    has_gbps = any(r.gbps is not None for r in rows)
    head = ["shape (B, N, D)", "op", "mode", "dtype", "eager ms"] + (["compile ms"] if has_compile else []) + [
        "fastdiff ms", "vs eager", "vs eager (best)"] + (["vs compile", "vs compile (best)"] if has_compile else []) + (
        ["fastdiff GB/s"] if has_gbps else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def t(r: Row, k: str) -> str:
        return ms(r.times[k]) if k in r.times else "FAILED" if k in r.errors else "-"

    def x(d: dict, k: str) -> str:
        return f"{d[k]:.2f}x" if k in d else "-"

    for r in rows:
        cells = [f"{r.shape} ({r.b}, {r.n}, {r.d})", r.op, r.mode, r.dtype, t(r, "eager")]
        if has_compile:
            cells.append(t(r, "compile"))
        cells += [t(r, "fastdiff"), x(r.speedup, "eager"), x(r.best_speedup, "eager")]
        if has_compile:
            cells.append(f"{r.speedup['compile']:.2f}x" if "compile" in r.speedup else "-")
            cells.append(f"{r.best_speedup['compile']:.2f}x" if "compile" in r.best_speedup else "-")
        if has_gbps:
            cells.append(f"{r.gbps:.0f}" if r.gbps is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    failures = sorted({f"- {k} ({r.op}, {r.mode}, {r.shape}): {e}" for r in rows for k, e in r.errors.items()})
    if failures:
        lines += ["", "FAILED:", ""] + failures
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastdiff.bench.adaln", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda when available, else cpu)")
    p.add_argument("--backend", default=None, help="fastdiff backend (default: cpu on CPU; cuda if built, else triton)")
    p.add_argument("--shapes", default=None, help="'dit' (default on CPU), 'all' (default on GPU) or names: "
                   + ",".join(SHAPES))
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops to time (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated passes to time (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 (default on GPU), float16")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per implementation (default 7 CPU, 5 GPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write <date>-<commit>-adaln.md and .json into DIR (e.g. benchmarks/results/cpu)")
    return p.parse_args(argv)


def default_backend(device: str) -> str:
    """What automatic selection picks for the adaln ops on `device` (kernel dtypes)."""
    from fastdiff import _backend

    return _backend.family("adaln").select("adaln_modulate", torch.device(device), (torch.float32,))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("fastdiff.bench.adaln: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(args.threads)
    backend = args.backend or default_backend(device)
    shape_arg = args.shapes or ("dit" if device == "cpu" else "all")
    shapes = SHAPE_SETS.get(shape_arg, shape_arg.split(","))
    for s in shapes:
        if s not in SHAPES:
            print(f"fastdiff.bench.adaln: unknown shape {s!r}; known: {', '.join(SHAPES)}", file=sys.stderr)
            return 2
    dtype = getattr(torch, args.dtype or ("float32" if device == "cpu" else "bfloat16"))
    rounds = args.rounds or (7 if device == "cpu" else 5)
    timer = make_timer(device)
    env = environment(device, backend, args.threads)
    rows = []
    for shape in shapes:
        for op in args.ops.split(","):
            for mode in args.modes.split(","):
                row = bench_one(shape, op, mode, dtype, device, backend, rounds, not args.no_compile, timer)
                rows.append(row)
                extra = "".join(f", vs {k} {row.speedup[k]:.2f}x (best {row.best_speedup[k]:.2f}x)" for k in row.speedup)
                extra += "".join(f", {k} FAILED: {e}" for k, e in row.errors.items())
                ours = f"{row.times['fastdiff'] * 1e3:8.3f} ms" if "fastdiff" in row.times else "  FAILED"
                print(f"{shape:12s} {op:22s} {mode:17s} fastdiff {ours}{extra}", flush=True)
    table = markdown(rows, env)
    print()
    print(table)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        stem = os.path.join(args.save, f"{env['date']}-{env['commit']}-adaln")
        with open(stem + ".md", "w") as f:
            f.write(table)
        with open(stem + ".json", "w") as f:
            json.dump({"environment": env, "results": [r.__dict__ for r in rows]}, f, indent=2)
        print(f"saved {stem}.md and {stem}.json")
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
