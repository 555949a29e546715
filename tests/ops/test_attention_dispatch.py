"""fastdiff.ops.attention's kernel-or-SDPA dispatch: the table, its lookup and its defaults (CPU only)."""

import json

import pytest
import torch

import fastdiff
from fastdiff.bench import attention as attn_bench
from fastdiff.ops import attention, attention_reference
from fastdiff.ops import attention_dispatch as dispatch
from fastdiff.ops.attention_dispatch import Entry, TableError, choose, default_choice, parse_table


def entry(**kw):
    base = dict(arch="sm_90", dtype="bfloat16", head_dim=64, nq=4096, nk=4096, impl="kernel")
    return Entry(**{**base, **kw})


# ---- defaults: what review predicts before any measurement -------------------------------------
@pytest.mark.parametrize("d, nq, nk, impl", [
    (64, 4096, 77, "kernel"),     # SDXL cross-attention: short K/V
    (64, 4096, 4096, "sdpa"),     # SDXL self-attention, a head dim SDPA's fused backends take
    (128, 1024, 1024, "sdpa"),
    (256, 64, 64, "sdpa"),
    (40, 4096, 4096, "kernel"),   # SD-1.5 self-attention, D = 40
    (72, 1024, 1024, "kernel"),   # DiT / PixArt
    (64, 256, 256, "sdpa"),       # short but self-attention (Nk == Nq)
    (64, 64, 77, "sdpa"),         # fewer queries than keys: not the cross-attention shape
    (64, 4096, 257, "sdpa"),      # one key past the one-block path
])
def test_defaults(d, nq, nk, impl):
    c = default_choice(d, nq, nk)
    assert (c.impl, c.source, c.sdpa_backend) == (impl, "default", None)
    assert choose([], "sm_90", "bfloat16", d, nq, nk) == c


def test_the_repository_table_parses():
    dispatch.load_table(dispatch.TABLE_PATH)


# ---- a measured entry overrides the default, for its bucket only ---------------------------------
def test_a_tuned_entry_overrides_the_default():
    table = [entry(nq=4096, nk=77, impl="sdpa", sdpa_backend="flash", kernel_ms=0.2, sdpa_ms=0.1)]
    c = choose(table, "sm_90", "bfloat16", 64, 4096, 77)
    assert (c.impl, c.sdpa_backend, c.source, c.entry) == ("sdpa", "flash", "table", table[0])
    assert choose(table, "sm_90", "bfloat16", 64, 4096, 4096).source == "default"  # other side of the boundary


def test_nearest_bucket_in_log2_lengths_within_a_factor_of_four():
    table = [entry(nq=1024, nk=1024, impl="kernel"), entry(nq=4096, nk=4096, impl="sdpa", sdpa_backend="cudnn")]
    assert choose(table, "sm_90", "bfloat16", 64, 1500, 1500).entry.nq == 1024  # log2 distance 1.1 vs 2.9
    assert choose(table, "sm_90", "bfloat16", 64, 3000, 3000).entry.nq == 4096
    assert choose(table, "sm_90", "bfloat16", 64, 8192, 8192).entry.nq == 4096  # distance exactly 1 + 1
    far = choose(table, "sm_90", "bfloat16", 64, 8193, 8192)  # just past a factor of 4 in total
    assert far.source == "default" and far.impl == "sdpa"
    assert choose(table, "sm_90", "bfloat16", 64, 257, 300).source == "default"  # 1.99 + 1.77 from 1024


def test_a_tie_goes_to_the_entry_listed_first():
    table = [entry(nq=1024, nk=1024, impl="sdpa", sdpa_backend="efficient"), entry(nq=4096, nk=4096, impl="kernel")]
    assert choose(table, "sm_90", "bfloat16", 64, 2048, 2048).entry is table[0]
    assert choose(table[::-1], "sm_90", "bfloat16", 64, 2048, 2048).entry is table[1]


@pytest.mark.parametrize("arch, dtype, d", [("sm_80", "bfloat16", 64), ("sm_90", "float16", 64), ("sm_90", "bfloat16", 128)])
def test_measurements_never_carry_across_arch_dtype_or_head_dim(arch, dtype, d):
    table = [entry(impl="kernel")]  # would override the SDPA default for exactly (sm_90, bf16, 64)
    assert choose(table, arch, dtype, d, 4096, 4096).source == "default"


