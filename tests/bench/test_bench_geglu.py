"""`fastdiff bench geglu`: verified rows for each mode, saved as JSON and markdown; mismatches fail."""

import json

import pytest

from fastdiff.bench import geglu as bench


def test_shapes_are_sd15_feed_forwards():
    for name in bench.SHAPE_SETS["sd15"]:
        rows, channels = bench.SHAPES[name]
        assert rows % 2 == 0 and channels in (320, 640, 1280)


def test_command_writes_verified_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.SHAPES, "tiny", (6, 10))
    rc = bench.main(["--device", "cpu", "--shapes", "tiny", "--rounds", "2", "--no-compile", "--save", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*-geglu.json")
    doc = json.loads(path.read_text())
    assert [r["variant"] for r in doc["results"]] == ["forward (none)", "backward (none)"]
    assert all(r["verified"] and r["speedups"]["fastdiff"]["eager"]["median"] > 0 for r in doc["results"])
    assert "| tiny |" in next(tmp_path.glob("*-geglu.md")).read_text()


def test_a_wrong_kernel_is_reported_not_timed(monkeypatch, capsys):
    import fastdiff.ops

    monkeypatch.setitem(bench.SHAPES, "tiny", (4, 8))
    monkeypatch.setattr(fastdiff.ops, "geglu", lambda x, approximate: fastdiff.ops.geglu_reference(x) * 1.01)
    assert bench.main(["--device", "cpu", "--shapes", "tiny", "--rounds", "1", "--no-compile", "--modes", "forward"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--shapes", "nope"]])
def test_unknown_shape_is_an_error(argv, capsys):
    assert bench.main(["--device", "cpu", *argv]) == 2
    assert "unknown shapes" in capsys.readouterr().err
