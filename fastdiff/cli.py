"""The `fastdiff` command line: ``fastdiff demo | info | bench``, and ``fastdiff --version``.

``main(argv)`` returns the exit status (the console script passes it to sys.exit); argparse exits
with status 2 and a usage message on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Optional, Sequence

import torch

import fastdiff

from . import _backend


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdiff", description="Fused CUDA, Triton and CPU kernels for diffusion models.")
    parser.add_argument("--version", action="version", version=f"fastdiff {fastdiff.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,info,bench}")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="sample a 2-D Gaussian mixture with DDIM and DPM-Solver++(2M), write a PNG, print timings",
        description="Sample class 0 of an exact 8-component ring mixture with DDIM and DPM-Solver++(2M) through "
        "fastdiff.ops.sampler_update, classifier-free guidance folded into each update. Writes a PNG (true "
        "density and each sampler's samples) and prints a table of timings and sliced-Wasserstein distances.",
    )
    demo.add_argument("--out", default="fastdiff-demo.png", help="PNG to write (default: %(default)s)")
    demo.add_argument("--steps", type=_positive_int, default=20, help="sampling steps, 1 to 1000 (default: %(default)s)")
    demo.add_argument("--samples", type=_positive_int, default=4000, help="samples per sampler, at least 2 (default: %(default)s)")
    demo.add_argument(
        "--guidance", type=_finite_float, default=1.0,
        help="classifier-free guidance scale; 1 samples p(x | class 0) exactly, larger sharpens it as CFG does (default: %(default)s)",
    )
    demo.add_argument("--backend", choices=("auto",) + _backend.BACKENDS, default="auto", help="backend for sampler_update (default: %(default)s)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(subparser=demo)

    info = sub.add_parser("info", help="versions, devices and which backends serve here", description="Print fastdiff.info().")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(subparser=info)

    # Listed for --help only: main() forwards `bench ...` before argparse sees it.
    sub.add_parser("bench", help="run the kernel benchmarks (fastdiff.bench; `fastdiff bench --help` for options)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "bench":
        return _bench(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "demo":
        return _demo(args.subparser, args)
    if args.command == "info":
        return _info(args)
    raise AssertionError(args.command)


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import demo

    if args.samples < 2:
        parser.error(f"argument --samples: expected at least 2, got {args.samples}")
    if args.steps > demo.NUM_TRAIN_TIMESTEPS:
        parser.error(f"argument --steps: expected at most {demo.NUM_TRAIN_TIMESTEPS} (the schedule has {demo.NUM_TRAIN_TIMESTEPS} timesteps), got {args.steps}")
    if not args.out.lower().endswith(".png"):
        parser.error(f"argument --out: expected a path ending in .png, got {args.out!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"argument --out: directory {out_dir!r} does not exist")
    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as e:
        parser.error(f"argument --device: {e}")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available here")
    if args.backend == "triton" and not torch.cuda.is_available() and (device is None or device.type == "cpu"):
        # Triton runs CPU tensors only through its interpreter; it reads this before its first kernel.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        result = demo.run_demo(steps=args.steps, samples=args.samples, guidance=args.guidance, backend=args.backend,
                               seed=args.seed, device=str(device) if device is not None else None)
    except _backend.BackendUnavailable as e:
        parser.error(f"argument --backend: {e}")
    except ImportError as e:  # a backend whose kernels module is missing from this installation
        parser.error(f"argument --backend: the {args.backend} backend could not load its kernels: {e}")
    demo.render(result).save(args.out)
    print(f"fastdiff {fastdiff.__version__} demo: 2-D ring mixture, class 0 of 2, guidance {result.guidance:g}, "
          f"{result.samples} samples on {result.device}, backend {result.backend}")
    print(demo.format_table(result))
    print("wall: the whole loop (exact mixture model + fused update); update: fastdiff.ops.sampler_update alone, "
          "replayed on a fixed model output. SW1: sliced 1-Wasserstein distance to as many exact samples.")
    print(f"wrote {args.out}")
    return 0


def _format_info(d: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    width = max((len(k) for k in d), default=0)
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.extend(_format_info(v, indent + "  "))
        elif isinstance(v, (list, tuple)):
            lines.append(f"{indent}{k.ljust(width)}  {', '.join(map(str, v)) if v else 'none'}")
        else:
            lines.append(f"{indent}{k.ljust(width)}  {'none' if v is None else v}")
    return lines


def _info(args: argparse.Namespace) -> int:
    data = fastdiff.info()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(_format_info(data)))
    return 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("fastdiff.bench")
    except ModuleNotFoundError as e:
        if e.name in ("fastdiff.bench",):
            print("fastdiff bench: the benchmark module fastdiff.bench is not part of this installation", file=sys.stderr)
        else:
            print(f"fastdiff bench: a dependency is missing ({e}); install the extra: pip install 'fastdiff[bench]'", file=sys.stderr)
        return 2
    status = bench.main(argv)
    return int(status) if status is not None else 0
