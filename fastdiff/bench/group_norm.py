"""Benchmark of GroupNorm + SiLU against eager ``F.silu(F.group_norm(...))`` and torch.compile of it.

    python -m fastdiff bench group_norm [--device cpu|cuda] [--shapes vae|unet|all|NAMES] [--save DIR] ...

For each shape and mode (forward, backward) it times eager PyTorch, torch.compile(fullgraph=True) of
the eager code and the fastdiff op back to back, round after round, and reports median times and the
median of the per-round ratios (CPU timings drift between runs; only ratios from one round are
compared). Backward is ``torch.autograd.grad`` of a retained graph for all three. On GPU it also
reports GB/s from the bytes the op must move (forward: read x, write out; backward: read grad_out
and x twice, write grad_x). Timing helpers are shared with the adaln benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Optional

import torch
from torch.nn import functional as F

from .adaln import environment, make_timer, mode_callable

GROUPS, EPS = 32, 1e-5
# (N, C, H, W): SD VAE decoder stages at 512 px output (and 1024 px when named), SD-1.5 U-Net at 512 px, B=2.
SHAPES = {
    "vae-512-c512-64": (1, 512, 64, 64),
    "vae-512-c512-128": (1, 512, 128, 128),
    "vae-512-c256-256": (1, 256, 256, 256),
    "vae-512-c128-512": (1, 128, 512, 512),
    "vae-1024-c128-1024": (1, 128, 1024, 1024),
    "unet-c320-64": (2, 320, 64, 64),
    "unet-c640-32": (2, 640, 32, 32),
    "unet-c1280-16": (2, 1280, 16, 16),
    "unet-c1280-8": (2, 1280, 8, 8),
}
SHAPE_SETS = {
    "vae": [k for k in SHAPES if k.startswith("vae-512")],
    "unet": [k for k in SHAPES if k.startswith("unet")],
}
SHAPE_SETS["all"] = SHAPE_SETS["vae"] + SHAPE_SETS["unet"]
MODES = ("forward", "backward")


def eager(x, w, b):
    return F.silu(F.group_norm(x, GROUPS, w, b, EPS))


def bytes_moved(mode: str, numel: int, elem: int) -> int:
    return (2 if mode == "forward" else 5) * numel * elem


def steady_allocator() -> None:
    """Frees one 24 MiB tensor, so that glibc serves every later CPU tensor under 32 MiB from its heap.

    glibc maps a block above its dynamic threshold afresh on every allocation (each page then faults
    on first write, ~2000 faults per 8 MB output here) and raises that threshold to the largest such
    block freed, up to 32 MiB. Without this, whether a candidate's outputs fault depends on what ran
    before it: eager F.silu(F.group_norm(...)) at (1, 512, 64, 64) measured 1.9 ms or 9 ms in the same
    process. Tensors of 32 MiB and more are mapped afresh whatever this does, for every candidate."""
    big = torch.empty(6 << 20)
    big.fill_(0)
    del big


def bench_one(name, mode, dtype, device, backend, rounds, compile_, timer, channels_last) -> dict:
    import fastdiff
    from fastdiff.ops import group_norm

    shape = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (1 + 0.1 * torch.randn(shape[1], generator=g)).to(dtype=dtype, device=device)
    b = (0.1 * torch.randn(shape[1], generator=g)).to(dtype=dtype, device=device)
    inputs = [x, w, b]

    def ours(x, w, b):
        with fastdiff.backend(backend):
            return group_norm(x, GROUPS, w, b, eps=EPS, activation="silu")

    impls = {"eager": mode_callable(eager, inputs, mode)}
    if compile_:
        torch._dynamo.reset()
        impls["compile"] = mode_callable(torch.compile(eager, fullgraph=True, dynamic=False), inputs, mode)
    impls["fastdiff"] = mode_callable(ours, inputs, mode)
    with torch.no_grad():  # checked before timing
        torch.testing.assert_close(ours(*inputs).float(), eager(*inputs).float(), rtol=2e-2, atol=2e-2)
    for fn in impls.values():
        fn(), fn()
    per_round = {k: [] for k in impls}
    for _ in range(rounds):
        for k, fn in impls.items():
            per_round[k].append(timer(fn)[0])
    times = {k: statistics.median(v) for k, v in per_round.items()}
    speedup = {k: statistics.median(a / f for a, f in zip(per_round[k], per_round["fastdiff"]))
               for k in impls if k != "fastdiff"}
    row = {"shape": name, "size": list(shape), "mode": mode, "dtype": str(dtype).replace("torch.", ""),
           "layout": "channels_last" if channels_last else "contiguous", "times": times, "speedup": speedup}
    if device == "cuda":
        row["gbps"] = bytes_moved(mode, x.numel(), x.element_size()) / times["fastdiff"] / 1e9
    return row


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# group_norm + SiLU benchmark ({env['date']}, commit {env['commit']})", "",
             f"Device: {env['device']}" + (f", {env['threads']} threads" if env.get("threads") else "")
             + f"; fastdiff backend `{env['backend']}`; torch {env['torch']}; G={GROUPS}.",
             f"Command: `{env['command']}`", ""]
    if "load" in env:
        lines += [f"Timer clock: {env['clock']}; load average (1 min): {env['load'][0]:.1f} at the start, "
                  f"{env['load'][1]:.1f} at the end (a shared machine). glibc's mmap threshold raised to 32 MiB "
                  "first (steady_allocator): tensors under 32 MiB are reused from the heap by every candidate.", ""]
    lines += ["Times are medians (ms); 'vs X' = median over rounds of (X's time / fastdiff's time), measured back to "
             "back in the same round. Eager is `F.silu(F.group_norm(x, 32, w, b))`.", ""]
    keys = [k for k in ("eager", "compile") if any(k in r["times"] for r in rows)]
    head = ["shape", "(N, C, H, W)", "layout", "mode", "dtype"] + [f"{k} ms" for k in keys] + ["fastdiff ms"] + [
        f"vs {k}" for k in keys] + (["GB/s"] if any("gbps" in r for r in rows) else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shape"], str(tuple(r["size"])), r["layout"], r["mode"], r["dtype"]]
        cells += [f"{r['times'][k] * 1e3:.2f}" if k in r["times"] else "-" for k in keys]
        cells += [f"{r['times']['fastdiff'] * 1e3:.2f}"]
        cells += [f"{r['speedup'][k]:.2f}x" if k in r["speedup"] else "-" for k in keys]
        if "gbps" in r:
            cells.append(f"{r['gbps']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastdiff bench group_norm", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device to time on (default: cuda when available, else cpu)")
    p.add_argument("--backend", default=None, help="fastdiff backend (default: cpu on CPU, cuda on GPU)")
    p.add_argument("--shapes", default=None, help="vae, unet, all (default) or names: " + ",".join(SHAPES))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated passes to time (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), float16 (default on GPU), bfloat16")
    p.add_argument("--channels-last", action="store_true", help="time channels-last inputs")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7 CPU, 5 GPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="CPU timer: wall time or this process's CPU time (steadier on a shared machine; with one "
                        "thread, as idle OpenMP workers spin)")
    p.add_argument("--save", default=None, metavar="DIR", help="write <date>-<commit>-group_norm.md/.json into DIR")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastdiff bench group_norm: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    backend = args.backend or ("cpu" if args.device == "cpu" else "cuda")
    names = SHAPE_SETS.get(args.shapes or "all", (args.shapes or "").split(","))
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        print(f"fastdiff bench group_norm: unknown shapes {unknown}; known: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "float16"))
    rounds = args.rounds or (7 if args.device == "cpu" else 5)
    timer = make_timer(args.device, args.clock)
    env = environment(args.device, backend, args.threads)
    env["command"] = "python -m fastdiff bench group_norm " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.device == "cpu":
        env["clock"], env["load"] = args.clock, [os.getloadavg()[0]]
        steady_allocator()
    rows = []
    for name in names:
        for mode in args.modes.split(","):
            row = bench_one(name, mode, dtype, args.device, backend, rounds, not args.no_compile, timer,
                            args.channels_last)
            rows.append(row)
            extra = "".join(f", vs {k} {v:.2f}x" for k, v in row["speedup"].items())
            print(f"{name:20s} {mode:9s} fastdiff {row['times']['fastdiff'] * 1e3:8.2f} ms{extra}", flush=True)
    if "load" in env:
        env["load"].append(os.getloadavg()[0])
    table = markdown(rows, env)
    print()
    print(table)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        stem = os.path.join(args.save, f"{env['date']}-{env['commit']}-group_norm" + ("-cl" if args.channels_last else ""))
        with open(stem + ".md", "w") as f:
            f.write(table)
        with open(stem + ".json", "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
        print(f"saved {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