def test_short_kv_entries_do_not_speak_for_tiled_calls():
    table = [entry(nq=4096, nk=256, impl="sdpa", sdpa_backend="flash")]
    assert choose(table, "sm_90", "bfloat16", 64, 4096, 256).source == "table"
    assert choose(table, "sm_90", "bfloat16", 64, 4096, 300).source == "default"


# ---- a malformed table is refused, naming what is wrong ------------------------------------------
GOOD = dict(arch="sm_90", dtype="bfloat16", head_dim=64, nq=4096, nk=77, impl="sdpa", sdpa_backend="flash")


@pytest.mark.parametrize("doc, match", [
    ([], "the document expected a JSON object"),
    ({"schema": 2, "entries": []}, "'schema' expected 1, got 2"),
    ({"schema": 1}, "'entries' expected a list"),
    ({"schema": 1, "entries": [7]}, "entry 0: the entry expected an object"),
    ({"schema": 1, "entries": [{**GOOD, "arch": "hopper"}]}, "entry 0: 'arch' expected 'sm_<major><minor>'"),
    ({"schema": 1, "entries": [{**GOOD, "dtype": "float32"}]}, "'dtype' expected float16 or bfloat16"),
    ({"schema": 1, "entries": [{**GOOD, "nk": 0}]}, "'nk' expected a positive integer, got 0"),
    ({"schema": 1, "entries": [{**GOOD, "head_dim": 64.0}]}, "'head_dim' expected a positive integer"),
    ({"schema": 1, "entries": [{**GOOD, "impl": "triton"}]}, "'impl' expected kernel or sdpa"),
    ({"schema": 1, "entries": [{**GOOD, "sdpa_backend": "fast"}]}, "'sdpa_backend' expected null or one of flash"),
    ({"schema": 1, "entries": [{**GOOD, "sdpa_ms": -1}]}, "'sdpa_ms' expected null or a positive number"),
    ({"schema": 1, "entries": [{**GOOD, "speedup": 2}]}, r"fields expected only the known ones .* \['speedup'\]"),
    ({"schema": 1, "entries": [{k: v for k, v in GOOD.items() if k != "nq"}]}, "fields expected .* got 'missing nq'"),
    ({"schema": 1, "entries": [GOOD, {**GOOD, "impl": "kernel"}]}, r"entry 1: \(arch, dtype, head_dim, nq, nk\) expected to be unique"),
])
def test_malformed_tables_are_refused_clearly(doc, match):
    with pytest.raises(TableError, match=r"fastdiff attention dispatch table t\.json.*" + match):
        parse_table(doc, "t.json")


def test_a_file_that_is_not_json_is_refused_with_its_path(tmp_path):
    bad = tmp_path / "table.json"
    bad.write_text("{not json")
    with pytest.raises(TableError, match=f"{bad}: not valid JSON"):
        dispatch.load_table(bad)


def test_written_tables_read_back_merged_and_sorted(tmp_path):
    path = tmp_path / "table.json"
    old = [entry(nq=4096, nk=77, impl="kernel"), entry(nq=1024, nk=1024, impl="sdpa", sdpa_backend="flash")]
    dispatch.write_table(old, path)
    new = [entry(nq=4096, nk=77, impl="sdpa", sdpa_backend="cudnn", kernel_ms=0.3, sdpa_ms=0.2)]
    dispatch.write_table(dispatch.merge(dispatch.load_table(path), new), path)
    got = dispatch.load_table(path)
    assert [(e.nq, e.nk, e.impl) for e in got] == [(1024, 1024, "sdpa"), (4096, 77, "sdpa")]
    assert json.loads(path.read_text())["entries"][1] == {**GOOD, "sdpa_backend": "cudnn", "kernel_ms": 0.3, "sdpa_ms": 0.2}


# ---- --tune: entries from the benchmark's forward rows -------------------------------------------
def test_tune_picks_sdpa_only_where_it_beats_the_kernel():
    def rows(nq, nk, d, kernel, flash, cudnn):
        base = dict(Nq=nq, Nk=nk, D=d, mode="fwd")
        return [dict(base, impl="fastdiff-cuda", ms=kernel), dict(base, impl="fastdiff-triton", ms=kernel / 2),
                dict(base, impl="sdpa-flash", ms=flash), dict(base, impl="sdpa-cudnn", ms=cudnn),
                dict(base, impl="sdpa-math", skipped="no kernel"), dict(base, mode="bwd", impl="fastdiff-cuda", ms=0.01)]

    got = attn_bench.tuned_entries(rows(4096, 4096, 64, 1.0, 0.8, 0.7) + rows(4096, 77, 40, 0.1, 0.3, 0.2),
                                   torch.bfloat16, "sm_90", "fastdiff-cuda")
    assert got == [Entry("sm_90", "bfloat16", 64, 4096, 4096, "sdpa", "cudnn", 1.0, 0.7),
                   Entry("sm_90", "bfloat16", 40, 4096, 77, "kernel", "cudnn", 0.1, 0.2)]


