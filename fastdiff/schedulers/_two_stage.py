"""The step prologue of the two-stage drop-ins (KDPM2, KDPM2-ancestral, DPM-Solver-SDE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import ve_x0_coeffs, x0_from_coeffs


class TwoStageStep:
    def _start_stage(self, timestep: Any) -> bool:
        """Locate this step, refuse what diffusers' step refuses, and say whether it is a first stage
        (diffusers' flag: no stored first-stage sample)."""
        self._ensure_step_index(timestep)
        pt = self.config.prediction_type
        if pt == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        if pt != "epsilon" and pt != "v_prediction":
            raise ValueError(f"prediction_type given as {pt} must be one of `epsilon`, or `v_prediction`")
        if self._run_begin is None:  # a run starts with a first stage
            self.sample = None
            if hasattr(self, "mid_point_sigma"):
                self.mid_point_sigma = None
        return self.sample is None

    def _stage_x0(self, k: int, first: bool, sample: Tensor, model_output: Tensor) -> Tensor:
        """pred_original_sample: x0 at the level the model read (sigma, or sigma_mid in a second stage); one pass."""
        sigma, mid = self._stage(k, first)
        a, b = ve_x0_coeffs(self.config.prediction_type, sigma if first else mid)
        return x0_from_coeffs(a, b, sample, model_output)
