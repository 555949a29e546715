"""The `fastdiff` command line: ``fastdiff demo | sample | info | bench``, and ``fastdiff --version``.

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


def _digit(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= 9:
        raise argparse.ArgumentTypeError(f"expected a digit 0 to 9, got {text!r}")
    return v


def _digits_kinds() -> tuple[str, ...]:
    from .models.digits import KINDS

    return KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdiff", description="Fused CUDA, Triton and CPU kernels for diffusion models.")
    parser.add_argument("--version", action="version", version=f"fastdiff {fastdiff.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,sample,info,bench}")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="sample a 10x10 grid of handwritten digits with the built-in DiT, write a PNG, print timings",
        description="Sample ten of each digit 0-9 from the trained class-conditional DiT shipped with fastdiff "
        "(fastdiff.models.digits_dit) through fastdiff.sample, classifier-free guidance fused into each update, and write "
        "them as a 10x10 grid (each column one digit). With --mixture: the analytic 2-D Gaussian-mixture demo instead "
        "(DDIM and DPM-Solver++(2M) against an exact model, with sliced-Wasserstein distances).",
    )
    demo.add_argument("--out", default="fastdiff-demo.png", help="PNG to write (default: %(default)s)")
    demo.add_argument("--steps", type=_positive_int, default=20, help="sampling steps, 1 to 1000 (default: %(default)s)")
    demo.add_argument("--guidance", type=_finite_float, default=None,
                      help="classifier-free guidance scale (default: the model's own; with --mixture 1, which samples "
                      "p(x | class 0) exactly, larger sharpening it as CFG does)")
    demo.add_argument("--sampler", default="dpmpp_2m", help="digits: a fastdiff.sample sampler (default: %(default)s)")
    demo.add_argument("--kind", choices=_digits_kinds(), default="ddpm",
                      help="digits: the checkpoint, noise prediction (ddpm) or flow matching (flow) (default: %(default)s)")
    demo.add_argument("--mixture", action="store_true", help="run the analytic 2-D Gaussian-mixture demo instead")
    demo.add_argument("--samples", type=_positive_int, default=None, help="--mixture: samples per sampler, at least 2 (default: 4000)")
    demo.add_argument("--backend", choices=("auto",) + _backend.BACKENDS, default="auto", help="fastdiff backend for the ops (default: %(default)s)")
    demo.add_argument("--device", default=None, help="torch device (default: cpu for the digits, which are too small to "
                      "gain from a GPU; --mixture: cuda when available, else cpu)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(subparser=demo)

    sample = sub.add_parser(
        "sample",
        help="sample digits of one class from the built-in DiT into a PNG",
        description="Sample handwritten digits from the trained DiT (fastdiff.models.sample_digits) and write them as "
        "a grid, nearest-neighbour upscaled.",
    )
    sample.add_argument("--class", dest="digit", type=_digit, default=None,
                        help="the digit to draw, 0 to 9 (default: 0-9 in turn)")
    sample.add_argument("--sampler", default="dpmpp_2m", help="a fastdiff.sample sampler that fits the checkpoint "
                        "(ddpm: ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, dpmpp_3m_sde, "
                        "unipc; flow: flow_euler and the DPM-Solver++ and UniPC ones) (default: %(default)s)")
    sample.add_argument("--steps", type=_positive_int, default=20, help="sampling steps, 1 to 1000 (default: %(default)s)")
    sample.add_argument("--guidance", type=_finite_float, default=None, help="classifier-free guidance scale; 1 turns it "
                        "off (default: the model's own)")
    sample.add_argument("--n", type=_positive_int, default=16, help="how many images (default: %(default)s)")
    sample.add_argument("--kind", choices=_digits_kinds(), default="ddpm",
                        help="the checkpoint: noise prediction (ddpm) or flow matching (flow) (default: %(default)s)")
    sample.add_argument("--out", default="fastdiff-sample.png", help="PNG to write (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sample.add_argument("--device", default=None, help="torch device (default: cpu)")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")
    sample.set_defaults(subparser=sample)

    info = sub.add_parser("info", help="versions, devices and which backends serve here", description="Print fastdiff.info().")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(subparser=info)

    # Listed for --help only: main() forwards `bench ...` before argparse sees it.
    sub.add_parser("bench", help="run the benchmarks: kernels, samplers, the digits model (`fastdiff bench --help` lists them)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "bench":
        return _bench(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "demo":
        return _demo(args.subparser, args)
    if args.command == "sample":
        return _sample(args.subparser, args)
    if args.command == "info":
        return _info(args)
    raise AssertionError(args.command)


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
def _common_checks(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[torch.device]:
    """Validate --out, --device and --backend (shared by demo and sample); returns the device or None."""
    if args.steps > 1000:
        parser.error(f"argument --steps: expected at most 1000 (the models' schedules have 1000 timesteps), got {args.steps}")
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
    if getattr(args, "backend", "auto") == "triton" and not torch.cuda.is_available() and (device is None or device.type == "cpu"):
        # Triton runs CPU tensors only through its interpreter; it reads this before its first kernel.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return device


def _check_sampler(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .models import digits

    fits = digits.fitting_samplers(args.kind)
    if args.sampler not in fits:
        other = [k for k in digits.KINDS if k != args.kind and args.sampler in digits.fitting_samplers(k)]
        hint = f" ({args.sampler} fits --kind {other[0]})" if other else ""
        parser.error(f"argument --sampler: expected one of {', '.join(fits)} for the {args.kind} checkpoint{hint}, "
                     f"got {args.sampler!r}")


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    device = _common_checks(parser, args)
    if not args.mixture:
        if args.samples is not None:
            parser.error("argument --samples: applies to --mixture only (the digits demo draws a 10x10 grid)")
        _check_sampler(parser, args)
        return _digits_demo(parser, args, device)
    from . import demo

    args.samples = 4000 if args.samples is None else args.samples
    if args.samples < 2:
        parser.error(f"argument --samples: expected at least 2, got {args.samples}")
    guidance = 1.0 if args.guidance is None else args.guidance
    try:
        result = demo.run_demo(steps=args.steps, samples=args.samples, guidance=guidance, backend=args.backend,
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


def _one_cpu_thread(device: torch.device):
    from .demo import _one_cpu_thread as one  # the digits' batches are as small as the mixture's: same reasoning

    return one(device)


def _backend_scope(name: str):
    import contextlib

    return contextlib.nullcontext() if name == "auto" else fastdiff.backend(name)


def _digits_demo(parser: argparse.ArgumentParser, args: argparse.Namespace, device: Optional[torch.device]) -> int:
    import time

    from .models import digits

    t0 = time.perf_counter()
    model = digits.digits_dit(args.kind)
    meta = digits.checkpoint_metadata(args.kind)
    t_load = time.perf_counter() - t0
    guidance = meta["guidance_scale"] if args.guidance is None else args.guidance
    labels = torch.arange(100) % 10  # row after row of 0..9: each column one digit
    dev = device or torch.device("cpu")
    t0 = time.perf_counter()
    try:
        with _backend_scope(args.backend), _one_cpu_thread(dev):
            images = digits.sample_digits(labels, kind=args.kind, sampler=args.sampler, steps=args.steps,
                                          guidance_scale=guidance, generator=torch.Generator().manual_seed(args.seed),
                                          device=dev)
    except _backend.BackendUnavailable as e:
        parser.error(f"argument --backend: {e}")
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    digits.image_grid(images, columns=10).save(args.out)
    t_write = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fastdiff {fastdiff.__version__} demo: a class-conditional DiT ({args.kind}, {n_params:,} parameters, "
          f"{meta['model']['depth']} adaLN-Zero blocks) trained on scikit-learn's 8x8 handwritten digits")
    print(f"  load the checkpoint (safetensors, hash checked)  {1e3 * t_load:8.0f} ms")
    print(f"  sample 100 digits, 10 of each: {args.sampler}, {args.steps} steps, guidance {guidance:g} fused into each "
          f"update, on {dev}, backend {args.backend}  {1e3 * t_sample:8.0f} ms ({1e3 * t_sample / args.steps:.0f} ms/step)")
    print(f"  write {args.out} (10x10 grid, each column one digit, 8x nearest-neighbour upscale)  {1e3 * t_write:8.0f} ms")
    print("the analytic Gaussian-mixture demo: fastdiff demo --mixture; more digits: fastdiff sample --class 7")
    return 0


def _sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import time

    from .models import digits

    device = _common_checks(parser, args)
    _check_sampler(parser, args)
    labels = torch.full((args.n,), args.digit) if args.digit is not None else torch.arange(args.n) % 10
    t0 = time.perf_counter()
    with _one_cpu_thread(device or torch.device("cpu")):
        images = digits.sample_digits(labels, kind=args.kind, sampler=args.sampler, steps=args.steps,
                                      guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed),
                                      device=device, progress=None if not args.no_progress else False)
    seconds = time.perf_counter() - t0
    columns = min(args.n, 10 if args.digit is None else 8)
    digits.image_grid(images, columns=columns).save(args.out)
    guidance = digits.default_guidance(args.kind) if args.guidance is None else args.guidance
    what = f"digit {args.digit}" if args.digit is not None else "digits 0-9 in turn"
    print(f"sampled {args.n} images ({what}) with {args.sampler}, {args.steps} steps, guidance {guidance:g}, "
          f"{args.kind} checkpoint in {seconds:.2f} s; wrote {args.out}")
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
