"""DEISMultistepScheduler: DEIS multistep, log-rho form (Zhang & Chen 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import deis as solver, rows as layout, schedules
from ._common import sigma_spacing, spaced_sigmas
from ._multistep import MultistepScheduler


class DEISMultistepScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.DEISMultistepScheduler``: orders 1-3 over Karras / exponential / beta /
    flow sigmas. Earlier noise predictions live in the fused step's history ring (order - 1 slots).
    A spaced or flow schedule repeats its last level, so its last step leaves the sample as it is."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(locals())
        sigma_spacing(self.config)
        if algorithm_type in ("dpmsolver", "dpmsolver++"):
            self.register_to_config(algorithm_type="deis")
        elif algorithm_type != "deis":
            raise NotImplementedError(f"{algorithm_type} is not implemented for {self.__class__}")
        if solver_type in ("midpoint", "heun", "bh1", "bh2"):
            self.register_to_config(solver_type="logrho")
        elif solver_type != "logrho":
            raise NotImplementedError(f"solver type {solver_type} is not implemented for {self.__class__}")
        self._init_training(clamp_zero_snr=False)
        self._init_tables()

    def set_timesteps(self, num_inference_steps: int, device=None, mu: Optional[float] = None) -> None:
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("fastdiff: mu needs use_dynamic_shifting=True and time_shift_type='exponential'")
            self.register_to_config(flow_shift=float(np.exp(mu)))
            cfg = self.config
        n = cfg.num_train_timesteps
        ts = schedules.multistep_timesteps(cfg.timestep_spacing, num_inference_steps, n, steps_offset=cfg.steps_offset)
        full = schedules.vp_sigmas(self.alphas_cumprod)
        kind = sigma_spacing(cfg)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, np.flip(full).copy(), num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, np.log(full)) for s in sig])
            if kind == "karras":
                ts = ts.round()
            last = sig[-1]
        elif cfg.use_flow_sigmas:
            alphas = np.linspace(1, 1 / n, num_inference_steps + 1)
            sig = np.flip(schedules.shift_flow_sigmas(1.0 - alphas, cfg.flow_shift))[:-1].copy()
            ts = (sig * n).copy()
            last = sig[-1]
        else:
            sig = np.interp(ts, np.arange(0, len(full)), full)
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        self._install_sigmas(sig, ts, last, device)

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        pt = layout.check_prediction_type(cfg.prediction_type)
        convert = [layout.eps_conversion(pt, al, si) for al, si in levels[:-1]]
        return solver.deis(levels, convert, order=cfg.solver_order, lower_order_final=cfg.lower_order_final, begin=begin)
