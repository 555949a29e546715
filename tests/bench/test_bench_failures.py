"""A benchmark never stops at one implementation's failure: it reports it in its table and goes on.

(The first GPU run's attention benchmark would have ended at its first shape on a Triton
CompilationError, which is no RuntimeError.)
"""

import torch

import fastdiff
from fastdiff.bench import _case, _report, _sizes, _timing
from fastdiff.bench import adaln as adaln_bench
from fastdiff.bench import attention as attn_bench


class CompileFailure(Exception):
    """Stands for triton.compiler.errors.CompilationError: not a RuntimeError."""


def _raise(*_args, **_kwargs):
    raise CompileFailure("at 48:12:\n    s = _dot3_nt(...)\n        ^")


def test_error_summary_names_the_type_and_the_cause():
    try:
        try:
            raise ValueError("K >= 16 required")
        except ValueError as cause:
            raise CompileFailure("at 48:12:\n  source line") from cause
    except CompileFailure as e:
        text = _case.error_summary(e)
    assert text.startswith("CompileFailure: at 48:12:") and "ValueError: K >= 16 required" in text


def test_attention_bench_classifies_declines_and_failures():
    assert attn_bench.outcome("fastdiff-cuda", fastdiff.BackendUnavailable("not built")) == "skipped"
    assert attn_bench.outcome("sdpa-flash", RuntimeError("No available kernel")) == "skipped"
    assert attn_bench.outcome("fastdiff-triton", RuntimeError("illegal memory access")) == "failed"
    assert attn_bench.outcome("fastdiff-triton", CompileFailure("x")) == "failed"


def test_attention_table_shows_a_failed_implementation_and_why():
    base = dict(model="sd15", case="64x64 cross", B=8, H=8, Nq=4096, Nk=77, D=40, mode="fwd")
    rows = [
        dict(base, impl="fastdiff-triton", failed="CompilationError: at 48:12: ..."),
        dict(base, impl="sdpa-flash", ms=0.6, tflops=8.0),
    ]
    meta = dict(device="GPU", dtype="bfloat16", torch="2.11", command="x", commit="abc")
    table = attn_bench.markdown(dict(meta=meta, rows=rows))
    assert "| FAILED | 0.600 |" in table
    assert "- fastdiff-triton (fwd, D=40, Nq=4096, Nk=77): CompilationError: at 48:12" in table


def test_adaln_bench_times_the_others_when_fastdiff_fails(monkeypatch):
    monkeypatch.setattr(adaln_bench, "fastdiff_fns", lambda: {"gated_residual": _raise})
    monkeypatch.setitem(adaln_bench.SHAPES, "tiny", (1, 3, 8))
    fake_timer = lambda fn: (fn(), (1e-3, 1e-3))[1]  # noqa: E731 - runs the call, reports 1 ms
    row = adaln_bench.bench_one("tiny", "gated_residual", "forward", torch.float32, "cpu", "cpu", 2, False, fake_timer)
    assert set(row.times) == {"eager"} and row.speedup == {} and row.gbps is None
    assert row.errors["fastdiff"].startswith("CompileFailure")
    table = adaln_bench.markdown([row], dict(date="d", commit="c", device="cpu", threads=1, backend="cpu",
                                             torch="t", command="x"))
    assert "| 1.000 | FAILED | - | - |" in table and "- fastdiff (gated_residual, forward, tiny): CompileFailure" in table


def _tiny_case(fastdiff_fn, x):
    size = _sizes.Size("tiny", (4,))
    return _case.Case(
        bench="guidance", variant=None, size=size, dtype=torch.float32, device=torch.device("cpu"), nbytes=32,
        traffic="x", expected=lambda: {"out": (2 * x).double()},
        candidates=[
            _case.Candidate("eager", _case.BASELINE, lambda: 2 * x, lambda: {"out": 2 * x}),
            _case.Candidate("fastdiff[cpu]", _case.FASTDIFF, fastdiff_fn, lambda: {"out": fastdiff_fn()}),
        ],
    )


def test_a_candidate_that_raises_fails_verification_with_its_error():
    row = _case.run(_tiny_case(_raise, torch.randn(4)), _timing.QUICK)
    assert not row["verified"] and row["timings"] == {}
    assert row["verification"]["eager"]["passed"]
    assert row["verification"]["fastdiff[cpu]"]["error"].startswith("CompileFailure")
    assert "fastdiff[cpu]: CompileFailure" in "\n".join(_report._table([row]))


def test_a_failure_while_timing_is_reported_not_raised():
    x = torch.randn(4)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) > 1:  # right for the check, then fails while being timed
            raise CompileFailure("late")
        return 2 * x

    row = _case.run(_tiny_case(flaky, x), _timing.QUICK)
    assert row["verified"] and row["error"].startswith("timing: CompileFailure: late")
    assert "FAILED, not timed (timing: CompileFailure: late)" in "\n".join(_report._table([row]))
