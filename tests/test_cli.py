"""The `fastdiff` command line: the mixture demo, info, bench forwarding, --version, and bad arguments
(the digits demo and `fastdiff sample`: tests/models/test_digits.py)."""

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdiff
from fastdiff import _backend, demo
from fastdiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--mixture", "--samples", "300", "--steps", "4"]


def run_demo_cli(tmp_path, *extra):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), *SMALL, *extra]) == 0
    return out


def test_demo_writes_a_png_of_the_expected_size_and_prints_both_samplers(tmp_path, capsys):
    out = run_demo_cli(tmp_path, "--seed", "3")
    text = capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (1280, 400)  # four 300 px panels with 16 px gaps; titles, ticks and a caption
        pixels = torch.from_numpy(np.array(img.convert("RGB"))).to(torch.int32)
    # Each sampler panel shows its samples (orange dots) over the density (blue); the target panel has no dots.
    def panel(j):
        x0 = demo.PAD + j * (demo.PANEL + demo.PAD)
        return pixels[demo.TITLE_H : demo.TITLE_H + demo.PANEL, x0 : x0 + demo.PANEL]

    def orange(p):
        return ((p[..., 0] > 200) & (p[..., 2] < 150)).sum().item()

    assert orange(panel(0)) == 0
    for j in (1, 2, 3):
        assert orange(panel(j)) > 100, j
    assert (panel(0)[..., 2] - panel(0)[..., 0] > 100).sum() > 1000  # the heatmap is there
    for needle in ("DDIM", "DPM-Solver++(2M)", "ms/step", "SW1", "exact samples (floor)", f"wrote {out}"):
        assert needle in text
    rows = [line for line in text.splitlines() if line.startswith(("DDIM", "DPM-Solver++(2M)"))]
    assert len(rows) == 2 and all(line.split()[1] == "4" for line in rows)
    assert all(line.split()[-1] in _backend.BACKENDS for line in rows)


def test_demo_reports_the_backend_it_was_asked_for_and_folds_guidance_in(tmp_path, capsys):
    run_demo_cli(tmp_path, "--backend", "reference", "--guidance", "3")
    text = capsys.readouterr().out
    assert "guidance 3," in text and "backend reference" in text
    rows = [line for line in text.splitlines() if line.startswith(("DDIM", "DPM-Solver++(2M)"))]
    assert [line.split()[-1] for line in rows] == ["reference", "reference"]


def test_demo_is_reproducible_for_a_seed():
    a = demo.run_demo(steps=3, samples=50, seed=7)
    b = demo.run_demo(steps=3, samples=50, seed=7)
    for ra, rb in zip(a.runs, b.runs):
        assert torch.equal(ra.samples, rb.samples)
        assert ra.distance == rb.distance


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer"),
        (["--steps", "1001"], "argument --steps: expected at most 1000"),
        (["--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
        (["--samples", "1"], "argument --samples: expected at least 2"),
        (["--guidance", "nan"], "argument --guidance: expected a finite number"),
        (["--backend", "fast"], "argument --backend: invalid choice: 'fast'"),
        (["--out", "picture.jpg"], "argument --out: expected a path ending in .png"),
        (["--out", "/no/such/dir/x.png"], "argument --out: directory '/no/such/dir' does not exist"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_demo_rejects_bad_arguments_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["demo", "--mixture", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_demo_refuses_a_backend_that_cannot_serve_here(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the cuda backend serves here")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--backend", "cuda", "--out", str(tmp_path / "x.png"), *SMALL])
    assert e.value.code == 2
    assert "fastdiff demo: error: argument --backend: fastdiff.sampler_update: backend 'cuda' cannot serve" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_no_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "required: {demo,sample,info,bench}" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastdiff {fastdiff.__version__}"


def test_info_lists_versions_and_every_backend_with_its_status(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"fastdiff        {fastdiff.__version__}" in text
    assert torch.__version__ in text
    status = _backend.available()
    for name in _backend.BACKENDS:
        assert f"{name.ljust(9)}  {status[name]}" in text


def test_info_json_is_valid_json_matching_fastdiff_info(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = fastdiff.info()
    assert data == json.loads(json.dumps(want))
    assert set(data["backends"]) == set(_backend.BACKENDS)


def test_bench_forwards_the_remaining_arguments_to_fastdiff_bench_main(monkeypatch):
    seen = []
    fake = types.ModuleType("fastdiff.bench")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fastdiff.bench", fake)
    assert main(["bench", "--op", "guidance", "--help"]) == 3
    assert seen == [["--op", "guidance", "--help"]]


def test_bench_without_the_bench_module_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastdiff.bench", None)  # makes `import fastdiff.bench` fail
    assert main(["bench"]) == 2
    assert "fastdiff bench: the benchmark module fastdiff.bench is not part of this installation" in capsys.readouterr().err


def test_python_dash_m_fastdiff_info_runs_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "fastdiff", "info"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in _backend.BACKENDS:
        assert name in proc.stdout


@pytest.mark.slow  # the Triton interpreter takes ~1-2 s per update on this CPU
@pytest.mark.skipif(importlib.util.find_spec("fastdiff.triton") is None, reason="the Triton kernels (fastdiff.triton) are not in this checkout")
def test_demo_runs_on_the_triton_backend(tmp_path, capsys):
    # CPU tensors reach Triton through its interpreter (conftest sets TRITON_INTERPRET=1 without a GPU).
    run_demo_cli(tmp_path, "--backend", "triton", "--samples", "8", "--steps", "2")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("DDIM", "DPM-Solver++(2M)"))]
    assert [line.split()[-1] for line in rows] == ["triton", "triton"]


def test_demo_without_the_triton_kernels_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastdiff.triton", None)  # as if fastdiff.triton were missing
    monkeypatch.setitem(sys.modules, "fastdiff.triton.sampler_update", None)
    monkeypatch.setattr(_backend, "device_reason", lambda name, device: None)  # pretend triton serves here
    with pytest.raises(SystemExit) as e:
        main(["demo", "--backend", "triton", "--out", str(tmp_path / "x.png"), *SMALL])
    assert e.value.code == 2
    assert "argument --backend: the triton backend could not load its kernels" in capsys.readouterr().err
