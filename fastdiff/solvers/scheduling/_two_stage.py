"""What the VE schedulers with two model evaluations per step and a log-midpoint second stage share
(KDPM2, KDPM2-ancestral, DPM-Solver-SDE): diffusers' interleaved tables, ``self.sample`` (the first
stage's input) as the stage flag, the Karras-family sigma spacings and the model frame."""

from __future__ import annotations

import math
import numpy as np

from .. import schedules
from ._common import sigma_spacing, spaced_sigmas
from ._ve import VEScheduler


class TwoStageScheduler(VEScheduler):
    order = 2
    sample = None

    def _init_schedule(self, params: dict) -> None:
        """The standalone constructor's body: register the config, check it (diffusers accepts
        prediction_type "sample" at construction and refuses it at step()), install the training
        schedule and the full-length timesteps, as diffusers' __init__ does."""
        self._register(params)
        sigma_spacing(self.config)
        self._init_training(("epsilon", "v_prediction", "sample"), clamp_zero_snr=False)
        self._init_done = False
        n = self.config.num_train_timesteps
        self.set_timesteps(n, None, n)
        self._init_done = True

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def _spaced_levels(self, ts: np.ndarray, steps: int, *, round_karras: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sigmas, timesteps, log_sigmas): the training sigmas at ``ts``, or the configured Karras /
        exponential / beta spacing between their ends with the timesteps read back from it."""
        full = schedules.vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(full)
        sig = np.interp(ts, np.arange(0, len(full)), full)
        kind = sigma_spacing(self.config)
        if kind is not None:
            sig = spaced_sigmas(self.config, kind, sig, steps)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            if round_karras and kind == "karras":
                ts = ts.round()
        return sig, ts, log_sigmas

    def _stage(self, k: int, first: bool) -> tuple[float, float]:  # pragma: no cover - abstract
        """(sigma, sigma_mid) of evaluation k: the step's start level and its log-midpoint."""
        raise NotImplementedError

    def _model_frame(self, begin: int):
        # the model reads the state at sigma (first stage) or sigma_mid (second); its noise level, as
        # diffusers' add_noise reads it, is sigmas[k] either way
        scale, levels, first = [], [], True
        for k in range(begin, len(self._ts_host)):
            sigma, mid = self._stage(k, first)
            n = math.sqrt((sigma if first else mid) ** 2 + 1.0)
            scale.append(n)
            levels.append((1.0 / n, self._sig[k] / n))
            first = not first
        return scale + [1.0], levels + [(1.0, 0.0)]
