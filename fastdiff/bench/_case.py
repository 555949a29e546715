"""One benchmark case: its candidates, the check that they compute the same thing, and its timing.

Every candidate that produces a result is compared with the expected result (the eager expression run
on float64 copies of the inputs) before anything is timed; a case whose fastdiff output or baseline
output does not match is reported as failed and is not timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _timing
from ._sizes import Size, dtype_name

FASTDIFF, BASELINE, FLOOR = "fastdiff", "baseline", "floor"

# Largest error allowed, relative to the largest magnitude of the expected output. fastdiff computes
# in float32 and rounds once: float32 within 1e-5, half types within 2 ulp (at the output's scale).
FASTDIFF_TOL = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}
# The baselines round every intermediate to the working dtype; this check only proves they compute
# the same step (a wrong formula or a mismatched scheduler state is off by O(1)).
BASELINE_TOL = {torch.float32: 1e-4, torch.float16: 64 * 2.0**-10, torch.bfloat16: 16 * 2.0**-7}


@dataclass
class Candidate:
    name: str  # "eager", "diffusers", "fastdiff[cpu]", "copy"
    role: str  # FASTDIFF, BASELINE or FLOOR
    fn: Callable[[], object]  # the timed call
    # What the correctness check compares (on fresh copies of any buffer the call updates);
    # None for the copy floor, which computes nothing.
    outputs: Optional[Callable[[], dict[str, Tensor]]] = None


@dataclass
class Case:
    bench: str  # "guidance" or "sampler_update"
    variant: Optional[str]  # the step for sampler_update: "ddim" or "dpmpp_2m"
    size: Size
    dtype: torch.dtype
    device: torch.device
    nbytes: int  # bytes the fused kernel must move (read once, write once)
    traffic: str  # how nbytes was counted, in words
    expected: Callable[[], dict[str, Tensor]]  # float64 eager result
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)


def error_summary(e: BaseException, limit: int = 200) -> str:
    """One line naming an exception that stopped one implementation: its type and the most telling
    line of its message (Triton's CompilationError starts with a source position; its cause says why)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if e.__cause__ is not None and (not text or text.startswith("at ")):
        text = f"{text} {type(e.__cause__).__name__}: {str(e.__cause__).strip().splitlines()[0] if str(e.__cause__).strip() else ''}"
    return f"{type(e).__name__}: {text}"[:limit]


def relative_error(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want|; infinite when got holds NaN/inf or has the wrong shape."""
    if tuple(got.shape) != tuple(want.shape) or not bool(torch.isfinite(got).all()):
        return math.inf
    scale = float(want.abs().max()) if want.numel() else 0.0
    diff = float((got.double() - want).abs().max()) if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


def verify(case: Case) -> dict[str, dict[str, Any]]:
    expected = {k: v.cpu() for k, v in case.expected().items()}
    report = {}
    for c in case.candidates:
        if c.outputs is None:
            continue
        tol = (FASTDIFF_TOL if c.role == FASTDIFF else BASELINE_TOL)[case.dtype]
        try:
            got = c.outputs()
        except Exception as e:  # noqa: BLE001 - any failure of one candidate is reported, the run goes on
            report[c.name] = {"max_rel_error": None, "tolerance": tol, "passed": False, "compared": [],
                              "error": error_summary(e)}
            continue
        missing = sorted(set(got) - set(expected))
        if missing:
            raise AssertionError(f"bench bug: {c.name} returns {missing} that the expected result lacks")
        errs = {k: relative_error(v.cpu(), expected[k]) for k, v in got.items()}
        worst = max(errs.values())
        report[c.name] = {
            "max_rel_error": worst if math.isfinite(worst) else None,  # None: NaN/inf or wrong shape
            "tolerance": tol,
            "passed": bool(worst <= tol),
            "compared": sorted(got),
        }
    return report


def run(case: Case, plan: _timing.TimingPlan) -> dict[str, Any]:
    """Verify, then time, one case; returns its JSON row."""
    row: dict[str, Any] = {
        "bench": case.bench,
        "variant": case.variant,
        "case": case.size.name,
        "shape": list(case.size.shape),
        "dtype": dtype_name(case.dtype),
        "device": str(case.device),
        "elements": case.size.elements,
        "bytes": case.nbytes,
        "traffic": case.traffic,
        "candidates": {c.name: c.role for c in case.candidates},
        "notes": list(case.notes),
    }
    row["verification"] = verify(case)
    row["verified"] = all(v["passed"] for v in row["verification"].values())
    row["timings"], row["speedups"] = {}, {}
    if not row["verified"]:
        return row
    try:
        times = _timing.time_candidates({c.name: c.fn for c in case.candidates}, case.device, plan)
    except Exception as e:  # noqa: BLE001 - reported in the row and the table; the next case still runs
        row["error"] = f"timing: {error_summary(e)}"
        return row
    row["timings"] = {name: _timing.time_summary(t, case.nbytes) for name, t in times.items()}
    baselines = [c.name for c in case.candidates if c.role == BASELINE]
    for c in case.candidates:
        if c.role == FASTDIFF:
            row["speedups"][c.name] = {b: _timing.speedup_summary(times[b], times[c.name]) for b in baselines}
    return row


def copy_floor(nbytes: int, dtype: torch.dtype, device: torch.device) -> Candidate:
    """A plain copy moving the same bytes as the fused kernel (half read, half written): the floor.

    Unlike the other candidates it writes into a buffer that already exists (no fresh allocation).
    """
    n = max(1, nbytes // (2 * torch.tensor([], dtype=dtype).element_size()))
    src = torch.randn(n, device=device).to(dtype)
    dst = torch.zeros_like(src)  # written now, so its pages exist before timing
    return Candidate("copy", FLOOR, lambda: dst.copy_(src))


def on_backend(backend: str, family: str, op: str, device: torch.device, dtypes: tuple[torch.dtype, ...],
               fn: Callable[[], Any], **features: Any) -> Callable[[], Any]:
    """`fn` run on a given fastdiff backend.

    When automatic selection (`family`'s, for a call of `op` with these dtypes and features) already
    picks that backend, `fn` is returned as is, so the timing holds exactly what a user's call costs;
    otherwise the call runs inside ``fastdiff.backend(backend)``.
    """
    from .. import _backend, backend as force

    if _backend.forced() is None and _backend.family(family).select(op, device, dtypes, **features) == backend:
        return fn

    def forced_call() -> Any:
        with force(backend):
            return fn()

    return forced_call
