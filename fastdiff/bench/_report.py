"""Benchmark results as JSON and as markdown tables, with the machine they ran on and target checks."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch

from ._case import BASELINE, FASTDIFF, FLOOR
from ._timing import TimingPlan

SCHEMA = "fastdiff-bench/1"

METHOD_CPU = (
    "CPU: inputs allocated and written before timing; each candidate warmed up; then all candidates "
    "of a case run back to back, round after round, in rotated order; a sample repeats the call until it "
    "lasts {min_ms} ms. Times are medians over {rounds} rounds; a speedup is baseline time / fastdiff time "
    "taken within each round (same moment, same load), reported as the median (and quartiles) of those "
    "per-round ratios."
)
METHOD_GPU = (
    "GPU: each sample is the median of triton.testing.do_bench (CUDA events); candidates interleaved over "
    "{rounds} rounds; a speedup is the median of per-round ratios baseline time / fastdiff time."
)


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    """Short commit of the fastdiff checkout being measured (with -dirty for local changes), if any."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def machine(device: torch.device) -> dict[str, Any]:
    import fastdiff

    c = fastdiff._backend.compiled()
    out = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_isa": c.cpu_isa() if c is not None else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "fastdiff": fastdiff.__version__,
        "commit": _git_commit(),
        "diffusers": _version("diffusers"),
        "triton": _version("triton"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # settings that change what is measured: threads, PyTorch's huge-page allocations, forced backend
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE", "FASTDIFF_BACKEND") if k in os.environ},
    }
    return out


# ---------------------------------------------------------------------------------------------
# Targets: what the project promises, checked on the rows that address it
# ---------------------------------------------------------------------------------------------
TARGETS: list[dict[str, Any]] = [
    {
        "id": "cpu_fused_vs_eager_4M",
        "text": "fused CPU kernels >= 2x eager PyTorch on >= 4M-element latents",
        "device": "cpu",
        "select": lambda r: r["elements"] >= 4_000_000,
        "baseline": "eager",
        "threshold": 2.0,
    },
    {
        "id": "cpu_dpmpp_2m_vs_diffusers_sd",
        "text": "fused guidance + DPM-Solver++(2M) step >= 3x diffusers' step + eager guidance on an SD-sized latent",
        "device": "cpu",
        "select": lambda r: r["bench"] == "sampler_update" and r["variant"] == "dpmpp_2m" and r["case"].startswith("sd15"),
        "baseline": "diffusers",
        "threshold": 3.0,
    },
]


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        hits = []
        for r in rows:
            if torch.device(r["device"]).type != t["device"] or not r["verified"] or not t["select"](r):
                continue
            for cand, vs in r["speedups"].items():
                if t["baseline"] in vs:
                    hits.append({"bench": r["bench"], "variant": r["variant"], "case": r["case"], "dtype": r["dtype"],
                                 "candidate": cand, "speedup": vs[t["baseline"]]["median"]})
        worst = min((h["speedup"] for h in hits), default=None)
        out.append({
            "id": t["id"], "text": t["text"], "threshold": t["threshold"], "measured": hits,
            "min_speedup": worst, "met": None if worst is None else bool(worst >= t["threshold"]),
        })
    return out


