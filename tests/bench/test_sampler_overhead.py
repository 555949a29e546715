"""fastdiff.bench.sampler_overhead: the loops it times run, and the report says which model and steps."""

import json

import pytest

from fastdiff.bench import sampler_overhead as bench

pytest.importorskip("diffusers")


@pytest.mark.parametrize("model", sorted(bench.MODELS))
def test_writes_a_row_per_sampler_with_both_speedups(tmp_path, model, capsys):
    assert bench.main(["--shapes", "1x4x8x8", "--steps", "3", "--repeats", "1", "--model", model, "--out", str(tmp_path)]) == 0
    [js] = tmp_path.glob(f"*-sampler_overhead-{model}-3steps.json")
    rows = json.loads(js.read_text())["rows"]
    assert [r["sampler"] for r in rows] == list(bench.SAMPLERS)
    for r in rows:
        assert r["model"] == model and r["steps"] == 3 and r["fastdiff.sample_speedup"] > 0 and r["fastdiff.schedulers_speedup"] > 0
    assert f"| dpmpp_2m | (1, 4, 8, 8) | 3 | {model} |" in js.with_suffix(".md").read_text()
