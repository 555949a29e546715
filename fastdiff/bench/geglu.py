"""Benchmark of fastdiff.ops.geglu against eager GEGLU and torch.compile of it, forward and backward.

    python -m fastdiff bench geglu [--device cpu|cuda] [--shapes sd15|all|NAME,...] [--dtype float32]
        [--approximate none|tanh] [--modes forward,backward] [--quick] [--save DIR]

Shapes are the GEGLU inputs of SD-1.5's U-Net transformer feed-forwards under classifier-free
guidance (batch 2): x is (2 * tokens, 2 * inner) with inner = 4 * channels, e.g. sd15-64 is the
64x64 latent's 4096 tokens at 320 channels. Eager is diffusers' expression ``a * F.gelu(gate)``
after ``chunk(2, -1)``; compile is ``torch.compile(fullgraph=True)`` of it. Each case is checked
against the float64 reference before it is timed. Backward is ``torch.autograd.grad`` through a
retained graph (the same autograd overhead for all). Timing and statistics: fastdiff/bench/_timing.py
(CPU: paired rounds, median of per-round ratios).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn import functional as F

from . import _report, _timing

# name -> (rows = 2 * tokens, channels); x is (rows, 2 * 4 * channels)
SHAPES = {
    "sd15-64": (2 * 4096, 320),
    "sd15-32": (2 * 1024, 640),
    "sd15-16": (2 * 256, 1280),
    "sd15-8": (2 * 64, 1280),
    "wide-64": (2 * 4096, 1280),  # 4096 tokens at SD-1.5's widest inner dim (x is 335 MB in float32)
}
SHAPE_SETS = {"sd15": ["sd15-64", "sd15-32", "sd15-16", "sd15-8"], "all": list(SHAPES), "quick": ["sd15-32", "sd15-8"]}
MODES = ("forward", "backward")


def eager_geglu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    a, gate = x.chunk(2, dim=-1)
    return a * F.gelu(gate, approximate=approximate)


def _mode_callable(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor, mode: str):
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return fn(x)
        return forward
    leaf = x.detach().requires_grad_()
    out = fn(leaf)
    return lambda: torch.autograd.grad(out, leaf, grad, retain_graph=True)


def _verify(ours: Callable, x: torch.Tensor, approximate: str) -> Optional[str]:
    """None when fastdiff's output on the first rows matches the float64 reference, else why not."""
    from fastdiff.ops import geglu_reference

    rows = x[:64]
    got = ours(rows).double()
    want = geglu_reference(rows.double(), approximate=approximate)
    tol = 1e-5 if x.dtype == torch.float32 else 2 ** -7
    err = ((got - want).abs() / (want.abs() + tol)).max().item() if want.numel() else 0.0
    return None if err <= tol else f"max relative error {err:.3g} > {tol:.3g}"