# ---- the call path ---------------------------------------------------------------------------------
def test_cpu_calls_never_consult_the_table(monkeypatch):
    monkeypatch.setattr(dispatch, "table", lambda: pytest.fail("the table was read for a CPU call"))
    q = torch.randn(1, 5, 2, 64, dtype=torch.bfloat16)
    assert dispatch.maybe_sdpa(q, q, q, 0.125, masked=False, forced=False) is None
    attention(q, q, q)


def test_float32_cpu_calls_go_to_sdpa_where_it_measured_faster(monkeypatch):
    monkeypatch.setattr(dispatch, "table", lambda: pytest.fail("the table was read for a CPU call"))
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, n, 2, 64, generator=g) for n in (300, 300, 300))
    torch.testing.assert_close(dispatch.maybe_sdpa(q, k, v, 0.125, masked=False, forced=False), dispatch.sdpa(q, k, v, 0.125))
    assert dispatch.maybe_sdpa(q, k, v, 0.125, masked=True, forced=False) is None
    assert dispatch.maybe_sdpa(q, k, v, 0.125, masked=False, forced=True) is None
    assert dispatch.maybe_sdpa(q.half(), k.half(), v.half(), 0.125, masked=False, forced=False) is None
    for d, nq, nk, want in [(8, 300, 300, "kernel"), (8, 4, 1000, "kernel"), (16, 300, 77, "kernel"),
                            (16, 300, 300, "sdpa"), (16, 50, 77, "sdpa"), (40, 300, 77, "sdpa"), (64, 300, 300, "sdpa")]:
        assert dispatch.cpu_choice(d, nq, nk) == want, (d, nq, nk)
    d8 = [t[..., :8] for t in (q, k, v)]
    assert dispatch.maybe_sdpa(*d8, 0.125, masked=False, forced=False) is None


def test_masked_and_forced_calls_stay_on_the_kernel(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(dispatch, "table", lambda: pytest.fail("the table was read"))
    q = torch.randn(1, 5, 2, 64, dtype=torch.bfloat16)
    assert dispatch.maybe_sdpa(q, q, q, 0.125, masked=True, forced=False) is None
    assert dispatch.maybe_sdpa(q, q, q, 0.125, masked=False, forced=True) is None


def test_sdpa_path_returns_contiguous_bnhd_in_the_input_dtype():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=g) for n in (9, 13, 13))
    for backend in (None, "math"):
        out = dispatch.sdpa(q, k, v, 0.3, backend)
        assert out.shape == (2, 9, 3, 16) and out.is_contiguous() and out.dtype == q.dtype
        torch.testing.assert_close(out, attention_reference(q, k, v, scale=0.3))


def test_info_shows_the_table():
    shown = fastdiff.info()["attn_dispatch"]
    assert shown["table"].endswith("attention_table.json") and "short-K/V cross-attention" in shown["default"]
    assert "entries" in shown


def test_unmasked_gpu_calls_go_where_the_table_says(monkeypatch):
    """With CUDA faked on CPU tensors: SDPA serves (B, N, H, 64) self-attention by default, the kernel D = 40."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(dispatch, "arch_of", lambda device: "sm_90")
    monkeypatch.setattr(dispatch, "table", lambda: [])
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 2, 64, generator=g).bfloat16() for _ in range(3))
    out = dispatch.maybe_sdpa(q, k, v, 0.125, masked=False, forced=False)
    torch.testing.assert_close(out, dispatch.sdpa(q, k, v, 0.125))
    assert dispatch.maybe_sdpa(q[..., :40], k[..., :40], v[..., :40], 0.125, masked=False, forced=False) is None
    monkeypatch.setattr(dispatch, "table", lambda: [entry(nq=6, nk=6, impl="kernel")])
    assert dispatch.maybe_sdpa(q, k, v, 0.125, masked=False, forced=False) is None
