"""The one backend-selection path: each op family declares what its backends serve in a
`_backend.Family`, and every op chooses through `Family.select`."""

from __future__ import annotations

import importlib

import pytest
import torch

import fastdiff
from fastdiff import _backend, ops

CPU = torch.device("cpu")
# (fastdiff.ops.attention is the op; the modules are reached by name.)
FAMILY_MODULES = {name: importlib.import_module(f"fastdiff.ops.{name}")
                  for name in ("guidance", "sampler_update", "adaln", "attention", "geglu", "group_norm")}
adaln, attention, sampler_update = (FAMILY_MODULES[n] for n in ("adaln", "attention", "sampler_update"))


def test_every_op_family_declares_its_backends_once():
    declared = _backend.families()
    for name, module in FAMILY_MODULES.items():
        assert declared[name] is module.FAMILY
        assert _backend.family(name) is module.FAMILY
    with pytest.raises(ValueError, match="no op family 'nope'; known: .*adaln"):
        _backend.family("nope")


def _calls() -> dict[str, tuple[str, callable]]:
    """One small CPU call of every public op: (its family, the call)."""
    x = torch.randn(2, 3, 8)
    m = torch.randn(4, 3, 8)
    row = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, -1.0])
    q = torch.randn(1, 4, 2, 16)
    return {
        "guidance_combine": ("guidance", lambda: ops.guidance_combine(m, 2.0)),
        "sampler_update": ("sampler_update", lambda: ops.sampler_update(x, m, row, guidance_scale=2.0)),
        "adaln_modulate": ("adaln", lambda: ops.adaln_modulate(x, x[:, 0], x[:, 0])),
        "gated_residual": ("adaln", lambda: ops.gated_residual(x, x[:, 0], x)),
        "gated_residual_adaln": ("adaln", lambda: ops.gated_residual_adaln(x, x[:, 0], x, x[:, 0], x[:, 0])),
        "attention": ("attention", lambda: ops.attention(q, q, q)),
        "geglu": ("geglu", lambda: ops.geglu(x)),
        "group_norm": ("group_norm", lambda: ops.group_norm(x, 3)),
    }


def test_every_op_selects_through_its_family(monkeypatch):
    seen = []
    select = _backend.Family.select

    def spy(self, op, device, dtypes=(), **features):
        seen.append((self.name, op))
        return select(self, op, device, dtypes, **features)

    monkeypatch.setattr(_backend.Family, "select", spy)
    public = {name for name in ops.__all__ if not name.endswith("_reference") and name != "InputError"}
    calls = _calls()
    assert set(calls) == public, "a public op without a selection test"
    for op, (family, call) in calls.items():
        seen.clear()
        call()
        assert seen == [(family, op)]


def test_auto_choice_and_the_reasons_of_every_backend():
    fam = adaln.FAMILY
    assert fam.select("adaln_modulate", CPU, (torch.float32,)) == "cpu"
    assert fam.select("adaln_modulate", CPU, (torch.float64,)) == "reference"
    why = fam.reasons(CPU, (torch.float64,))
    assert set(why) == set(_backend.BACKENDS)
    assert why["reference"] is None
    assert why["cpu"] == "the cpu kernels of adaln take float32, float16 or bfloat16, got torch.float64"
    assert "serves CUDA tensors" in why["cuda"]
    assert why["triton"]  # refused: on the device (no interpreter) or on the dtype


def test_a_family_limits_each_backend_on_its_own_terms():
    why = attention.FAMILY.reasons(CPU, (torch.float16,), head_dim=12, bias_grad=False)
    assert why["cpu"] is None  # the CPU kernel takes any head dim
    bias_grad = attention.FAMILY.reason("cpu", CPU, (torch.float32,), head_dim=12, bias_grad=True)
    assert bias_grad == "cpu attention does not differentiate the bias, and this bias requires grad"
    if _backend.device_reason("triton", CPU) is None:
        assert why["triton"] == "triton attention needs fp16/bf16 and D a multiple of 8 <= 256, got torch.float16 and D=12"
        assert attention.FAMILY.reason("triton", CPU, (torch.float16,), head_dim=16, bias_grad=False) is None
    coeffs64 = sampler_update.FAMILY.reasons(CPU, (torch.float32, torch.float32), coeffs_dtype=torch.float64)
    assert coeffs64["cpu"] == "the kernels take float32 coefficient rows, got torch.float64"


