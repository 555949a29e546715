"""fastdiff bench e2e: the cases the issue names, and a CPU smoke run that checks and times its columns."""

import json

import pytest

pytest.importorskip("diffusers")

from fastdiff.bench import FAMILY_BENCHES, e2e  # noqa: E402


def test_registered_and_covers_the_named_models():
    assert FAMILY_BENCHES["e2e"][0] == "e2e"
    names = {c.name for c in e2e.GPU_CASES}
    for px in (256, 512):
        for b in (8, 32):
            assert {f"dit-xl2-{px}-b{b}-ddim50", f"dit-xl2-{px}-b{b}-dpmpp_2m20"} <= names
    assert {"sd15-unet-512-b1-dpmpp_2m20", "sd15-unet-512-b8-dpmpp_2m20", "sd-vae-decode-512", "sd-vae-decode-1024"} <= names
    assert {c.kind for c in e2e.CPU_CASES} == {"sample", "decode", "train"}


def test_cpu_smoke_run_writes_checked_results(tmp_path):
    assert e2e.main(["--device", "cpu", "--cases", "tiny-vae-decode", "--rounds", "1", "--clock", "cpu",
                     "--save", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-e2e.json")
    row = json.loads(path.read_text())["rows"][0]
    assert set(row["columns"]) == {"eager", "patched", "control"}
    assert row["columns"]["control"]["rel_err_vs_eager"] == 0  # the same model, unpatched
    assert row["columns"]["patched"]["rel_err_vs_eager"] < 1e-4
    assert json.loads(path.read_text())["clock"] == "cpu"
    md = (tmp_path / path.name.replace(".json", ".md")).read_text()
    assert md.startswith("# fastdiff bench e2e") and "cpu clock" in md


def test_sampling_cases_time_the_loops_alone_against_diffusers_loop():
    import torch

    from fastdiff.bench import _timing

    tiny = e2e.Case("tiny-dit", "sample", "dit", dict(num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                                      sample_size=8), 1, 8, 3, "dpmpp_2m")
    row = e2e.run_case(tiny, torch.device("cpu"), torch.float32, _timing.TimingPlan(1, 0, 0.0), use_compile=False)
    cols = row["columns"]
    assert row["verified"]
    assert {"eager", "generate", "loop:eager", "loop:accelerate", "loop:generate"} <= set(cols)
    assert cols["loop:generate"]["baseline"] == "loop:eager" and cols["generate"]["baseline"] == "eager"
    # around one recorded output, the loops agree with diffusers' loop
    assert cols["loop:generate"]["rel_err_vs_eager"] < 1e-5 and cols["loop:accelerate"]["rel_err_vs_eager"] < 1e-5
