"""The CPU ops split large inputs over torch's threads and give bitwise the same result on any thread count."""

import pytest
import torch

import fastdiff
from fastdiff.ops import guidance_combine, sampler_update


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def run_all(m, x, h, row):
    with fastdiff.backend("cpu"):
        g = guidance_combine(m, 7.5, rescale=0.7)
        hist = h.clone()
        out = sampler_update(x, m, row, history=hist, guidance_scale=torch.tensor([3.0, 7.5]), guidance_rescale=0.5)
    return g, out, hist


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_and_two_threads_agree_bitwise(threads, dtype):
    gen = torch.Generator().manual_seed(3)
    shape = (2, 3, 211, 307)  # 194,331 elements per sample: several parallel chunks, odd split points
    x = torch.randn(shape, generator=gen).to(dtype)
    m = torch.randn((4, *shape[1:]), generator=gen).to(dtype)
    h = torch.randn((2, *shape), generator=gen).to(dtype)
    row = torch.tensor([1.1, -0.3, 0.6, 0.4, 0.0, 1.0, -0.2, 0.3])
    threads(1)
    one = run_all(m, x, h, row)
    threads(2)
    two = run_all(m, x, h, row)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
