"""LCMScheduler: latent consistency model sampling (Luo et al. 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers
from ._vp import VPScheduler, vp_levels


class LCMScheduler(VPScheduler):
    """Drop-in for ``diffusers.LCMScheduler``; ``step`` returns ``(prev_sample, denoised)``.

    The fused step writes ``denoised`` into its history slot on the way (D = c_skip x + c_out x0),
    so returning it costs no extra pass; it is a view valid until the next step.
    """

    _exposes = True
    #: the table set_timesteps builds ahead of the first step
    _DEFAULT_KEY: tuple = ()

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(locals())
        # timestep_spacing is accepted for diffusers' configs but unused (and unchecked), as there
        self._init_training(("epsilon", "sample", "v_prediction"), clamp_zero_snr=prediction_type == "epsilon",
                            check_spacing=False)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.custom_timesteps = False
        self._init_timesteps()

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device=None,
        original_inference_steps: Optional[int] = None,
        timesteps: Optional[Sequence[int]] = None,
        strength: float = 1.0,
    ) -> None:
        cfg = self.config
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        original, origin = self._origin_timesteps(original_inference_steps, strength)
        if timesteps is not None:
            ts = self._custom_timesteps(timesteps)
            self.num_inference_steps = len(ts)
            self.custom_timesteps = True
            init = min(int(self.num_inference_steps * strength), self.num_inference_steps)
            ts = ts[max(self.num_inference_steps - init, 0) * self.order:]
        else:
            if num_inference_steps > cfg.num_train_timesteps:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`")
            skipping = len(origin) // num_inference_steps
            if skipping < 1:
                raise ValueError(f"The combination of `original_steps x strength`: {original} x {strength} is smaller than "
                                 f"`num_inference_steps`: {num_inference_steps}.")
            if num_inference_steps > original:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than `original_inference_steps`: {original}")
            self.num_inference_steps = num_inference_steps
            origin = origin[::-1].copy()
            idx = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            ts = origin[idx]
        self._install_timesteps(ts, device)
        self._warm(0, self._DEFAULT_KEY)

    def _origin_timesteps(self, original_inference_steps: Optional[int], strength: float) -> tuple[int, np.ndarray]:
        """(original step count, the distillation schedule's timesteps, ascending) the inference steps are picked from."""
        cfg = self.config
        original = original_inference_steps if original_inference_steps is not None else cfg.original_inference_steps
        if original > cfg.num_train_timesteps:
            raise ValueError(f"`original_steps`: {original} cannot be larger than `self.config.train_timesteps`: {cfg.num_train_timesteps}")
        return original, np.asarray(list(range(1, int(original * strength) + 1))) * (cfg.num_train_timesteps // original) - 1

    def get_scalings_for_boundary_condition_discrete(self, timestep) -> tuple[float, float]:
        self.sigma_data = 0.5
        t = float(timestep) * self.config.timestep_scaling
        return self.sigma_data**2 / (t**2 + self.sigma_data**2), t / (t**2 + self.sigma_data**2) ** 0.5

    def _builder(self, begin: int, key: tuple):
        ac = self.alphas_cumprod.double().tolist()
        final = float(self.final_alpha_cumprod)
        ts = self._ts_host.tolist()
        abar, prev, cs, co = [], [], [], []
        for i in range(begin, len(ts)):
            t = ts[i]
            p = ts[i + 1] if i + 1 < len(ts) else t
            abar.append(ac[t])
            prev.append(ac[p] if p >= 0 else final)
            s, o = self.get_scalings_for_boundary_condition_discrete(t)
            cs.append(s)
            co.append(o)
        # Like diffusers, the step without re-noising is the one at index num_inference_steps - 1.
        return solvers.lcm(abar, prev, cs, co, prediction_type=self.config.prediction_type,
                           last=self.num_inference_steps - 1 - begin, store_denoised=True)

    def _model_frame(self, begin: int):
        ac = self.alphas_cumprod.double().tolist()
        ab = [ac[t] for t in self._ts_host.tolist()[begin:]]
        # the last step returns the denoised sample itself
        return [1.0] * (len(ab) + 1), vp_levels(ab) + [(1.0, 0.0)]
