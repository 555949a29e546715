"""Models to sample from: analytic targets with exact denoisers (and, later, the tiny demo DiT)."""

from .gaussian_mixture import GaussianMixture, MixtureModel, sliced_wasserstein

__all__ = ["GaussianMixture", "MixtureModel", "sliced_wasserstein"]
