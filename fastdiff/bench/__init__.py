"""`fastdiff bench`: fastdiff's kernels timed against eager PyTorch and diffusers, results checked first.

    fastdiff bench all --sizes sd15,video --dtype float32,bfloat16 --json out.json --md out.md
    fastdiff bench guidance --quick

Every case checks that each candidate computes the expected result before it is timed; a mismatch
is reported, not timed, and makes the command exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import torch

from . import _timing

BENCHES = {
    "guidance": "classifier-free guidance combine (fastdiff.ops.guidance_combine)",
    "sampler_update": "guided DDIM and DPM-Solver++(2M) steps (fastdiff.ops.sampler_update)",
}
KERNEL_BACKENDS = ("cuda", "triton", "cpu")


#: `fastdiff bench <name> ...` -> fastdiff.bench.<module>.main(argv) for the families with their own options.
FAMILY_BENCHES = {
    "samplers": ("sampler_accuracy", "solver error vs NFE on the analytic Gaussian mixture, beside diffusers"),
    "overhead": ("sampler_overhead", "a whole guided sampling loop with a trivial model, fastdiff vs diffusers"),
    "adaln": ("adaln", "adaLN forward/backward against eager PyTorch and torch.compile"),
    "attention": ("attention", "attention forward/backward against every SDPA backend"),
    "geglu": ("geglu", "GEGLU forward/backward against eager GEGLU and torch.compile"),
    "e2e": ("e2e", "whole diffusers models and sampling loops: eager vs patch/accelerate/generate (images/s, memory)"),
    "group_norm": ("group_norm", "GroupNorm + SiLU forward/backward against eager PyTorch and torch.compile"),
    "digits": ("digits", "the trained digits DiT: classifier accuracy and Fréchet distance per sampler and NFE, beside diffusers"),
}


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sizes", help="comma-separated presets (sd15, sdxl, video, quick, tiny, default), size names "
                        "(sd15-b1, video720-b2, ...) or shapes such as 2x4x64x64 (default: default; with --quick: quick)")
    common.add_argument("--dtype", default="float32", help="comma-separated: float32, float16, bfloat16 (default: float32)")
    common.add_argument("--backends", default="auto", help="comma-separated fastdiff backends to time: cuda, triton, cpu "
                        "(default: every one this device runs natively; the Triton CPU interpreter is never timed)")
    common.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    common.add_argument("--threads", type=int, help="CPU threads for PyTorch and fastdiff (torch.set_num_threads)")
    common.add_argument("--rounds", type=int, help="timing rounds per case (default: 41 on CPU, 5 on GPU; fewer with --quick)")
    common.add_argument("--quick", action="store_true", help="fewer sizes and rounds")
    common.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    common.add_argument("--md", type=Path, metavar="PATH", help="write the markdown report")
    epilog = "Each benchmark lists its options with: fastdiff bench <name> --help."
    parser = argparse.ArgumentParser(prog="fastdiff bench", description=__doc__.split("\n\n")[0], epilog=epilog)
    names = [*BENCHES, "all", *FAMILY_BENCHES]
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(names) + "}")
    for name, text in BENCHES.items():
        sub.add_parser(name, parents=[common], help=text, description=text)
    sub.add_parser("all", parents=[common], help=f"{' and '.join(BENCHES)}", description=f"{' and '.join(BENCHES)}")
    for name, (_, text) in FAMILY_BENCHES.items():  # listed here; main() hands their arguments to their own parsers
        sub.add_parser(name, help=text, add_help=False)
    return parser


def choose_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a missing parent package
        return False


def choose_backends(spec: str, device: torch.device, family: str) -> list[str]:
    """The fastdiff backends to time for `family` on `device`."""
    from .. import _backend

    def why_not(name: str) -> Optional[str]:
        if name == "triton" and device.type == "cpu":
            return "the Triton interpreter on CPU tensors is a correctness tool, not a kernel: it is not timed"
        reason = _backend.device_reason(name, device)
        if reason is None and name == "triton" and not _has_module(f"fastdiff.triton.{family}"):
            reason = f"fastdiff.triton.{family} is not part of this fastdiff"
        return reason

    if spec.strip().lower() == "auto":
        return [n for n in KERNEL_BACKENDS if why_not(n) is None]
    out = []
    for name in (s.strip().lower() for s in spec.split(",") if s.strip()):
        if name not in KERNEL_BACKENDS:
            raise UsageError(f"--backends: unknown backend {name!r}; expected auto or some of {', '.join(KERNEL_BACKENDS)}")
        why = why_not(name)
        if why is not None:
            raise UsageError(f"--backends: {name} cannot run on {device}: {why}")
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError("--backends: no backend given")
    return out


def _plan(args: argparse.Namespace, device: torch.device) -> _timing.TimingPlan:
    if device.type == "cuda":
        plan = _timing.GPU_QUICK if args.quick else _timing.GPU_FULL
    else:
        plan = _timing.QUICK if args.quick else _timing.FULL
    if args.rounds is not None:
        if args.rounds < 1:
            raise UsageError(f"--rounds: expected at least 1, got {args.rounds}")
        plan = _timing.TimingPlan(rounds=args.rounds, warmup=plan.warmup, min_sample_s=plan.min_sample_s)
    return plan


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmarks named in argv (as after `fastdiff bench`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FAMILY_BENCHES:
        # Benchmarks with their own options: fastdiff/bench/<module>.py, each with main(argv).
        module = importlib.import_module(f"fastdiff.bench.{FAMILY_BENCHES[argv[0]][0]}")
        return int(module.main(argv[1:]) or 0)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all", *argv]
    args = build_parser().parse_args(argv)

    import fastdiff  # noqa: F401 - fails early, with its own message, when the extension is missing

    from . import _case, _report, guidance, sampler_update
    from ._sizes import dtype_name, parse_dtypes, parse_sizes

    modules = {"guidance": guidance, "sampler_update": sampler_update}
    names = list(modules) if args.bench == "all" else [args.bench]
    try:
        device = choose_device(args.device)
        sizes = parse_sizes(args.sizes or ("quick" if args.quick else "default"))
        dtypes = parse_dtypes(args.dtype)
        backends = {n: choose_backends(args.backends, device, n) for n in names}
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads: expected at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        plan = _plan(args, device)
    except ValueError as e:
        print(f"fastdiff bench: error: {e}", file=sys.stderr)
        return 2

    host = _report.machine(device)  # before running: the commit measured is the one checked out now
    load = {"before": _loadavg()}
    rows = []
    for name in names:
        if not backends[name]:
            print(f"fastdiff bench: {name}: no fastdiff backend runs natively on {device}; skipped", file=sys.stderr)
            continue
        for case in modules[name].cases(sizes, dtypes, device, backends[name]):
            label = f"{name}{'/' + case.variant if case.variant else ''} {case.size.name} {dtype_name(case.dtype)}"
            print(f"fastdiff bench: {label} ...", file=sys.stderr, flush=True)
            row = _case.run(case, plan)
            if not row["verified"]:
                print(f"fastdiff bench: {label}: verification FAILED: {row['verification']}", file=sys.stderr)
            elif row.get("error"):
                print(f"fastdiff bench: {label}: FAILED: {row['error']}", file=sys.stderr)
            rows.append(row)
            del case  # free this case's tensors before the next is built
    load["after"] = _loadavg()

    results = _report.assemble("fastdiff bench " + shlex.join(argv), host, device, plan, rows, load)
    text = _report.markdown(results)
    print(text)
    if args.json is not None:
        _report.write_json(args.json, results)
    if args.md is not None:
        _report.write_text(args.md, text)
    return 0 if rows and all(r["verified"] and not r.get("error") for r in rows) else 1
