"""DPMSolverMultistepInverseScheduler: DPM-Solver++ run up the noise levels (image -> latent noise), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as solvers, rows as layout
from ._common import sigma_spacing
from ._multistep import MultistepScheduler
from ._vp_levels import normalise_solver, sigma_at, sigma_schedule


class DPMSolverMultistepInverseScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.DPMSolverMultistepInverseScheduler``: the multistep DPM-Solver(++) of
    methods.dpm_solver over ascending levels. The timesteps ascend from 0 to the noisiest one
    ``lambda_min_clipped`` allows, and the last step ends at that level's sigma (a Karras, exponential,
    beta or flow schedule repeats its last level instead, so the last step leaves the sample as it is).

    The stochastic variants are refused: up the levels their noise variance is negative (diffusers
    returns NaN).
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
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        normalise_solver(self, algorithm_type, solver_type, ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"),
                         ("midpoint", "heun"))
        self._init_training(clamp_zero_snr=False)
        self._init_tables()
        n = num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=np.float32))
        self._ts_host = self.timesteps.numpy()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None) -> None:
        cfg = self.config
        n = cfg.num_train_timesteps
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
        top = n - 1 - clipped  # the noisiest timestep the clipping allows
        steps = num_inference_steps
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, top, steps + 1).round()[:-1].astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ts = (np.arange(0, steps + 1) * ((top + 1) // (steps + 1))).round()[:-1].astype(np.int64) + cfg.steps_offset
        elif cfg.timestep_spacing == "trailing":
            ts = np.arange(top + 1, 0, -n / steps).round()[::-1].astype(np.int64) - 1
        else:
            raise ValueError(f"{cfg.timestep_spacing} is not supported. Please make sure to choose one of 'linspace', "
                             "'leading' or 'trailing'.")
        sig, ts, spaced = sigma_schedule(self, ts, steps, ascending=True)
        last = sig[-1] if spaced else sigma_at(self, top)
        # Repeated timesteps (as many steps as training timesteps) are dropped, as diffusers does; the
        # levels are not, so the run ends before the last ones.
        _, first = np.unique(ts, return_index=True)
        self._install_sigmas(sig, ts[np.sort(first)], last, device)

    def _data_is_x0(self) -> bool:
        return self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig[: len(self.timesteps) + 1]]
        if cfg.algorithm_type.startswith("sde") and any(b[1] / b[0] > a[1] / a[0] for a, b in zip(levels, levels[1:])):
            raise ValueError(f"fastdiff: algorithm_type {cfg.algorithm_type!r} cannot run up the noise levels "
                             "(its noise variance would be negative; diffusers returns NaN); use dpmsolver++")
        conv = layout.x0_conversion if self._data_is_x0() else layout.eps_conversion
        convert = [conv(layout.check_prediction_type(cfg.prediction_type), al, si) for al, si in levels[:-1]]
        return solvers.dpm_solver(
            levels, convert, order=cfg.solver_order, algorithm_type=cfg.algorithm_type, solver_type=cfg.solver_type,
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final, final_zero=False, begin=begin,
        )
