"""DPMSolverMultistepScheduler: DPM-Solver++ / DPM-Solver multistep (Lu et al. 2022), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers, rows as layout, schedules
from ._common import final_sigma, sigma_spacing, spaced_sigmas
from ._multistep import MultistepScheduler


class DPMSolverMultistepScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.DPMSolverMultistepScheduler``: orders 1-3, midpoint / heun second-order
    forms, ODE and SDE variants, Karras / exponential / beta / Lu-lambda / flow sigmas.

    Earlier data predictions live in a history ring inside the fused step (order - 1 slots).
    """

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_lu_lambdas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        final_sigmas_type: Optional[str] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(locals())
        sigma_spacing(self.config)
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        elif algorithm_type not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
            raise NotImplementedError(f"{algorithm_type} is not implemented for {self.__class__}")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        elif solver_type not in ("midpoint", "heun"):
            raise NotImplementedError(f"{solver_type} is not implemented for {self.__class__}")
        if self.config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                             f"{algorithm_type}. Please choose `sigma_min` instead.")
        self._init_training(clamp_zero_snr=True)
        self._init_tables()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, mu: Optional[float] = None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("fastdiff: mu needs use_dynamic_shifting=True and time_shift_type='exponential'")
            self.register_to_config(flow_shift=float(np.exp(mu)))
            cfg = self.config
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None and (kind is not None or cfg.use_lu_lambdas):
            raise ValueError("Cannot use `timesteps` with `config.use_karras_sigmas`, `use_lu_lambdas`, "
                             "`use_exponential_sigmas` or `use_beta_sigmas`.")
        n = cfg.num_train_timesteps
        if timesteps is not None:
            ts = np.array(timesteps).astype(np.int64).astype(np.float64)
            num_inference_steps = len(ts)
        else:
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            ts = schedules.multistep_timesteps(cfg.timestep_spacing, num_inference_steps, n, steps_offset=cfg.steps_offset,
                                               last_timestep=n - clipped)
        sig = schedules.vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sig)
        round_ts = cfg.beta_schedule != "squaredcos_cap_v2"
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, np.flip(sig).copy(), num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            if kind == "karras" and round_ts:
                ts = ts.round()
        elif cfg.use_lu_lambdas:
            lams = np.flip(log_sigmas.copy())
            hi, lo = float(lams[0]), float(lams[-1])
            lams = hi + np.linspace(0, 1, num_inference_steps) * (lo - hi)  # Lu et al.: uniform in log-SNR
            sig = np.exp(lams)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            if round_ts:
                ts = ts.round()
        elif cfg.use_flow_sigmas:
            alphas = np.linspace(1, 1 / n, num_inference_steps + 1)
            sig = np.flip(schedules.shift_flow_sigmas(1.0 - alphas, cfg.flow_shift))[:-1].copy()
            ts = (sig * n).copy()
        else:
            sig = np.interp(ts, np.arange(0, len(sig)), sig)
        self._install_sigmas(sig, ts, final_sigma(cfg, self.alphas_cumprod), device)

    def _data_is_x0(self) -> bool:
        return self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        conv = layout.x0_conversion if self._data_is_x0() else layout.eps_conversion
        convert = [conv(layout.check_prediction_type(cfg.prediction_type), al, si) for al, si in levels[:-1]]
        return solvers.dpm_solver(
            levels, convert, order=cfg.solver_order, algorithm_type=cfg.algorithm_type, solver_type=cfg.solver_type,
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
            final_zero=cfg.final_sigmas_type == "zero", begin=begin,
        )
