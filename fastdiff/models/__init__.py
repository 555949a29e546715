"""Models to sample from: the trained digits DiT (safetensors shipped in this package) and analytic
targets with exact denoisers."""

from .digits import DigitsDiT, digits_dit, sample_digits
from .gaussian_mixture import GaussianMixture, MixtureModel, sliced_wasserstein

__all__ = ["DigitsDiT", "GaussianMixture", "MixtureModel", "digits_dit", "sample_digits", "sliced_wasserstein"]