@pytest.mark.parametrize(
    "backend, call, match",
    [
        ("cpu", lambda: ops.adaln_modulate(*[torch.randn(2, 3, 8, dtype=torch.float64)] * 3),
         r"fastdiff\.adaln_modulate: backend 'cpu' cannot serve these inputs: the cpu kernels of adaln take "
         r"float32, float16 or bfloat16, got torch\.float64"),
        ("cuda", lambda: ops.guidance_combine(torch.randn(4, 3), 2.0),
         r"fastdiff\.guidance_combine: backend 'cuda' cannot serve these inputs: the cuda backend serves CUDA tensors"),
        ("cpu", lambda: ops.sampler_update(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([1.0, 0, 1, 0, 0, -1], dtype=torch.float64)),
         r"fastdiff\.sampler_update: backend 'cpu' cannot serve these inputs: the kernels take float32 coefficient rows"),
        ("cpu", lambda: ops.attention(*[torch.randn(1, 4, 2, 16, dtype=torch.float64)] * 3),
         r"fastdiff\.attention: backend 'cpu' cannot serve these inputs: the cpu kernels of attention take float32, "
         r"float16 or bfloat16, got torch\.float64"),
    ],
)
def test_a_forced_backend_that_cannot_serve_raises_with_the_reason(backend, call, match):
    with fastdiff.backend(backend), pytest.raises(fastdiff.BackendUnavailable, match=match):
        call()


@pytest.fixture
def toy_family(monkeypatch):
    """A family whose cpu kernels this build of fastdiff._C does not carry."""
    monkeypatch.setattr(_backend, "_FAMILIES", dict(_backend._FAMILIES))
    return _backend.Family(
        "toy",
        cpu=_backend.Support(kernels=("toy_op_that_does_not_exist",)),
        triton=_backend.Support(dtypes=(torch.float16,), check=lambda b, dtypes, *, n: None if n % 2 == 0 else f"odd n={n}"),
    )


def test_declarations_cover_compiled_kernels_undeclared_backends_and_shapes(toy_family):
    assert not toy_family.carried("cpu")
    assert toy_family.reason("cpu", CPU, (torch.float32,), n=2) == (
        "fastdiff._C carries no cpu kernels for toy (rebuild the extension)")
    assert toy_family.reason("cuda", torch.device("cuda"), (torch.float32,), n=2) == "fastdiff has no cuda kernels for toy"
    assert toy_family.select("toy_op", CPU, (torch.float32,), n=2) == "reference"
    assert _backend.family("toy") is toy_family
    if _backend.device_reason("triton", CPU) is None:
        assert toy_family.reason("triton", CPU, (torch.float16,), n=3) == "odd n=3"
        assert toy_family.reason("triton", CPU, (torch.float32,), n=2) == "the triton kernels of toy take float16, got torch.float32"
        with fastdiff.backend("triton"):
            assert toy_family.select("toy_op", CPU, (torch.float16,), n=2) == "triton"
    with fastdiff.backend("cpu"), pytest.raises(fastdiff.BackendUnavailable, match="carries no cpu kernels for toy"):
        toy_family.select("toy_op", CPU, (torch.float32,), n=2)


def test_a_family_rejects_unknown_backend_names(monkeypatch):
    monkeypatch.setattr(_backend, "_FAMILIES", dict(_backend._FAMILIES))
    with pytest.raises(ValueError, match="Family\\('bad'\\) expected one of cuda, triton, cpu, reference, got 'gpu'"):
        _backend.Family("bad", gpu=_backend.Support())
