"""How the benchmarks time code, and the statistics they report.

CPU: timings on shared machines drift by 2x or more between runs, and a large tensor touched for the
first time page-faults. So inputs are allocated and written before timing, every candidate is warmed
up, and then all candidates of one case run back to back, round after round (the order rotated each
round). A ratio is taken inside each round (same moment, same machine load) and the median of those
per-round ratios is reported, with the medians of the times. Each sample repeats the call enough
times to last ``min_sample_s``, so the timer's own cost is negligible for microsecond-sized calls.

GPU: the same rounds, each sample being the median of ``triton.testing.do_bench`` (CUDA events;
falls back to plain CUDA events when Triton is missing).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class TimingPlan:
    rounds: int  # samples per candidate; ratios are taken per round
    warmup: int  # untimed calls per candidate before calibration
    min_sample_s: float  # a CPU sample repeats the call until it lasts at least this long
    clock: str = "wall"  # CPU only: "wall" (perf_counter) or "cpu" (this process's CPU time, see CLOCKS)


#: CPU clocks. "cpu" counts the CPU time of every thread of this process, so time spent descheduled by
#: other jobs is not counted: on a shared, oversubscribed machine it resolves differences of a few
#: percent that wall time buries in noise. Meaningful with one torch thread (idle OpenMP workers spin,
#: and their spinning is CPU time too); it still counts cache and memory-bandwidth contention.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


FULL = TimingPlan(rounds=41, warmup=3, min_sample_s=5e-3)
QUICK = TimingPlan(rounds=7, warmup=2, min_sample_s=1e-3)
GPU_FULL = TimingPlan(rounds=5, warmup=1, min_sample_s=0.0)
GPU_QUICK = TimingPlan(rounds=3, warmup=1, min_sample_s=0.0)


def _time_calls(fn: Callable[[], object], calls: int, clock: str = "wall") -> float:
    """Seconds per call of `calls` back-to-back calls."""
    now = CLOCKS[clock]
    t0 = now()
    for _ in range(calls):
        fn()
    return (now() - t0) * 1e-9 / calls


def _calls_per_sample(fn: Callable[[], object], min_sample_s: float, clock: str = "wall") -> int:
    # Median of three single calls, so one preempted call does not set the count.
    single = sorted(_time_calls(fn, 1, clock) for _ in range(3))[1]
    return max(1, min(10_000, math.ceil(min_sample_s / max(single, 1e-7))))


def _rotated(names: Sequence[str], r: int) -> list[str]:
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def time_cpu(fns: Mapping[str, Callable[[], object]], plan: TimingPlan) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one sample per round, candidates interleaved."""
    names = list(fns)
    for _ in range(plan.warmup):
        for n in names:
            fns[n]()
    calls = {n: _calls_per_sample(fns[n], plan.min_sample_s, plan.clock) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would land on one candidate only
    try:
        for r in range(plan.rounds):
            for n in _rotated(names, r):
                times[n].append(_time_calls(fns[n], calls[n], plan.clock))
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _cuda_event_median(fn: Callable[[], object]) -> float:
    """Median milliseconds per call from CUDA events (used when Triton is not installed)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    per_call = max(start.elapsed_time(end) / 5, 1e-3)
    n = max(10, min(1000, int(50.0 / per_call)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return median([s.elapsed_time(e) for s, e in zip(starts, ends)])


def _gpu_sample_ms(fn: Callable[[], object]) -> float:
    try:
        from triton.testing import do_bench
    except ImportError:
        return _cuda_event_median(fn)
    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def time_gpu(fns: Mapping[str, Callable[[], object]], plan: TimingPlan) -> dict[str, list[float]]:
    """Seconds per call of each CUDA candidate, one do_bench median per round, rounds interleaved."""
    names = list(fns)
    for _ in range(plan.warmup):
        for n in names:
            fns[n]()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(plan.rounds):
        for n in _rotated(names, r):
            times[n].append(_gpu_sample_ms(fns[n]) * 1e-3)
    return times


def time_candidates(fns: Mapping[str, Callable[[], object]], device: torch.device, plan: TimingPlan) -> dict[str, list[float]]:
    return time_gpu(fns, plan) if device.type == "cuda" else time_cpu(fns, plan)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> float:
    return quantile(xs, 0.5)


def time_summary(seconds: Sequence[float], nbytes: int) -> dict[str, float]:
    """Median, quartiles and minimum in microseconds; GB/s is `nbytes` over the median time."""
    med = median(seconds)
    return {
        "median_us": med * 1e6,
        "p25_us": quantile(seconds, 0.25) * 1e6,
        "p75_us": quantile(seconds, 0.75) * 1e6,
        "min_us": min(seconds) * 1e6,
        "gbps": nbytes / med / 1e9 if med > 0 else float("nan"),
    }


def speedup_summary(baseline: Sequence[float], candidate: Sequence[float]) -> dict[str, float]:
    """Baseline time over candidate time, taken per round (same moment), then summarised.

    ``best`` is the ratio of the fastest samples (least disturbed by other processes), for reference.
    """
    ratios = [b / c for b, c in zip(baseline, candidate)]
    return {
        "median": median(ratios),
        "p25": quantile(ratios, 0.25),
        "p75": quantile(ratios, 0.75),
        "best": min(baseline) / min(candidate),
    }
