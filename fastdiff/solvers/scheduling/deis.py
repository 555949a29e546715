"""DEISMultistepScheduler: DEIS multistep, log-rho form (Zhang & Chen 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import deis as solver, rows as layout, schedules
from ._common import sigma_spacing
from ._multistep import MultistepScheduler
from ._vp_levels import apply_mu, normalise_solver, sigma_at, sigma_schedule


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
        normalise_solver(self, algorithm_type, solver_type, ("deis",), ("logrho",), algorithm_alias=("dpmsolver", "dpmsolver++"),
                         alias_to="deis", solver_alias=("midpoint", "heun", "bh1", "bh2"), solver_to="logrho")
        self._init_training(clamp_zero_snr=False)
        self._init_tables()

    def set_timesteps(self, num_inference_steps: int, device=None, mu: Optional[float] = None) -> None:
        cfg = apply_mu(self, mu)
        ts = schedules.multistep_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                           steps_offset=cfg.steps_offset)
        sig, ts, spaced = sigma_schedule(self, ts, num_inference_steps)
        last = sig[-1] if spaced else sigma_at(self, 0)
        self._install_sigmas(sig, ts, last, device)

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        pt = layout.check_prediction_type(cfg.prediction_type)
        convert = [layout.eps_conversion(pt, al, si) for al, si in levels[:-1]]
        return solver.deis(levels, convert, order=cfg.solver_order, lower_order_final=cfg.lower_order_final, begin=begin)
