"""fastdiff.bench.sampler_overhead: the loops it times run, and the report says which model and steps."""

import json

import pytest
import torch

from fastdiff.bench import sampler_overhead as bench

pytest.importorskip("diffusers")


@pytest.mark.parametrize("model", sorted(bench.MODELS))
def test_writes_a_row_per_sampler_with_both_speedups(tmp_path, model, capsys):
    assert bench.main(["--shapes", "1x4x8x8", "--steps", "3", "--repeats", "1", "--model", model, "--out", str(tmp_path)]) == 0
    [js] = tmp_path.glob(f"*-sampler_overhead-{model}-3steps.json")
    rows = json.loads(js.read_text())["rows"]
    assert [r["sampler"] for r in rows] == bench.DEFAULT_SAMPLERS.split(",")
    for r in rows:
        assert r["model"] == model and r["steps"] == 3 and r["fastdiff.sample_speedup"] > 0 and r["fastdiff.schedulers_speedup"] > 0
    assert f"| dpmpp_2m | (1, 4, 8, 8) | 3 | {model} |" in js.with_suffix(".md").read_text()


def test_samplers_option_picks_any_named_sampler(tmp_path, capsys):
    assert bench.main(["--shapes", "1x4x8x8", "--steps", "3", "--repeats", "1", "--samplers", "pndm,ipndm", "--out", str(tmp_path)]) == 0
    [js] = tmp_path.glob("*-sampler_overhead-free-3steps.json")
    assert [r["sampler"] for r in json.loads(js.read_text())["rows"]] == ["pndm", "ipndm"]


def test_the_graph_column_times_replays_of_one_capture(monkeypatch, tmp_path, capsys):
    # Off CUDA there is nothing to replay; with the plain Recorder (what CPU tests use for CUDA graphs)
    # the same code path runs, and a restarted replay gives the eager loop's result.
    from fastdiff.samplers.graph import Recorder, GraphedSteps

    assert bench.make_graphed(None, None, torch.zeros(1), 1.0) is None
    made = []

    def cpu_graphed(plan, model, x, guidance):
        made.append(GraphedSteps(plan, model, x, guidance, 0.0, None, None, Recorder()))
        return made[-1]

    monkeypatch.setattr(bench, "make_graphed", cpu_graphed)
    rows = bench.bench((1, 4, 8, 8), torch.device("cpu"), steps=3, repeats=1)
    assert all(r["fastdiff.sample+graph_speedup"] > 0 for r in rows) and len(made) == len(bench.DEFAULT_SAMPLERS.split(","))
    assert "| fastdiff.sample, CUDA graph replay (us, x) |" in bench.markdown(rows)

    from fastdiff.samplers import loop, make_sampler

    plan = make_sampler("dpmpp_2m").plan(4, torch.device("cpu"))
    out = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: out * (1 + t / 1000)  # noqa: E731 - depends on the step, as a model does
    x0 = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    graphed = cpu_graphed(plan, model, x0, 3.0)
    want = loop.run(plan, model, x0, guidance_scale=3.0, progress=False)
    for _ in range(2):  # reset and replay twice: the same answer each time
        graphed.reset(x0)
        for j in range(len(plan)):
            graphed.replay(plan.draws[j])
        torch.testing.assert_close(graphed.x, want)
