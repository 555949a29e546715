"""Brownian-tree noise for the SDE samplers (k-diffusion's BrownianTreeNoiseSampler, as diffusers
uses it): unit-variance increments of one Brownian motion over the sigma range, queried by level,
so noise over overlapping intervals is consistent. Needs torchsde (optional), with the tree
settings diffusers uses, so the same seed gives diffusers' noise."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor


def _torchsde():
    try:
        import torchsde
    except ImportError as e:
        raise ImportError("fastdiff: DPMSolverSDEScheduler (sampler 'dpmpp_sde') draws Brownian-tree noise with torchsde: "
                          "pip install torchsde") from e
    return torchsde


def require_torchsde() -> None:
    """Raise the ImportError above now if torchsde is missing."""
    _torchsde()


def _seeded_randn(size, dtype, device, seed) -> Tensor:
    """torchsde's brownian_interval._randn (a fresh generator per seed, then torch.randn), drawn
    through fastdiff.ops.randn: the same values."""
    from ..ops.randn import randn  # lazily: the op layer imports solvers

    return randn(size, generator=torch.Generator(device).manual_seed(int(seed)), device=device, dtype=dtype)


@contextlib.contextmanager
def _fast_tree_noise() -> Iterator[None]:
    """While a tree is queried, torchsde draws its noise through `_seeded_randn`. A query draws
    dozens of latent-sized tensors (each a torch.randn from a new seed), most of a step's time; the
    values are torch.randn's, so other users of torchsde see no difference."""
    from torchsde._brownian import brownian_interval as bi

    original = bi._randn
    bi._randn = _seeded_randn
    try:
        yield
    finally:
        bi._randn = original


class BrownianNoise:
    """Unit-variance Brownian increments between levels in [sigma_min, sigma_max] for tensors like ``x``."""

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, seed: Optional[int] = None):
        torchsde = _torchsde()
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        # the tree's range and query levels as float32 tensors, as diffusers passes them: the increments
        # depend on the exact query points
        self.tree = torchsde.BrownianInterval(t0=torch.as_tensor(sigma_min), t1=torch.as_tensor(sigma_max), size=x.shape,
                                              dtype=x.dtype, device=x.device, entropy=seed, tol=1e-6, pool_size=24,
                                              halfway_tree=True, cache_size=self.cache_size(x))

    @staticmethod
    def cache_size(x: Tensor) -> int:
        """How many interval results the tree keeps. The values do not depend on it (an evicted interval
        is recomputed from the same seeds); a sampling run's queries recompute far less with twice
        torchsde's default 45, so take up to 90 while the cache (two tensors like x per entry) stays
        under 64 MiB."""
        per_entry = 2 * max(1, x.numel() * x.element_size())
        return max(45, min(90, (64 << 20) // per_entry))

    def raw(self, sigma, sigma_next) -> tuple[Tensor, float]:
        """(w, scale): the tree's increment over [min, max] of the two levels, and the factor
        +-1 / sqrt(|sigma_next - sigma|) (negative when sigma > sigma_next) that makes ``w * scale`` the unit
        increment from sigma to sigma_next; a caller may fold the factor into a coefficient, saving a pass."""
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (sigma, sigma_next, 1.0) if sigma < sigma_next else (sigma_next, sigma, -1.0)
        with _fast_tree_noise():
            w = self.tree(lo, hi)
        return w, sign / float((hi - lo).abs().sqrt())

    def __call__(self, sigma, sigma_next) -> Tensor:
        """The unit-variance increment from sigma to sigma_next (diffusers' noise_sampler(sigma, sigma_next))."""
        w, scale = self.raw(sigma, sigma_next)
        return w * scale
