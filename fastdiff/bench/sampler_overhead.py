"""Sampling-loop overhead outside the model: diffusers' scheduler loop vs fastdiff's.

The model is free (``--model free``: it returns a precomputed output; ``touch``: it also reads its input and
writes a fresh output, three passes over the doubled batch), so each loop's time is its scheduler work:
diffusers' step (several elementwise passes plus Python), fastdiff.schedulers' drop-in step (one
fused sampler_update launch) and fastdiff.sample's loop (the same launch, no input scaling, with
classifier-free guidance fused). Every loop's set-up is timed with it (set_timesteps; fastdiff.sample's
plan, found in its cache on a repeated call). Reported per step, median over interleaved repeats, with the
median of per-pair ratios (timings on shared machines drift; pairs cancel the drift).

    python benchmarks/bench_sampler_overhead.py --out benchmarks/results/cpu
    python benchmarks/bench_sampler_overhead.py --device cuda --out benchmarks/results/h100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor


import fastdiff  # noqa: E402
from fastdiff.samplers import make_sampler  # noqa: E402
from fastdiff.samplers.graph import CudaGraphRecorder, GraphedSteps  # noqa: E402
from fastdiff.bench._timing import CLOCKS  # noqa: E402

SAMPLERS = {"dpmpp_2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler", "euler": "EulerDiscreteScheduler",
            "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
            "lms": "LMSDiscreteScheduler", "edm_euler": "EDMEulerScheduler",
            "ddim_inversion": "DDIMInverseScheduler", "ipndm": "IPNDMScheduler",
            "sa_solver": "SASolverScheduler",
            "dpmpp_2m_inversion": "DPMSolverMultistepInverseScheduler", "edm_dpmpp_2m": "EDMDPMSolverMultistepScheduler",
            "deis": "DEISMultistepScheduler", "dpmpp_2s": "DPMSolverSinglestepScheduler", "dpmpp_3s": "DPMSolverSinglestepScheduler",
            "dpm2": "KDPM2DiscreteScheduler", "dpm2_ancestral": "KDPM2AncestralDiscreteScheduler", "tcd": "TCDScheduler",
            "dpmpp_sde": "DPMSolverSDEScheduler",
            "ddpm": "DDPMScheduler", "euler_ancestral": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
            "lcm": "LCMScheduler", "flow_euler": "FlowMatchEulerDiscreteScheduler"}
#: what a plain run measures (--samplers picks others from SAMPLERS)
DEFAULT_SAMPLERS = "dpmpp_2m,unipc,euler,ddim"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MODELS = {
    "free": lambda out: (lambda x, t: out),
    "touch": lambda out: (lambda x, t: torch.cat([x]).mul_(0).add_(out)),
}


def scheduler_loop(sched, x0, model, guidance: float, steps: int, device, combine: bool = False, clock: str = "wall") -> float:
    """A pipeline's denoising loop, set_timesteps included; ``combine``: guidance by
    fastdiff.ops.guidance_combine (one fused pass) instead of ``u + s (c - u)``. Seconds on ``clock``
    (fastdiff.bench._timing.CLOCKS)."""
    now = CLOCKS[clock]
    _sync(device)
    t0 = now()
    sched.set_timesteps(steps, device=device)
    x = x0 * float(getattr(sched, "init_noise_sigma", 1.0))
    scale = getattr(sched, "scale_model_input", None)  # flow matching has none
    for t in sched.timesteps:
        xi = scale(x, t) if scale is not None else x
        out = model(torch.cat([xi, xi]), t)  # a pipeline's doubled batch for classifier-free guidance
        if combine:
            guided = fastdiff.ops.guidance_combine(out, guidance)
        else:
            u, c = out.chunk(2)
            guided = u + guidance * (c - u)
        x = sched.step(guided, t, x).prev_sample
    _sync(device)
    return (now() - t0) * 1e-9


def fused_loop(name: str, x0, model, guidance: float, steps: int, device, clock: str = "wall") -> float:
    """The public call, set-up included (as set_timesteps is in the scheduler loops): a repeated
    call finds its plan in the cache, as a pipeline generating image after image does."""
    now = CLOCKS[clock]
    _sync(device)
    t0 = now()
    fastdiff.sample(model, x0, sampler=name, steps=steps, guidance_scale=guidance, progress=False)
    _sync(device)
    return (now() - t0) * 1e-9


def make_graphed(plan, model, x: Tensor, guidance: float):
    """fastdiff.sample(cuda_graph=True)'s captured step, captured once here so the loop times replays only;
    None off CUDA (no graphs to replay)."""
    if x.device.type != "cuda" or plan.noise is not None:  # host-side noise (dpmpp_sde) cannot be replayed
        return None
    return GraphedSteps(plan, model, x, guidance, 0.0, None, None, CudaGraphRecorder(x.device, None))


def graphed_loop(graphed, plan, x0, device) -> float:
    graphed.reset(x0 * plan.init_scale)
    _sync(device)
    t0 = time.perf_counter()
    for j in range(len(plan)):
        graphed.replay(plan.draws[j])
    _sync(device)
    return time.perf_counter() - t0


def bench(shape, device, steps: int, repeats: int, model_kind: str = "free", names: str = DEFAULT_SAMPLERS,
          clock: str = "wall") -> list[dict]:
    import diffusers

    warnings.filterwarnings("ignore")
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(shape, generator=gen, device=device)
    model = MODELS[model_kind](torch.randn((2 * shape[0], *shape[1:]), generator=gen, device=device))
    rows = []
    for name in names.split(","):
        cls = SAMPLERS[name]
        sampler = make_sampler(name)
        ref = getattr(diffusers, cls).from_config(sampler.config)
        ours = getattr(fastdiff.schedulers, cls).from_config(sampler.config)
        plan = sampler.plan(steps, device)
        graphed = make_graphed(plan, model, x0 * plan.init_scale, 7.5)
        loops = {"diffusers": lambda: scheduler_loop(ref, x0, model, 7.5, steps, device, clock=clock),
                 "fastdiff.schedulers": lambda: scheduler_loop(ours, x0, model, 7.5, steps, device, clock=clock),
                 "fastdiff.schedulers+combine": lambda: scheduler_loop(ours, x0, model, 7.5, steps, device, combine=True, clock=clock),
                 "fastdiff.sample": lambda: fused_loop(name, x0, model, 7.5, steps, device, clock=clock)}
        if graphed is not None:
            loops["fastdiff.sample+graph"] = lambda: graphed_loop(graphed, plan, x0, device)
        runs = {k: [] for k in loops}
        for _ in range(2):  # warm-up
            for fn in loops.values():
                fn()
        for _ in range(repeats):  # interleaved, so drift hits every candidate alike
            for k, fn in loops.items():
                runs[k].append(fn() / steps)
        d = runs["diffusers"]
        row = {"sampler": name, "shape": list(shape), "device": str(device), "steps": steps, "model": model_kind, "clock": clock}
        for k, v in runs.items():
            row[f"{k}_us_per_step"] = statistics.median(v) * 1e6
            if k != "diffusers":
                row[f"{k}_speedup"] = statistics.median(a / b for a, b in zip(d, v))
        rows.append(row)
        print(f"{name:9s} {tuple(shape)}  diffusers {row['diffusers_us_per_step']:8.0f} us/step   "
              f"fastdiff.schedulers {row['fastdiff.schedulers_us_per_step']:8.0f} ({row['fastdiff.schedulers_speedup']:.2f}x)   "
              f"+combine {row['fastdiff.schedulers+combine_us_per_step']:8.0f} ({row['fastdiff.schedulers+combine_speedup']:.2f}x)   "
              f"fastdiff.sample {row['fastdiff.sample_us_per_step']:8.0f} ({row['fastdiff.sample_speedup']:.2f}x)"
              + (f"   +graph {row['fastdiff.sample+graph_us_per_step']:8.0f} ({row['fastdiff.sample+graph_speedup']:.2f}x)"
                 if "fastdiff.sample+graph_us_per_step" in row else ""), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["Per-step time of a whole guided loop (cfg 7.5) around a trivial model, median; speed-up = median of per-pair "
             "ratios vs diffusers.", "",
             "| sampler | shape | steps | model | diffusers (us) | fastdiff.schedulers (us, x) "
             "| fastdiff.schedulers + guidance_combine (us, x) | fastdiff.sample (us, x) "
             "| fastdiff.sample, CUDA graph replay (us, x) |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(r, k):
        return f"{r[k + '_us_per_step']:.0f} ({r[k + '_speedup']:.2f}x)" if k + "_us_per_step" in r else "-"

    for r in rows:
        lines.append(f"| {r['sampler']} | {tuple(r['shape'])} | {r['steps']} | {r['model']} | {r['diffusers_us_per_step']:.0f} | "
                     + " | ".join(cell(r, k) for k in ("fastdiff.schedulers", "fastdiff.schedulers+combine", "fastdiff.sample", "fastdiff.sample+graph")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="fastdiff bench overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps per loop (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=9, help="timed loops per implementation; the median is reported (default: %(default)s)")
    ap.add_argument("--shapes", default="1x4x64x64,4x4x64x64,2x4x128x128", help="comma-separated latent shapes BxCxHxW (default: %(default)s)")
    ap.add_argument("--model", choices=sorted(MODELS), default="free", help="the trivial model (see the module docstring)")
    ap.add_argument("--out", type=Path, default=None, help="folder to write the JSON and markdown results into")
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS, help=f"comma-separated, from {', '.join(SAMPLERS)}")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="CPU clock: wall time, or this process's CPU time (not counting time other jobs take the cores; "
                         "meaningful with --threads 1) (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu times CPU work only; use it with --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for s in args.shapes.split(","):
        rows += bench(tuple(int(v) for v in s.split("x")), device, args.steps, args.repeats, args.model, args.samplers, args.clock)
    import diffusers

    md = markdown(rows) + (f"\nCommand: `fastdiff bench overhead {' '.join(argv if argv is not None else sys.argv[1:])}`; "
                           f"{args.clock} clock; torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, "
                           f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f} at the end.\n")
    print(md)
    if args.out is not None:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
        stem = f"{time.strftime('%Y-%m-%d')}-{commit}-sampler_overhead-{args.model}-{args.steps}steps" + ("-cpuclock" if args.clock == "cpu" else "")
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock, "machine": platform.machine(),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()}
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (args.out / f"{stem}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
