"""fastdiff.nn.GroupNormSiLU: a drop-in torch.nn.GroupNorm (+ SiLU) with GroupNorm's state dict."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdiff.nn import GroupNormSiLU


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_loads_a_group_norm_state_dict_and_computes_the_same(affine, activation):
    torch.manual_seed(0)
    ref = nn.GroupNorm(4, 16, eps=1e-6, affine=affine)
    if affine:
        nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    mod = GroupNormSiLU(4, 16, eps=1e-6, affine=affine, activation=activation)
    mod.load_state_dict(ref.state_dict())
    assert mod.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    want = ref(x) if activation is None else F.silu(ref(x))
    torch.testing.assert_close(mod(x), want, rtol=1e-5, atol=1e-5)


def test_from_group_norm_shares_parameters_and_trains():
    norm = nn.GroupNorm(2, 8)
    mod = GroupNormSiLU.from_group_norm(norm)
    assert mod.weight is norm.weight and mod.bias is norm.bias
    x = torch.randn(3, 8, 5, 5, 2, requires_grad=True)
    mod(x).square().sum().backward()
    assert norm.weight.grad is not None and x.grad is not None and x.grad.shape == x.shape
    assert "activation='silu'" in repr(mod)


def test_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="GroupNormSiLU: argument 'activation' expected None or 'silu', got 'relu'"):
        GroupNormSiLU(2, 8, activation="relu")
