"""FlowMatchEulerDiscreteScheduler: Euler on rectified-flow models (SD3, FLUX), diffusers-compatible."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import torch

from .. import methods as solvers
from ._base import ScheduleCore
from ._common import shift_flow_levels, sigma_spacing, spaced_sigmas


class FlowMatchEulerDiscreteScheduler(ScheduleCore):
    """Drop-in for ``diffusers.FlowMatchEulerDiscreteScheduler`` (static or dynamic shift, terminal
    stretch, Karras / exponential / beta spacing, inverted sigmas, stochastic sampling).
    Per-token timesteps are not supported."""

    _untimed_ok = True  # like diffusers, step() works on the schedule __init__ sets

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: Optional[float] = 0.5,
        max_shift: Optional[float] = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: Optional[float] = None,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError("`time_shift_type` must either be 'exponential' or 'linear'.")
        ts = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
        sig = ts / num_train_timesteps
        if not use_dynamic_shifting:
            sig = shift * sig / (1 + (shift - 1) * sig)
        self.num_inference_steps: Optional[int] = None
        self._reset()
        self.timesteps = sig * num_train_timesteps
        self._shift = shift
        self.sigmas = sig.to("cpu")
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()
        self._store()

    def _store(self) -> None:
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, sigmas: Optional[Sequence[float]] = None,
                      mu: Optional[float] = None, timesteps: Optional[Sequence[float]] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        n = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError("`sigmas` and `timesteps` should have the same length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (timesteps is not None and len(timesteps) != num_inference_steps):
                raise ValueError("`sigmas` and `timesteps` should have the same length as num_inference_steps, "
                                 "if `num_inference_steps` is provided")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        self.num_inference_steps = num_inference_steps
        given_ts = timesteps is not None
        if given_ts:
            ts = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if not given_ts:
                ts = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)
            sig = ts / n
        else:
            sig = np.array(sigmas).astype(np.float32)
            num_inference_steps = len(sig)
        sig = shift_flow_levels(cfg, sig, self.shift, mu)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, sig, num_inference_steps)
        sig_t = torch.from_numpy(np.asarray(sig)).to(dtype=torch.float32, device=device)
        ts_t = torch.from_numpy(ts).to(dtype=torch.float32, device=device) if given_ts else sig_t * n
        if cfg.invert_sigmas:
            sig_t = 1.0 - sig_t
            ts_t = sig_t * n
            sig_t = torch.cat([sig_t, torch.ones(1, device=sig_t.device)])
        else:
            sig_t = torch.cat([sig_t, torch.zeros(1, device=sig_t.device)])
        self._reset()
        self.timesteps = ts_t
        self.sigmas = sig_t
        self._store()
        self._warm(0)

    def _model_frame(self, begin: int):
        sig = self._sig[begin:]
        return [1.0] * len(sig), [(1.0 - s, s) for s in sig]

    def _builder(self, begin: int, key: tuple):
        return solvers.flow_euler(self._sig, stochastic=bool(self.config.stochastic_sampling), begin=begin)
