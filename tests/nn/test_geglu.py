"""fastdiff.nn.GEGLU: a drop-in for diffusers' GEGLU (same state dict, same outputs and gradients)."""

import pytest
import torch

from fastdiff.nn import GEGLU

diffusers_activations = pytest.importorskip("diffusers.models.activations")


@pytest.mark.parametrize("bias", [True, False])
def test_loads_diffusers_state_dict_and_matches_it(bias):
    torch.manual_seed(0)
    theirs = diffusers_activations.GEGLU(24, 40, bias=bias)
    ours = GEGLU(24, 40, bias=bias)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 9, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, want = ours(x), theirs(x2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


def test_tanh_approximation():
    m = GEGLU(8, 6, approximate="tanh")
    x = torch.randn(3, 8)
    a, gate = m.proj(x).chunk(2, -1)
    torch.testing.assert_close(m(x), a * torch.nn.functional.gelu(gate, approximate="tanh"), rtol=1e-5, atol=1e-6)
    assert "approximate='tanh'" in repr(m)
