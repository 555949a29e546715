"""`fastdiff bench`: runs end to end, checks every candidate's result before timing, writes JSON and markdown."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastdiff
from fastdiff import bench
from fastdiff.bench import _report, _timing
from fastdiff.bench._sizes import PRESETS, SIZES, parse_sizes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--sizes", "tiny", "--rounds", "2", "--device", "cpu"]


def run_bench(tmp_path, *args):
    js, md = tmp_path / "out.json", tmp_path / "out.md"
    rc = bench.main([*args, "--json", str(js), "--md", str(md)])
    return rc, json.loads(js.read_text()), md.read_text()


def test_quick_run_verifies_times_and_writes_json_and_markdown(tmp_path):
    rc, data, md = run_bench(tmp_path, "all", *TINY, "--dtype", "float32,bfloat16")
    assert rc == 0
    assert data["schema"] == "fastdiff-bench/1"
    assert data["command"].startswith("fastdiff bench all --quick")
    for key in ("cpu", "threads", "torch", "commit", "diffusers", "device"):
        assert key in data["machine"]
    rows = data["results"]
    # guidance, DDIM and DPM-Solver++(2M), each at two sizes and two dtypes
    assert sorted({(r["bench"], r["variant"]) for r in rows}, key=str) == [
        ("guidance", None), ("sampler_update", "ddim"), ("sampler_update", "dpmpp_2m")]
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        assert r["verified"], r["verification"]
        fused = r["verification"]["fastdiff[cpu]"]
        assert fused["passed"] and fused["max_rel_error"] <= fused["tolerance"]
        assert "fastdiff[triton]" not in r["candidates"]  # the CPU interpreter is never timed
        baselines = ["eager"] + (["diffusers"] if r["bench"] == "sampler_update" else [])
        assert set(r["speedups"]["fastdiff[cpu]"]) == set(baselines)
        for s in r["speedups"]["fastdiff[cpu]"].values():
            assert 0 < s["p25"] <= s["median"] <= s["p75"] and s["best"] > 0
        for name in [*baselines, "fastdiff[cpu]", "copy"]:
            t = r["timings"][name]
            assert 0 < t["min_us"] <= t["p25_us"] <= t["median_us"] <= t["p75_us"] and t["gbps"] > 0
        assert r["bytes"] == {"guidance": 3, "ddim": 4, "dpmpp_2m": 6}[r["variant"] or r["bench"]] * r["elements"] * (
            4 if r["dtype"] == "float32" else 2)
    dpm = [r for r in rows if r["variant"] == "dpmpp_2m"]
    assert all(r["verification"]["fastdiff[cpu]"]["compared"] == ["history", "x_next"] for r in dpm)
    assert {t["id"] for t in data["targets"]} == {t["id"] for t in _report.TARGETS}
    assert "| size | latent shape | dtype | MB moved | eager µs | fastdiff[cpu] µs" in md
    assert "fastdiff[cpu] vs diffusers" in md and data["command"] in md


def test_a_wrong_fastdiff_result_is_reported_and_not_timed(tmp_path, monkeypatch):
    real = fastdiff.ops.guidance_combine
    monkeypatch.setattr(fastdiff.ops, "guidance_combine", lambda out, s: real(out, s) * (1 + 1e-3))
    rc, data, md = run_bench(tmp_path, "guidance", *TINY, "--sizes", "tiny-b1")
    assert rc == 1
    [row] = data["results"]
    assert not row["verified"] and row["timings"] == {} and row["speedups"] == {}
    assert not row["verification"]["fastdiff[cpu]"]["passed"]
    assert row["verification"]["eager"]["passed"]
    assert "FAILED verification, not timed" in md


def test_a_step_that_forgets_its_history_write_is_caught(tmp_path, monkeypatch):
    real = fastdiff.ops.sampler_update

    def no_history_write(x, model_out, coeffs, *, history=None, **kw):
        return real(x, model_out, coeffs, history=None if history is None else history.clone(), **kw)

    monkeypatch.setattr(fastdiff.ops, "sampler_update", no_history_write)
    rc, data, _ = run_bench(tmp_path, "sampler_update", *TINY, "--sizes", "tiny-b1")
    assert rc == 1
    verified = {r["variant"]: r["verified"] for r in data["results"]}
    assert verified == {"ddim": True, "dpmpp_2m": False}  # DDIM keeps no history


def test_the_triton_interpreter_is_refused_and_left_out_on_cpu(capsys):
    assert bench.choose_backends("auto", torch.device("cpu"), "guidance") == ["cpu"]
    assert bench.main(["guidance", "--device", "cpu", "--backends", "triton", "--sizes", "tiny-b1"]) == 2
    assert "Triton interpreter" in capsys.readouterr().err


def test_bad_options_exit_with_status_2(capsys):
    assert bench.main(["guidance", "--sizes", "sd99"]) == 2
    assert "unknown size 'sd99'" in capsys.readouterr().err
    assert bench.main(["guidance", "--dtype", "float64"]) == 2
    with pytest.raises(SystemExit):
        bench.main(["nonsense"])


def test_sizes_span_sd_to_video_latents_and_accept_shapes():
    default = parse_sizes("default")
    assert SIZES["sd15-b1"] in default and SIZES["sdxl-b4"] in default
    assert any(s.elements >= 4_000_000 for s in default)  # the 4M-element CPU target is measured
    assert set(PRESETS["quick"]) <= set(PRESETS["default"])
    [custom] = parse_sizes("2x4x9x9")
    assert custom.shape == (2, 4, 9, 9) and custom.elements == 648


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_interleaved_timing_recovers_a_known_ratio():
    plan = _timing.TimingPlan(rounds=9, warmup=1, min_sample_s=0.0)
    times = _timing.time_cpu({"slow": lambda: _spin(2e-3), "fast": lambda: _spin(1e-3)}, plan)
    assert len(times["slow"]) == len(times["fast"]) == 9
    assert 1.6 < _timing.speedup_summary(times["slow"], times["fast"])["median"] < 2.4


def _work(n: int) -> int:
    return sum(i * i for i in range(n))  # fixed work, unlike _spin's fixed wall time


def test_the_cpu_clock_counts_work_not_waiting():
    plan = _timing.TimingPlan(rounds=9, warmup=1, min_sample_s=0.0, clock="cpu")
    times = _timing.time_cpu({"slow": lambda: _work(40_000), "fast": lambda: _work(20_000),
                              "sleep": lambda: time.sleep(5e-3)}, plan)
    assert 1.6 < _timing.speedup_summary(times["slow"], times["fast"])["median"] < 2.4
    assert _timing.median(times["sleep"]) < 1e-3  # 5 ms asleep is (almost) no CPU time


def test_targets_report_misses_as_well_as_hits():
    def row(speedup, elements=5_000_000):
        return {"bench": "guidance", "variant": None, "case": "video720-b1", "dtype": "float32", "device": "cpu",
                "elements": elements, "verified": True,
                "speedups": {"fastdiff[cpu]": {"eager": {"median": speedup, "p25": speedup, "p75": speedup}}}}

    [t4m, _] = _report.check_targets([row(2.5), row(1.5)])
    assert t4m["met"] is False and t4m["min_speedup"] == 1.5
    [t4m, sd] = _report.check_targets([row(2.5), row(0.5, elements=1000)])
    assert t4m["met"] is True and sd["met"] is None  # no SD-sized DPM-Solver++ row measured


def test_benchmark_script_runs_from_a_checkout():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_guidance.py"), *TINY, "--sizes", "tiny-b1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "guidance_combine" in done.stdout


def test_help_and_a_wrong_name_list_every_benchmark(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["nonsense"])
    err = capsys.readouterr().err
    for name in [*bench.BENCHES, *bench.FAMILY_BENCHES]:
        assert name in out and repr(name) in err
    assert "digits" in bench.FAMILY_BENCHES


def test_every_option_of_every_benchmark_has_a_description(monkeypatch):
    import argparse
    import importlib

    parsers = []
    real_parse = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: parsers.append(self) or (_ for _ in ()).throw(SystemExit(0)))
    for module, _ in bench.FAMILY_BENCHES.values():
        with pytest.raises(SystemExit):
            importlib.import_module(f"fastdiff.bench.{module}").main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
    top = bench.build_parser()
    parsers += [top] + list(next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices.values())
    assert len(parsers) > len(bench.FAMILY_BENCHES)
    for p in parsers:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):  # each of its choices carries the help
                continue
            assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help text"


def test_a_quick_run_leaves_out_the_targets_it_did_not_measure(tmp_path):
    _, data, md = run_bench(tmp_path, "guidance", *TINY, "--sizes", "tiny-b1")
    assert all(t["met"] is None for t in data["targets"])  # tiny sizes reach no target
    assert "not measured" not in md and "## Targets" not in md
