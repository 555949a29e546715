"""Samplers built on the fused `sampler_update` op."""

from .coefficients import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod

__all__ = ["ddim_table", "dpmpp_2m_table", "scaled_linear_alphas_cumprod"]
