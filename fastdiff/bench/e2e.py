"""End-to-end benchmark: whole diffusers models and sampling loops, eager vs fastdiff, images/s and peak memory.

    python -m fastdiff bench e2e [--device cpu|cuda] [--cases a,b] [--compile] [--rounds N] [--save DIR]

Random-weight diffusers models (bf16 on GPU, float32 on CPU): DiT-XL/2 at 256 and 512 px (guided,
50 DDIM or 20 DPM-Solver++(2M) steps, batch 8 and 32), the SD-1.5 U-Net at 512 px (guided, 20 steps,
batch 1 and 8) and the SD VAE decoder at 512 and 1024 px. On CPU the same cases run at reduced sizes
(tiny configs, 4 steps), plus forward+backward of the reduced U-Net and DiT.

Sampling columns: ``eager`` (diffusers' loop: model, CFG, scheduler.step), ``accelerate`` (the same
loop, patched model, fastdiff scheduler), ``generate`` (fastdiff.sample's loop, unpatched model),
``acc+gen`` (both), and with ``--compile`` (default on GPU) ``compile`` (torch.compile of the eager
model in diffusers' loop) and ``compile+acc+gen``; ``loop:eager``, ``loop:accelerate`` and
``loop:generate`` time the loops alone around one recorded model output (what a loop costs besides
the model), against ``loop:eager``. Decode and training columns: eager, patched (and the compiled
ones) and ``control``, an unpatched copy of the eager model: what two identical models measure
apart, the floor for reading the patched column. Speedups are medians of per-round ratios against eager. Before timing, every column's output
is compared with its baseline's (relative max error, reported).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import _timing


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "sample", "decode" or "train"
    model: str  # "dit", "unet", "vae"
    size: dict  # model config overrides
    batch: int
    res: int  # latent side
    steps: int = 0
    sampler: str = "ddim"


def _dit_xl(res: int) -> dict:
    return dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=res // 8)


_SD15 = dict(cross_attention_dim=768, attention_head_dim=8)
_SDVAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_SMALL_DIT = dict(num_attention_heads=4, attention_head_dim=64, num_layers=2, sample_size=32)
_SMALL_UNET = dict(cross_attention_dim=64, attention_head_dim=4, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
_TINY_VAE = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2)

GPU_CASES = [
    *(Case(f"dit-xl2-{px}-b{b}-{s}{n}", "sample", "dit", _dit_xl(px), b, px // 8, n, s)
      for px in (256, 512) for b in (8, 32) for s, n in (("ddim", 50), ("dpmpp_2m", 20))),
    *(Case(f"sd15-unet-512-b{b}-dpmpp_2m20", "sample", "unet", _SD15, b, 64, 20, "dpmpp_2m") for b in (1, 8)),
    *(Case(f"sd-vae-decode-{px}", "decode", "vae", _SDVAE, 1, px // 8) for px in (512, 1024)),
]
# Reduced sizes: small enough for a shared CPU, large enough (256 DiT tokens, 32x32 U-Net latents) that
# the models' arithmetic, not Python overhead, is what is timed.
CPU_CASES = [
    Case("small-dit-ddim8", "sample", "dit", _SMALL_DIT, 2, 32, 8, "ddim"),
    Case("small-dit-dpmpp_2m8", "sample", "dit", _SMALL_DIT, 2, 32, 8, "dpmpp_2m"),
    Case("small-unet-dpmpp_2m8", "sample", "unet", _SMALL_UNET, 1, 32, 8, "dpmpp_2m"),
    Case("tiny-vae-decode", "decode", "vae", _TINY_VAE, 1, 32),
    Case("small-dit-train", "train", "dit", _SMALL_DIT, 2, 32),
    Case("small-unet-train", "train", "unet", _SMALL_UNET, 2, 32),
]


# ---- models and their calls ----------------------------------------------------------------------------
def build(case: Case, device, dtype) -> torch.nn.Module:
    import diffusers
    from diffusers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    if case.model == "dit":
        m = diffusers.DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000, **case.size)
        with torch.no_grad():  # adaLN-Zero starts at zero: give the modulation weights a spread so blocks do work
            for blk in m.transformer_blocks:
                blk.norm1.linear.weight.normal_(0, 0.02)
    elif case.model == "unet":
        m = diffusers.UNet2DConditionModel(sample_size=case.res, in_channels=4, out_channels=4, **case.size)
    else:
        m = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **case.size)
    return m.to(device=device, dtype=dtype).eval()


def model_call(case: Case, model, batch: int, device, dtype, guided: bool) -> Callable:
    """f(x, t) -> the eps prediction for a (B or 2B) batch; conditioning fixed and prepared here."""
    g = torch.Generator().manual_seed(1)
    n = 2 * batch if guided else batch
    if case.model == "dit":
        labels = torch.randint(0, 1000, (batch,), generator=g)
        y = (torch.cat([torch.full_like(labels, 1000), labels]) if guided else labels).to(device)
        return lambda x, t: model(x, timestep=t.reshape(-1).expand(x.shape[0]), class_labels=y).sample[:, :4]
    ctx = torch.randn(n, 77, case.size["cross_attention_dim"], generator=g).to(device, dtype)
    return lambda x, t: model(x, t, encoder_hidden_states=ctx).sample


def diffusers_loop(call, scheduler, noise, steps, guidance):
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = call(scheduler.scale_model_input(torch.cat([x, x]), t), t)
        u, c = out.chunk(2)
        x = scheduler.step(u + guidance * (c - u), t, x).prev_sample
    return x


def candidates(case: Case, device, dtype, use_compile: bool) -> dict[str, Callable[[], Any]]:
    import diffusers

    import fastdiff

    base = build(case, device, dtype)
    fast = copy.deepcopy(base)
    fastdiff.patch(fast)
    comp = (lambda m: torch.compile(m)) if use_compile else None
    g = torch.Generator().manual_seed(2)
    # decode and train: a second, unpatched copy (two identical models differ by this much, the floor
    # for reading "patched")
    twin = copy.deepcopy(base) if case.kind in ("decode", "train") else None
    if case.kind == "decode":
        z = torch.randn(case.batch, 4, case.res, case.res, generator=g).to(device, dtype)
        fns = {"eager": lambda: base.decode(z).sample, "patched": lambda: fast.decode(z).sample,
               "control": lambda: twin.decode(z).sample}
        if comp:
            cb, cf = copy.deepcopy(base), copy.deepcopy(fast)
            cb.decoder, cf.decoder = comp(cb.decoder), comp(cf.decoder)
            fns.update({"compile": lambda: cb.decode(z).sample, "compile+patched": lambda: cf.decode(z).sample})
        return fns
    x = torch.randn(case.batch, 4, case.res, case.res, generator=g).to(device, dtype)
    if case.kind == "train":
        t = torch.randint(0, 1000, (case.batch,), generator=g).to(device)

        def step(model):
            call = model_call(case, model, case.batch, device, dtype, guided=False)

            def run():
                model.zero_grad(set_to_none=True)
                out = call(x, t)
                out.float().square().mean().backward()
                return out.detach()
            return run
        # eval mode: DiT's class-label dropout would make every call different; no other layer of
        # these models behaves differently in training, so the work timed is a training step's
        return {"eager": step(base), "patched": step(fast), "control": step(twin)}
    cfg = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1).config
    name = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}[case.sampler]
    d_sched = getattr(diffusers, name).from_config(cfg)
    f_sched = getattr(fastdiff.schedulers, name).from_config(d_sched.config)
    config = dict(d_sched.config)
    guidance = 4.0

    def loop(model, sched):
        call = model_call(case, model, case.batch, device, dtype, guided=True)
        return lambda: diffusers_loop(call, sched, x, case.steps, guidance)

    def fused(model):
        call = model_call(case, model, case.batch, device, dtype, guided=True)
        return lambda: fastdiff.sample(call, x, sampler=case.sampler, steps=case.steps, guidance_scale=guidance,
                                       config=config, progress=False)

    fns = {"eager": loop(base, d_sched), "accelerate": loop(fast, f_sched), "generate": fused(base), "acc+gen": fused(fast)}
    if comp:
        fns.update({"compile": loop(comp(base), d_sched), "compile+acc+gen": fused(comp(fast))})
    # The loops alone: the model replaced by one recorded output, so what is timed is what a loop adds
    # around the model (CFG, scheduler step, concatenation), which the model's time otherwise buries.
    with torch.no_grad():
        recorded = model_call(case, base, case.batch, device, dtype, guided=True)(torch.cat([x, x]), torch.tensor(500))
    replay = lambda xx, t: recorded  # noqa: E731
    fns.update({
        "loop:eager": lambda: diffusers_loop(replay, d_sched, x, case.steps, guidance),
        "loop:accelerate": lambda: diffusers_loop(replay, f_sched, x, case.steps, guidance),
        "loop:generate": lambda: fastdiff.sample(replay, x, sampler=case.sampler, steps=case.steps,
                                                 guidance_scale=guidance, config=config, progress=False),
    })
    return fns


def baseline(column: str) -> str:
    """The column a column is compared with: loop-only columns with diffusers' loop alone."""
    return "loop:eager" if column.startswith("loop:") else "eager"


