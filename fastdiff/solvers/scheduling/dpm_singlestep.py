"""DPMSolverSinglestepScheduler: singlestep DPM-Solver / DPM-Solver++ (Lu et al. 2022), diffusers-compatible."""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import rows as layout, singlestep
from ._common import sigma_spacing
from ._multistep import MultistepScheduler
from ._vp_levels import apply_mu, normalise_solver, sigma_at, sigma_schedule

logger = logging.getLogger(__name__)


class DPMSolverSinglestepScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.DPMSolverSinglestepScheduler``: groups of 1-3 evaluations per step of
    the solver (orders from ``get_order_list``), midpoint / heun forms, DPM-Solver++, DPM-Solver and
    the SDE variant (orders 1-2; see fastdiff/solvers/singlestep.py), Karras / exponential / beta /
    flow sigmas, custom timesteps."""

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
        lower_order_final: bool = False,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        final_sigmas_type: Optional[str] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(locals())
        sigma_spacing(self.config)
        normalise_solver(self, algorithm_type, solver_type, singlestep.ALGORITHMS, ("midpoint", "heun"))
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                             f"{algorithm_type}. Please choose `sigma_min` instead.")
        self._init_training(clamp_zero_snr=False, check_spacing=False)
        self._init_tables()
        self.model_outputs = [None] * solver_order
        self.sample = None
        self.order_list = self.get_order_list(num_train_timesteps)

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The planned order of each step: groups (1, 2[, 3]) repeated; with lower_order_final the last
        group is shortened to fit, and a final sigma of 0 makes the last step first order."""
        steps, order = num_inference_steps, self.config.solver_order
        if order > 3:
            raise ValueError("Order > 3 is not supported by this scheduler")
        group = list(range(1, order + 1))
        if self.config.lower_order_final:
            full, rest = divmod(steps, order)
            if order == 1:
                orders = [1] * steps
            elif rest == 0:  # the last group one shorter, then a first-order step
                orders = group * (full - 1) + group[:-1] + [1]
            else:
                orders = group * full + group[:rest]
        else:
            orders = group * (steps // order)
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, mu: Optional[float] = None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        cfg = apply_mu(self, mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Must pass exactly one of  `num_inference_steps` or `timesteps`.")
        kind = sigma_spacing(cfg)
        if timesteps is not None and kind is not None:
            raise ValueError(f"Cannot set `timesteps` with `config.use_{kind}_sigmas = True`.")
        n = cfg.num_train_timesteps
        steps = num_inference_steps or len(timesteps)
        if timesteps is not None:
            ts = np.array(timesteps).astype(np.int64)
        else:
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            ts = np.linspace(0, n - 1 - clipped, steps + 1).round()[::-1][:-1].astype(np.int64)
        sig, ts, _ = sigma_schedule(self, ts, steps)
        if cfg.final_sigmas_type == "sigma_min":
            last = sigma_at(self, 0)
        elif cfg.final_sigmas_type == "zero":
            last = 0.0
        else:
            raise ValueError(f" `final_sigmas_type` must be one of `sigma_min` or `zero`, but got {cfg.final_sigmas_type}")
        # As diffusers: an uneven run, or one ending at sigma 0, switches lower_order_final on (in the config).
        if not cfg.lower_order_final and steps % cfg.solver_order != 0:
            logger.warning("fastdiff: %d steps are not a multiple of solver_order %d: lower_order_final set to True",
                           steps, cfg.solver_order)
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("fastdiff: final_sigmas_type='zero' needs lower_order_final: set to True")
            self.register_to_config(lower_order_final=True)
        self.model_outputs = [None] * cfg.solver_order
        self.sample = None
        self.order_list = self.get_order_list(steps)
        self._install_sigmas(sig, ts, last, device)
        self.num_inference_steps = steps

    def _data_is_x0(self) -> bool:
        return self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        conv = layout.x0_conversion if self._data_is_x0() else layout.eps_conversion
        convert = [conv(layout.check_prediction_type(cfg.prediction_type), al, si) for al, si in levels[:-1]]
        return singlestep.dpm_solver_singlestep(levels, convert, self.order_list, algorithm_type=cfg.algorithm_type,
                                                solver_type=cfg.solver_type, begin=begin)
