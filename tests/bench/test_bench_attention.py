"""fastdiff.bench.attention: the shapes the issue names, the FLOP/byte counts, the CPU mode and the tables."""

import json

import pytest
import torch

from fastdiff.bench import attention as bench


def test_shapes_cover_the_diffusion_models():
    got = {(c.model, c.b, c.h, c.nq, c.nk, c.d) for c in bench.cases(["sd15", "sdxl", "dit", "pixart"], quick=False)}
    for nq, d in ((4096, 40), (1024, 80), (256, 160), (64, 160)):  # SD-1.5: cross (77 tokens) and self
        assert ("sd15", 8, 8, nq, 77, d) in got and ("sd15", 8, 8, nq, nq, d) in got
    assert {s for s in got if s[0] == "sdxl"} >= {("sdxl", 2, 10, 4096, 77, 64), ("sdxl", 2, 10, 4096, 4096, 64)}
    assert ("dit", 8, 16, 256, 256, 72) in got and ("dit", 8, 16, 1024, 1024, 72) in got
    assert ("pixart", 2, 16, 4096, 4096, 72) in got and ("pixart", 2, 16, 4096, 120, 72) in got


def test_flop_and_byte_counts():
    c = bench.Case("sd15", "x", b=2, h=3, nq=5, nk=7, d=8)
    assert c.flops("fwd") == 4 * 2 * 3 * 5 * 7 * 8
    assert c.flops("bwd") == 2.5 * c.flops("fwd") and c.flops("fwd+bwd") == 3.5 * c.flops("fwd")
    q, kv = 2 * 5 * 3 * 8 * 2, 2 * 7 * 3 * 8 * 2
    assert c.bytes("fwd", 2) == 2 * q + 2 * kv  # q, k, v in; out
    assert c.bytes("bwd", 2) == 4 * q + 4 * kv  # q, out, dO, k, v in; dq, dk, dv out
    assert c.cross and not bench.Case("a", "b", 1, 1, 4, 4, 8).cross


def test_without_a_gpu_it_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_cpu_mode_times_the_kernel_against_sdpa_and_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CPU_SHAPES", [(1, 2, 16, 8, 8)])
    argv = ["--cpu", "--pairs", "1", "--min-sample-ms", "0", "--modes", "fwd,fwd+bwd", "--clock", "cpu", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "attention.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["fwd", "fwd+bwd"] and result["meta"]["clock"] == "cpu"
    for row in result["rows"]:
        assert set(row["ms"]) == set(bench.CPU_IMPLS) and all(ms > 0 for ms in row["ms"].values())
        assert row["sdpa/fastdiff-cpu"] > 0 and row["eager/fastdiff-auto"] > 0
    assert "sdpa / fastdiff-cpu" in (tmp_path / "attention.md").read_text()


def test_gpu_table_reports_the_speedup_over_the_best_sdpa_backend():
    base = dict(model="sd15", case="64x64 cross", B=8, H=8, Nq=4096, Nk=77, D=40, mode="fwd")
    rows = [
        dict(base, impl="fastdiff-triton", ms=0.5, tflops=10.0, gbps=1000.0, floor_fraction=0.4),
        dict(base, impl="sdpa-flash", ms=0.6, tflops=8.0),
        dict(base, impl="sdpa-math", ms=2.0, tflops=2.0),
        dict(base, impl="fastdiff-cuda", skipped="backend 'cuda' cannot serve these inputs"),
    ]
    meta = dict(device="GPU", dtype="bfloat16", torch="2.11", command="x", commit="abc")
    table = bench.markdown(dict(meta=meta, rows=rows))
    assert "| 1.20x | 10 | 40% |" in table
    assert "fastdiff-cuda (fwd, D=40): backend 'cuda' cannot serve" in table
