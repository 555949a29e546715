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
    assert set(row["columns"]) == {"eager", "patched"}
    assert row["columns"]["patched"]["rel_err_vs_eager"] < 1e-4
    assert json.loads(path.read_text())["clock"] == "cpu"
    md = (tmp_path / path.name.replace(".json", ".md")).read_text()
    assert md.startswith("# fastdiff bench e2e") and "cpu clock" in md
