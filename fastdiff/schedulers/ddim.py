"""DDIMScheduler (Song et al. 2021), diffusers-compatible, one fused launch per step."""

from __future__ import annotations

import math
from typing import Optional, Union

import diffusers
import torch
from torch import Tensor

from ..solvers.rows import x0_conversion
from ..solvers.scheduling import ddim as core
from ._base import FusedStep, affine_pass, clip_x0, conform, draw_noise, x0_from_coeffs


@conform
class DDIMScheduler(FusedStep, core.DDIMScheduler, diffusers.DDIMScheduler):
    """Drop-in for ``diffusers.DDIMScheduler``.

    As in diffusers, step i goes from ``t`` to ``t - num_train_timesteps // num_inference_steps``
    (not to the next listed timestep) and ``eta`` is a step() argument; each eta value gets its own
    table, built once. As there, a step depends on its timestep only: steps may come in any order,
    and a timestep outside the schedule is stepped in plain PyTorch. ``pred_original_sample`` is a
    view valid until the next step.
    """

    def step(
        self,
        model_output: Tensor,
        timestep: Union[int, Tensor],
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[Tensor] = None,
        return_dict: bool = True,
    ):
        self._check_timed()
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                             " `variance_noise` stays `None`.")
        eta = float(eta)
        # DDIM's step depends on the timestep alone (diffusers keeps no position): find its row, and
        # step a timestep outside the schedule in plain PyTorch
        i = self._position(timestep)
        if i is None:
            t = int(timestep)
            ab, abp = self._abar_at(t)
            x0 = self._plain_x0(model_output, sample, ab)
            return self._plain_step(x0, clip_x0(self.config, x0) if self._clips() else x0, sample, ab, abp, eta,
                                    use_clipped_model_output, generator, variance_noise, model_output, return_dict)
        self._step_index, self._run_begin = i, 0
        if not self._tabulated(sample.device, eta):
            # a schedule with an unusable level elsewhere (diffusers' tests step beta_end=2 at t = 0)
            ab, abp = self._abar_at(int(self._ts_host[i]))
            self._step_index += 1
            x0 = self._plain_x0(model_output, sample, ab)
            return self._plain_step(x0, clip_x0(self.config, x0) if self._clips() else x0, sample, ab, abp, eta,
                                    use_clipped_model_output, generator, variance_noise, model_output, return_dict)
        if self._clips():
            return self._clipped_step(model_output, sample, eta, use_clipped_model_output, generator, variance_noise, return_dict)
        prev, x0 = self._fused_step(model_output, sample, key=(eta,), generator=generator, noise=variance_noise,
                                    noise_dtype=model_output.dtype)
        return self._output(return_dict, prev, pred_original_sample=x0)

    def _tabulated(self, device, eta: float) -> bool:
        try:
            self._table(device, 0, (eta,))
        except ValueError:
            return False
        return True

    def _clips(self) -> bool:
        return bool(self.config.thresholding or self.config.clip_sample)

    def _missing_timestep(self, v: float):
        return None

    def _abar_at(self, t: int) -> tuple[float, float]:
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        ac = self.alphas_cumprod
        return float(ac[t]), float(ac[prev]) if prev >= 0 else float(self.final_alpha_cumprod)

    def _plain_x0(self, model_output: Tensor, sample: Tensor, ab: float) -> Tensor:
        a, b = x0_conversion(self.config.prediction_type, math.sqrt(ab), math.sqrt(1.0 - ab))
        return x0_from_coeffs(a, b, sample, model_output)

    def _clipped_step(self, model_output, sample, eta, use_clipped, generator, variance_noise, return_dict):
        """Clipping / thresholding x0 is not linear. With use_clipped_model_output the step is still
        linear in (x, clipped x0): the fused row reads the clipped x0. Otherwise DDIM mixes the
        clipped x0 with the unclipped epsilon, and the step is computed in plain PyTorch."""
        if not use_clipped and self.config.prediction_type == "epsilon" and affine_pass(self).usable(sample, model_output):
            return self._clipped_epsilon_step(model_output, sample, eta, generator, variance_noise, return_dict)
        x0_raw = self._x0_from_table(sample, model_output, (eta,))
        x0 = clip_x0(self.config, x0_raw)
        if use_clipped:
            prev, _ = self._fused_step(model_output, sample, key=(eta,), generator=generator, noise=variance_noise,
                                       noise_dtype=model_output.dtype, model_override=x0)
            return self._output(return_dict, prev, pred_original_sample=x0)
        ab, abp = self._abar_at(int(self._ts_host[self._step_index]))
        self._step_index += 1
        return self._plain_step(x0_raw, x0, sample, ab, abp, eta, False, generator, variance_noise, model_output, return_dict)

    def _clipped_epsilon_step(self, model_output, sample, eta, generator, variance_noise, return_dict):
        """An epsilon model's clipped step: x0 = a x + b m in one pass, clipped in place, then
        sqrt(abp) x0 + c_eps m (+ std z) in another (two fused launches with fixed rows, AffinePass)."""
        ab, abp = self._abar_at(int(self._ts_host[self._step_index]))
        self._step_index += 1
        affine = affine_pass(self)
        x0 = affine(sample, model_output, *x0_conversion("epsilon", math.sqrt(ab), math.sqrt(1.0 - ab)))
        x0 = clip_x0(self.config, x0)
        std, c_eps = _noise_and_eps_coeffs(ab, abp, eta)
        if eta > 0:
            if variance_noise is None:
                variance_noise = draw_noise(model_output.shape, generator, model_output.device, model_output.dtype)
            if affine.usable(sample, variance_noise):
                prev = affine(x0, model_output, math.sqrt(abp), c_eps, variance_noise, std)
            else:
                prev = affine(x0, model_output, math.sqrt(abp), c_eps) + std * variance_noise
        else:
            prev = affine(x0, model_output, math.sqrt(abp), c_eps)
        return self._output(return_dict, prev, pred_original_sample=x0)

    def _plain_step(self, x0_raw, x0, sample, ab, abp, eta, use_clipped, generator, variance_noise, model_output, return_dict):
        """diffusers' DDIM update in PyTorch (eq. 12), epsilon from the unclipped x0 unless use_clipped
        (an epsilon model's unclipped epsilon is its output, as diffusers takes it)."""
        if not use_clipped and self.config.prediction_type == "epsilon":
            eps = model_output
        else:
            eps = (sample - math.sqrt(ab) * (x0 if use_clipped else x0_raw)) / math.sqrt(1.0 - ab)
        std, c_eps = _noise_and_eps_coeffs(ab, abp, eta)
        if eps.dtype == x0.dtype == torch.float32:
            prev = torch.mul(eps, c_eps).add_(x0, alpha=math.sqrt(abp))
        else:
            prev = math.sqrt(abp) * x0 + c_eps * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = draw_noise(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + std * variance_noise
        return self._output(return_dict, prev, pred_original_sample=x0)


def _noise_and_eps_coeffs(ab: float, abp: float, eta: float) -> tuple[float, float]:
    """DDIM's (eq. 12) noise std and the epsilon coefficient, stepping from abar ``ab`` to ``abp``."""
    std = eta * math.sqrt(max((1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp), 0.0))
    return std, math.sqrt(max(1.0 - abp - std * std, 0.0))
