"""The Triton attention launchers' GPU path with FASTDIFF_TRITON_AUTOTUNE=0: one fixed config per kernel.

Run under the interpreter with the launchers told they are on a GPU, so the fixed configurations'
block shapes (not the interpreter's small ones) are exercised against the reference.
"""

import pytest
import torch

import fastdiff
from fastdiff.ops import attention, attention_reference

tri = pytest.importorskip("fastdiff.triton.attention")
pytestmark = pytest.mark.skipif(not tri._interpreting(), reason="needs TRITON_INTERPRET=1 (a GPU runs tests/ops/test_attention.py)")


def test_autotune_switch_reads_the_environment(monkeypatch):
    monkeypatch.delenv(tri.AUTOTUNE_ENV, raising=False)
    assert tri.autotuning()
    for off in ("0", "off", "false"):
        monkeypatch.setenv(tri.AUTOTUNE_ENV, off)
        assert not tri.autotuning()


def test_fixed_configs_come_from_each_tuners_own_list():
    for tuner in (tri._fwd_short, tri._fwd_tiled, tri._bwd_dkdv, tri._bwd_dq):
        for d in (8, 64, 128, 160, 256):
            assert tri.fixed_config(tuner, d) in tuner.configs
    assert tri.fixed_config(tri._fwd_tiled, 64) is tri._fwd_tiled.configs[0]
    wide = tri.fixed_config(tri._fwd_tiled, 256).kwargs
    assert wide["BLOCK_M"] * wide["BLOCK_N"] == min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in tri._fwd_tiled.configs)


@pytest.mark.parametrize("nk", [77, 300], ids=["one_block", "tiled"])
def test_fixed_config_launches_match_the_reference(monkeypatch, nk):
    monkeypatch.setenv(tri.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(tri, "_interpreting", lambda: False)  # the GPU launch path, still interpreted
    launched = []
    fixed = tri.fixed_config
    monkeypatch.setattr(tri, "fixed_config", lambda t, d: launched.append(t) or fixed(t, d))
    g = torch.Generator().manual_seed(nk)
    q, k, v = (torch.randn(1, n, 2, 72, generator=g).half().requires_grad_() for n in (70, nk, nk))
    with fastdiff.backend("triton"):
        out = attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q64, k64, v64)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), torch.ones_like(ref))
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)
    assert launched == [tri._fwd_short if nk <= tri.SHORT_KV_MAX else tri._fwd_tiled, tri._bwd_dkdv, tri._bwd_dq]
