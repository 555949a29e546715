"""CPU ops whose output is 32 MiB or more (allocated with a transparent-huge-page hint) stay exact."""

import torch

import fastdiff
from fastdiff.ops import guidance_combine, guidance_combine_reference, sampler_update, sampler_update_reference
from tests.helpers import assert_close_to_reference

# (1, 8_400_000) float32 = 33.6 MB: above the 32 MiB line in csrc/cpu/common.h (advise_huge_pages),
# with a length that is not a multiple of the 2 MiB page or of any vector width.
SHAPE = (1, 8_400_003)


def test_large_guidance_output_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    out = torch.randn((2, SHAPE[1]), generator=g)
    with fastdiff.backend("cpu"):
        got = guidance_combine(out, 7.5)
    assert got.nbytes >= 32 << 20
    assert_close_to_reference(got, guidance_combine_reference(out.double(), 7.5))


def test_large_sampler_update_output_and_history_match_the_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=g)
    m = torch.randn((2, SHAPE[1]), generator=g)
    h = torch.randn((1, *SHAPE), generator=g)
    row = torch.tensor([1.2, -0.4, 0.7, 0.3, 0.0, 0.0, -0.2])
    h_ref = h.double()
    want = sampler_update_reference(x.double(), m.double(), row.double(), history=h_ref, guidance_scale=5.0)
    with fastdiff.backend("cpu"):
        got = sampler_update(x, m, row, history=h, guidance_scale=5.0)
    assert got.nbytes >= 32 << 20
    assert_close_to_reference(got, want)
    assert_close_to_reference(h, h_ref, ulps=1)
