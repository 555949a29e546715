"""The fused step every fastdiff scheduler shares: one `fastdiff.ops.sampler_update` launch per
``step()`` call, reading the step's row of the table its core (fastdiff.solvers.scheduling) built
at ``set_timesteps``, as a device view (no host sync).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..ops.sampler_update import LoopUpdate
from ..solvers.rows import A, B, check_prediction_type, x0_conversion


class SchedulerOutput:
    """``prev_sample`` plus optional extras (``pred_original_sample``, ``denoised``); indexable like
    diffusers' BaseOutput (``out[0]``, ``out["prev_sample"]``, ``out.to_tuple()``).

    Extras that live in the scheduler's history buffer are views, valid until the next ``step``.
    """

    def __init__(self, prev_sample: Tensor, **extras: Optional[Tensor]):
        self.prev_sample = prev_sample
        self._keys = ["prev_sample"] + [k for k, v in extras.items() if v is not None]
        for k, v in extras.items():
            setattr(self, k, v)

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self._keys)

    def keys(self):
        return list(self._keys)

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self._keys)


class FusedStep:
    """The step machinery; mixed in before a core (fastdiff.solvers.scheduling)."""

    # -- the fused step --------------------------------------------------------------------------
    def _fused_step(
        self,
        model_output: Tensor,
        sample: Tensor,
        *,
        key: tuple = (),
        generator: Optional[torch.Generator] = None,
        noise: Optional[Tensor] = None,
        noise_dtype: Optional[torch.dtype] = None,
        model_override: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """One step at self.step_index; returns (prev_sample, view of D_i or None)."""
        begin = self._start_run()
        prog, table = self._table(sample.device, begin, key)
        r = self._step_index - begin
        if not 0 <= r < len(prog):
            raise IndexError(f"fastdiff: step {self._step_index} is outside this schedule ({begin}..{begin + len(prog) - 1}); "
                             "call set_timesteps before sampling again")
        row = table[r]
        z = None
        if prog.draws[r]:
            if noise is None:
                noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype or sample.dtype)
            z = noise.to(sample.dtype) if noise.dtype != sample.dtype else noise
            if not prog.reads_noise[r]:
                z = None  # drawn for seeded parity with diffusers, multiplied by 0
        hist = None
        if prog.history:
            want = (prog.history, *sample.shape)
            h = self._history
            if h is None or tuple(h.shape) != want or h.dtype != sample.dtype or h.device != sample.device:
                h = self._history = torch.empty(want, dtype=sample.dtype, device=sample.device)
            hist = h
        m = model_output
        if model_override is not None:
            m, row = model_override, self._table(sample.device, begin, key, as_sample=True)[1][r]
        if self._update is None or self._update.history is not hist:  # checked in full again for a new buffer
            self._update = LoopUpdate(hist, None)
        out = self._update(sample, m, row, z)
        slot = prog.slots[r]
        exposed = hist[slot] if (hist is not None and slot >= 0 and self._exposes) else None
        self._step_index += 1
        return out, exposed

    def _thresholded_x0(self, model_output: Tensor, sample: Tensor) -> tuple[Tensor, float, float]:
        """The model's x0 at this step after dynamic thresholding, with the step's (alpha, sigma)."""
        cfg = self.config
        alpha, sigma = self._alpha_sigma(self._sig[self._step_index])
        a, b = x0_conversion(check_prediction_type(cfg.prediction_type), alpha, sigma)
        x0 = threshold_sample(x0_from_coeffs(a, b, sample, model_output), cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0, alpha, sigma

    def _x0_from_table(self, sample: Tensor, model_output: Tensor, key: tuple = ()) -> Tensor:
        """The model's x0 at this step from the table row (device scalars, no host sync)."""
        begin = self._start_run()
        _, table = self._table(sample.device, begin, key)
        return x0_from_row(table[self._step_index - begin], sample, model_output)


def threshold_sample(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): clip to the per-sample ratio-quantile of |x0|."""
    dtype = x0.dtype
    b = x0.shape[0]
    flat = x0.float().reshape(b, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def clip_x0(config: Any, x0: Tensor) -> Tensor:
    """x0 thresholded (config.thresholding) or else clamped to config.clip_sample_range."""
    if config.thresholding:
        return threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    return x0.clamp(-config.clip_sample_range, config.clip_sample_range)


def x0_from_coeffs(a: Any, b: Any, sample: Tensor, model_output: Tensor) -> Tensor:
    """a x + b m in float32, cast back to the sample's dtype (a, b: floats or device scalars)."""
    return (a * sample.float() + b * model_output.float()).to(sample.dtype)


def x0_from_row(row: Tensor, sample: Tensor, model_output: Tensor) -> Tensor:
    """a x + b m for a device row (two device scalars, no host sync)."""
    return x0_from_coeffs(row[A], row[B], sample, model_output)