def bench_case(name: str, dtype: torch.dtype, mode: str, approximate: str, device: torch.device, backend: str,
               plan: _timing.TimingPlan, compile_: bool) -> dict:
    import fastdiff
    from fastdiff.ops import geglu

    rows, channels = SHAPES[name]
    inner = 4 * channels
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(rows, 2 * inner, generator=g) * 2).to(dtype=dtype, device=device)
    grad = torch.randn(rows, inner, generator=g).to(dtype=dtype, device=device)

    def ours(t):
        with fastdiff.backend(backend):
            return geglu(t, approximate=approximate)

    row = {"bench": "geglu", "variant": f"{mode} ({approximate})", "case": name, "dtype": str(dtype).replace("torch.", ""),
           "device": str(device), "shape": [rows, 2 * inner], "elements": rows * inner}
    why = _verify(ours, x, approximate)
    row["verified"] = why is None
    if why is not None:
        row["error"] = why
        return row
    fns = {"eager": _mode_callable(lambda t: eager_geglu(t, approximate), x, grad, mode)}
    if compile_:
        torch._dynamo.reset()
        compiled = torch.compile(lambda t: eager_geglu(t, approximate), fullgraph=True, dynamic=False)
        fns["compile"] = _mode_callable(compiled, x, grad, mode)
    fns["fastdiff"] = _mode_callable(ours, x, grad, mode)
    times = _timing.time_candidates(fns, device, plan)
    # bytes each must move at least: forward reads x, writes out; backward reads x and grad, writes grad_x
    nbytes = x.element_size() * rows * inner * (3 if mode == "forward" else 5)
    row["times"] = {k: _timing.time_summary(v, nbytes) for k, v in times.items()}
    row["speedups"] = {"fastdiff": {k: _timing.speedup_summary(times[k], times["fastdiff"]) for k in fns if k != "fastdiff"}}
    return row


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# geglu benchmark ({doc['date']}, commit {m['commit']})", "",
        f"Device: {m['gpu'] or m['cpu']}" + ("" if m["gpu"] else f", {m['threads']} threads, {m['cpu_isa']} kernels")
        + f"; torch {m['torch']}. Load average at start: {doc['load_average']}.",
        f"Command: `{doc['command']}`", "", doc["method"]["text"], "",
        "| case | x shape | mode | dtype | eager ms | compile ms | fastdiff ms | vs eager (p25-p75) | vs compile (p25-p75) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if not r["verified"]:
            lines.append(f"| {r['case']} | {r['shape']} | {r['variant']} | {r['dtype']} | MISMATCH: {r['error']} | | | | |")
            continue
        t, s = r["times"], r["speedups"]["fastdiff"]
        ms = lambda k: f"{t[k]['median_us'] / 1e3:.2f}" if k in t else "-"  # noqa: E731
        vs = lambda k: f"{s[k]['median']:.2f}x ({s[k]['p25']:.2f}-{s[k]['p75']:.2f})" if k in s else "-"  # noqa: E731
        lines.append(f"| {r['case']} | {tuple(r['shape'])} | {r['variant']} | {r['dtype']} | {ms('eager')} | "
                     f"{ms('compile')} | {ms('fastdiff')} | {vs('eager')} | {vs('compile')} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastdiff bench geglu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device to time on (default: cuda when available, else cpu)")
    p.add_argument("--backend", help="fastdiff backend (default: cpu on CPU, cuda on GPU)")
    p.add_argument("--shapes", default=None, help="sd15 (default), all, quick, or names: " + ",".join(SHAPES))
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 (default on GPU), float16")
    p.add_argument("--approximate", default="none", choices=("none", "tanh"), help="GELU form: exact (none) or tanh")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated passes to time (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 15 on CPU, 5 on GPU; 5 / 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="the quick shapes and fewer rounds")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--save", type=Path, metavar="DIR", help="write <date>-<commit>-geglu.md/.json into DIR")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fastdiff bench geglu: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = args.backend or ("cpu" if device.type == "cpu" else "cuda")
    shapes = SHAPE_SETS.get(args.shapes or ("quick" if args.quick else "sd15"), (args.shapes or "").split(","))
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        print(f"fastdiff bench geglu: unknown shapes {unknown}; known: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    base = (_timing.QUICK if args.quick else _timing.FULL) if device.type == "cpu" else (
        _timing.GPU_QUICK if args.quick else _timing.GPU_FULL)
    rounds = args.rounds or (base.rounds if device.type == "cuda" else (5 if args.quick else 15))
    plan = _timing.TimingPlan(rounds=rounds, warmup=base.warmup, min_sample_s=base.min_sample_s)
    host = _report.machine(device)
    load = dict(zip(("1min", "5min", "15min"), os.getloadavg()))
    rows = []
    for name in shapes:
        for mode in args.modes.split(","):
            row = bench_case(name, dtype, mode, args.approximate, device, backend, plan, not args.no_compile)
            rows.append(row)
            if row["verified"]:
                s = row["speedups"]["fastdiff"]
                print(f"{name:8s} {mode:8s} fastdiff {row['times']['fastdiff']['median_us'] / 1e3:8.2f} ms, "
                      + ", ".join(f"vs {k} {v['median']:.2f}x" for k, v in s.items()), flush=True)
            else:
                print(f"{name:8s} {mode:8s} MISMATCH: {row['error']}", flush=True)
    command = "python -m fastdiff bench geglu " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = _report.assemble(command, host, device, plan, rows, load)
    text = markdown(doc)
    print()
    print(text)
    if args.save:
        stem = args.save / f"{doc['date'][:10]}-{host['commit'] or 'unknown'}-geglu"
        _report.write_json(stem.with_suffix(".json"), doc)
        _report.write_text(stem.with_suffix(".md"), text)
        print(f"saved {stem}.md and {stem}.json")
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