# ---- running -------------------------------------------------------------------------------------------
def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


#: relative max error against eager above which a column counts as wrong (bf16 loops drift over the steps)
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}


def run_case(case: Case, device, dtype, plan, use_compile: bool) -> dict[str, Any]:
    fns = candidates(case, device, dtype, use_compile)
    ctx = torch.enable_grad() if case.kind == "train" else torch.no_grad()
    with ctx:
        refs = {b: fns[b]() for b in {baseline(n) for n in fns}}
        errors, peaks = {}, {}
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            out = fn()
            errors[name] = _rel_err(out, refs[baseline(name)])
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        times = _timing.time_candidates(fns, device, plan)
    tol = TOLERANCE.get(dtype, 1e-1)
    bad = {n: e for n, e in errors.items() if not e <= tol}
    row = {"case": case.name, "kind": case.kind, "batch": case.batch, "steps": case.steps, "verified": not bad,
           "tolerance": tol, "columns": {}}
    if bad:
        print(f"fastdiff bench e2e: {case.name}: outputs differ from eager beyond {tol:g}: {bad}", file=sys.stderr)
    for name in fns:
        med = _timing.median(times[name])
        row["columns"][name] = {
            "median_s": med, "images_per_s": case.batch / med, "rel_err_vs_eager": errors[name],
            "peak_mib": peaks.get(name), "baseline": baseline(name),
            "speedup_vs_eager": _timing.speedup_summary(times[baseline(name)], times[name]),
        }
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# fastdiff bench e2e ({results['device']}, {results['dtype']})", "", f"`{results['command']}`",
             f"commit {results['host'].get('commit')}, {results['host'].get('cpu')}, torch {torch.__version__}, "
             f"{results.get('threads')} threads, {results.get('clock', 'wall')} clock", "",
             "| case | column | s / call | images/s | speedup vs eager (median [p25, p75]) | rel. err vs eager | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        for name, c in row["columns"].items():
            s = c["speedup_vs_eager"]
            peak = "-" if c["peak_mib"] is None else f"{c['peak_mib']:.0f}"
            lines.append(f"| {row['case']} | {name} | {c['median_s']:.4g} | {c['images_per_s']:.3g} | "
                         f"{s['median']:.3f} [{s['p25']:.3f}, {s['p75']:.3f}] | {c['rel_err_vs_eager']:.1e} | {peak} |")
    if any(n.startswith("loop:") for row in results["rows"] for n in row["columns"]):
        lines += ["", "loop:* columns: the sampling loop alone, around one recorded model output (CFG, scheduler step, "
                  "concatenation); compared with loop:eager, diffusers' loop and scheduler."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastdiff bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device to time on (default: cuda when available, else cpu at reduced sizes)")
    p.add_argument("--cases", help="comma-separated case names (default: every case of the device)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="add torch.compile columns (default: on for cuda, off for cpu, where compiling takes minutes)")
    p.add_argument("--rounds", type=int, help="timing rounds (default: 5 on cpu, 3 on cuda)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on cpu (on a shared, oversubscribed machine "
                   "use 1: OpenMP barriers waiting for descheduled threads then dominate small ops)")
    p.add_argument("--clock", choices=sorted(_timing.CLOCKS), default="wall",
                   help="cpu only: wall time, or this process's CPU time (with --threads 1 it leaves out the time other "
                   "jobs on a shared machine take from it; default: wall)")
    p.add_argument("--save", metavar="DIR", help="write <date>-<commit>-e2e.json and .md there")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.name for c in GPU_CASES + CPU_CASES}
        if unknown:
            print(f"fastdiff bench e2e: unknown cases {sorted(unknown)}", file=sys.stderr)
            return 2
        cases = [c for c in GPU_CASES + CPU_CASES if c.name in wanted]
    use_compile = device.type == "cuda" if args.compile is None else args.compile
    rounds = args.rounds or (3 if device.type == "cuda" else 5)
    if args.clock != "wall" and device.type == "cuda":
        print("fastdiff bench e2e: --clock: only wall time is measured on cuda", file=sys.stderr)
        return 2
    plan = _timing.TimingPlan(rounds=rounds, warmup=1, min_sample_s=0.0, clock=args.clock)
    from . import _report

    host = _report.machine(device)
    rows = []
    for case in cases:
        print(f"fastdiff bench e2e: {case.name} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, device, dtype, plan, use_compile))
    results = {"command": "fastdiff bench e2e " + shlex.join(argv or sys.argv[1:]), "device": str(device),
               "dtype": str(dtype).replace("torch.", ""), "host": host, "rounds": rounds, "clock": args.clock,
               "threads": torch.get_num_threads(), "rows": rows}
    text = markdown(results)
    print(text)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        stem = os.path.join(args.save, f"{day}-{(host.get('commit') or 'nocommit')[:7]}-e2e")
        with open(stem + ".json", "w") as f:
            json.dump(_report._finite(results), f, indent=2)
        with open(stem + ".md", "w") as f:
            f.write(text)
    return 0 if all(r["verified"] for r in rows) else 1