# ---------------------------------------------------------------------------------------------
# Assembly and writers
# ---------------------------------------------------------------------------------------------
def assemble(command: str, host: dict[str, Any], device: torch.device, plan: TimingPlan, rows: list[dict[str, Any]],
             load: dict[str, Any]) -> dict[str, Any]:
    """The JSON document; `host` is `machine(device)`, taken when the run started."""
    method = (METHOD_GPU if device.type == "cuda" else METHOD_CPU).format(rounds=plan.rounds, min_ms=plan.min_sample_s * 1e3)
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": host,
        "method": {"text": method, "rounds": plan.rounds, "warmup": plan.warmup, "min_sample_s": plan.min_sample_s},
        "load_average": load,
        "results": rows,
        "targets": check_targets(rows),
    }


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def finish_study(out: Optional[Path], name: str, result: dict[str, Any], markdown, plot, checks) -> int:
    """The end of a quality study (sampler accuracy, digits): record diffusers' version, print the
    markdown, save it when ``out`` is given; the exit status is 0 when every check passed."""
    try:
        import diffusers

        result["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    md = markdown(result)
    print(md)
    if out is not None:
        save_study(out, name, result, md, plot)
    return 0 if all(ok for _, ok in checks(result)) else 1


def save_study(out: Path, name: str, result: dict[str, Any], md: str, plot) -> None:
    """Write <date>-<commit>-<name>.json, .md and (when ``plot(result, path)`` can draw) .png into ``out``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    stem = out / f"{datetime.date.today().isoformat()}-{commit}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(md)
    if plot(result, stem.with_suffix(".png")):
        print(f"wrote {stem}.{{json,md,png}}")
    else:
        print(f"wrote {stem}.{{json,md}}; no plot: matplotlib is not installed (pip install matplotlib)")


def _us(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _speedup(s: Optional[dict[str, float]]) -> str:
    if s is None:
        return "—"
    return f"**{s['median']:.2f}x** ({s['p25']:.2f}–{s['p75']:.2f}; best {s['best']:.2f}x)"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """One markdown table for rows of the same bench and variant; columns follow the candidates present."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["candidates"] if n not in names]
    role = {n: r["candidates"][n] for r in rows for n in r["candidates"]}
    baselines = [n for n in names if role[n] == BASELINE]
    fused = [n for n in names if role[n] == FASTDIFF]
    floors = [n for n in names if role[n] == FLOOR]
    head = ["size", "latent shape", "dtype", "MB moved"]
    head += [f"{n} µs" for n in baselines + fused]
    for f in fused:
        head += [f"{f} GB/s"] + [f"{f} vs {b}" for b in baselines]
    head += [f"{n} GB/s" for n in floors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["case"], "x".join(map(str, r["shape"])), r["dtype"], f"{r['bytes'] / 1e6:.2f}"]
        if not r["verified"]:
            bad = {n: v for n, v in r["verification"].items() if not v["passed"]}
            why = "; ".join(f"{n}: {v['error']}" if v.get("error") else f"{n}: error {v['max_rel_error']} > {v['tolerance']:.2g}"
                            for n, v in bad.items())
            lines.append("| " + " | ".join(cells + [f"FAILED verification, not timed ({why})"]) + " |")
            continue
        if r.get("error"):
            lines.append("| " + " | ".join(cells + [f"FAILED, not timed ({r['error']})"]) + " |")
            continue
        t = r["timings"]
        cells += [_us(t[n]["median_us"]) if n in t else "—" for n in baselines + fused]
        for f in fused:
            cells.append(f"{t[f]['gbps']:.1f}" if f in t else "—")
            cells += [_speedup(r["speedups"].get(f, {}).get(b)) for b in baselines]
        cells += [f"{t[n]['gbps']:.1f}" if n in t else "—" for n in floors]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


TITLES = {
    ("guidance", None): "guidance_combine: `u + s (c - u)` on a batched [uncond; cond] output (s = 7.5)",
    ("sampler_update", "ddim"): "sampler_update: guided DDIM step (eta = 0), SD schedule, step 10 of 20",
    ("sampler_update", "dpmpp_2m"): "sampler_update: guided DPM-Solver++(2M) step, second order, SD schedule, step 10 of 20",
}
EAGER = {
    ("guidance", None): "eager: `u, c = out.chunk(2); u + s * (c - u)`",
    ("sampler_update", "ddim"): "eager: guidance, then `d = a*x + b*m; x_next = c_x*x + c_d*d`; "
    "diffusers: eager guidance, then `DDIMScheduler.step`",
    ("sampler_update", "dpmpp_2m"): "eager: guidance, then `d = a*x + b*m; x_next = c_x*x + c_d*d + c_h*h` "
    "(d kept as the next history); diffusers: eager guidance, then `DPMSolverMultistepScheduler.step`",
}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    where = m["gpu"] or f"{m['cpu']} ({m['cpu_count']} CPUs), {m['threads']} threads, {m['cpu_isa']} kernels"
    lines = [
        f"# fastdiff benchmarks — {results['date'][:10]}, commit {m['commit'] or 'unknown'}",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {where}",
        f"- software: torch {m['torch']}, python {m['python']}, fastdiff {m['fastdiff']}, "
        f"diffusers {m['diffusers'] or 'not installed'}, triton {m['triton'] or 'not installed'}",
        f"- load average (1 min) before / after: {results['load_average'].get('before', '?')} / "
        f"{results['load_average'].get('after', '?')} (other processes share the machine; see the quartiles)",
        f"- method: {results['method']['text']}",
        "- speedup columns: median over rounds of (baseline time / fastdiff time), quartiles in brackets, and "
        "`best`: fastest baseline sample / fastest fastdiff sample; "
        "GB/s: the fused kernel's minimum traffic (below) over each candidate's median time; "
        "`copy` moves the same bytes with `dst.copy_(src)` into an existing buffer (the bandwidth floor).",
    ]
    if m["gpu"] is None:
        lines.append(
            "- allocation: fastdiff's CPU ops ask for transparent huge pages on outputs of 32 MiB or more; eager "
            "PyTorch and diffusers use PyTorch's allocator as configured "
            f"(THP_MEM_ALLOC_ENABLE={m.get('env', {}).get('THP_MEM_ALLOC_ENABLE', 'unset')})."
        )
    lines.append("")
    groups: dict[tuple, list] = {}
    for r in results["results"]:
        groups.setdefault((r["bench"], r["variant"]), []).append(r)
    for key, rows in groups.items():
        lines += [f"## {TITLES.get(key, ' '.join(str(k) for k in key if k))}", ""]
        lines += [f"{EAGER[key]}. Bytes: {rows[0]['traffic']}." if key in EAGER else f"Bytes: {rows[0]['traffic']}.", ""]
        lines += _table(rows) + [""]
        notes = sorted({n for r in rows for n in r["notes"]})
        lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    measured = [t for t in results["targets"] if t["met"] is not None]  # targets this run's sizes did not reach are left out
    if measured:
        lines += ["## Targets", ""]
    for t in measured:
        status = ("met" if t["met"] else "MISSED") + f": lowest median speedup {t['min_speedup']:.2f}x over {len(t['measured'])} measurement(s)"
        lines.append(f"- {t['text']}: {status}")
    lines.append("")
    return "\n".join(lines)
