"""PNDMScheduler: pseudo numerical methods (Liu et al. 2022), diffusers-compatible; Stable Diffusion
1.x / 2.x ship it with ``skip_prk_steps=True`` (PLMS)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from .. import linear_multistep, schedules
from ._vp import VPScheduler, vp_levels


class PNDMScheduler(VPScheduler):
    """Drop-in for ``diffusers.PNDMScheduler``: every evaluation (PRK stage or PLMS step) is one
    fused update whose history holds the last four multistep outputs.

    As in diffusers, a run's evaluations are counted from its first step (``counter``): the PRK
    stages, PLMS's second-order start and each transfer's levels follow from that count and the
    timesteps passed, so a run started mid-schedule (img2img) steps as diffusers' does.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
    ):
        self._register(locals())
        # diffusers accepts any prediction_type here and refuses the unsupported ones at step()
        self._init_training(clamp_zero_snr=False)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self.num_inference_steps: Optional[int] = None
        self._reset()
        self._ts_host = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = self.plms_timesteps = self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                        steps_offset=cfg.steps_offset)[::-1].astype(np.int64)  # ascending
        if cfg.skip_prk_steps:
            # PLMS: the second timestep is visited twice (the second-order start re-does the first step)
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        else:
            if num_inference_steps < self.pndm_order:
                raise ValueError(f"fastdiff: PNDMScheduler with skip_prk_steps=False needs at least {self.pndm_order} "
                                 f"inference steps (its Runge-Kutta warm-up spans the last four), got {num_inference_steps}")
            # PRK: three RK4 steps over the four largest timesteps, each with a midpoint half a step down
            half = cfg.num_train_timesteps // num_inference_steps // 2
            prk = np.repeat(ts[-self.pndm_order:], 2) + np.tile([0, half], self.pndm_order)
            self.prk_timesteps = np.repeat(prk[:-1], 2)[1:-1][::-1].copy()
            self.plms_timesteps = ts[:-3][::-1].copy()
        self._install_timesteps(np.concatenate([self.prk_timesteps, self.plms_timesteps]), device)
        self._warm(0)

    def _missing_timestep(self, v: float) -> int:
        # diffusers' PNDM reads any timestep value at its step counter; the tables here are built for
        # this schedule's own timesteps, so another value cannot be stepped without a new table
        raise NotImplementedError(f"fastdiff: PNDMScheduler steps through its own timesteps (set_timesteps); "
                                  f"timestep {v:g} is not one of them")

    def _transfers(self, begin: int) -> list[tuple[float, float]]:
        """(abar_from, abar_to) per evaluation from ``begin``, by diffusers' counter rules."""
        cfg = self.config
        ac = self.alphas_cumprod.double().tolist()
        final = float(self.final_alpha_cumprod)
        ratio = cfg.num_train_timesteps // self.num_inference_steps
        n_prk = 0 if cfg.skip_prk_steps else len(self.prk_timesteps)
        out = []
        for c, t in enumerate(self._ts_host.tolist()[begin:]):
            if c < n_prk:
                prev = t - (0 if c % 2 else ratio // 2)
                t = int(self.prk_timesteps[c // 4 * 4])
            elif c == 1:  # PLMS's second-order start goes from the first step's level again
                prev, t = t, t + ratio
            else:
                prev = t - ratio
            out.append((ac[t], ac[prev] if prev >= 0 else final))
        return out

    def _builder(self, begin: int, key: tuple):
        n_prk = 0 if self.config.skip_prk_steps else len(self.prk_timesteps)
        transfers = self._transfers(begin)
        return linear_multistep.pndm(transfers, prediction_type=self.config.prediction_type, prk_evals=min(n_prk, len(transfers)))

    def _model_frame(self, begin: int):
        ac = self.alphas_cumprod.double().tolist()
        ab = [ac[t] for t in self._ts_host.tolist()[begin:]]
        return [1.0] * (len(ab) + 1), vp_levels(ab + [self._transfers(begin)[-1][1]])
