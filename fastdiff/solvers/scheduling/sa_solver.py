"""SASolverScheduler: SA-Solver, stochastic Adams predictor-corrector (Xue et al. 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .. import rows as layout, sa_solver as solver, schedules
from ._common import sigma_spacing, spaced_sigmas
from ._multistep import MultistepScheduler


def default_tau(t) -> int:
    """diffusers' default stochasticity: the SDE (tau = 1) for timesteps 200..800, the ODE outside."""
    return 1 if 200 <= t <= 800 else 0


class SASolverScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.SASolverScheduler``: predictor orders 1-4, corrector orders 1-4, data or
    noise prediction, any tau function, Karras / exponential / beta / flow sigmas.

    Each model evaluation corrects the state it is given and predicts the next one in one fused
    launch; the noise drawn at a step enters that step's predictor (its corrector reuses it, and
    the two cancel, see fastdiff/solvers/sa_solver.py). tau is evaluated at set_timesteps.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        predictor_order: int = 2,
        corrector_order: int = 2,
        prediction_type: str = "epsilon",
        tau_func: Optional[Callable] = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "data_prediction",
        lower_order_final: bool = True,
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
        if algorithm_type not in ("data_prediction", "noise_prediction"):
            raise NotImplementedError(f"{algorithm_type} is not implemented for {self.__class__}")
        self._init_training(check_spacing=False, clamp_zero_snr=True)
        self.tau_func = default_tau if tau_func is None else tau_func
        self.predict_x0 = algorithm_type == "data_prediction"
        self._init_tables()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        n = cfg.num_train_timesteps
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
        ts = schedules.multistep_timesteps(cfg.timestep_spacing, num_inference_steps, n, steps_offset=cfg.steps_offset,
                                           last_timestep=n - clipped)
        sig = schedules.vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sig)
        if kind is not None:
            sig = spaced_sigmas(cfg, kind, np.flip(sig).copy(), num_inference_steps)
            ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
            if kind == "karras":
                ts = ts.round()
            last = sig[-1]
        elif cfg.use_flow_sigmas:
            alphas = np.linspace(1, 1 / n, num_inference_steps + 1)
            sig = np.flip(schedules.shift_flow_sigmas(1.0 - alphas, cfg.flow_shift))[:-1].copy()
            ts = (sig * n).copy()
            last = sig[-1]
        else:
            sig = np.interp(ts, np.arange(0, len(sig)), sig)
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        # diffusers' step state, reset here as its set_timesteps does (fastdiff's step does not read it)
        self.model_outputs = [None] * max(cfg.predictor_order, cfg.corrector_order - 1)
        self.lower_order_nums = 0
        self.last_sample = None
        self._install_sigmas(sig, ts, last, device)

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        data = cfg.algorithm_type == "data_prediction"
        pt = cfg.prediction_type
        if data:
            layout.check_prediction_type(pt)
            convert = [layout.x0_conversion(pt, al, si) for al, si in levels[:-1]]
        else:
            if pt not in ("epsilon", "sample", "v_prediction"):
                raise ValueError(f"prediction_type given as {pt} must be one of `epsilon`, `sample`, or `v_prediction` "
                                 "for the SASolverScheduler.")
            convert = [layout.eps_conversion(pt, al, si) for al, si in levels[:-1]]
        taus = solver.step_taus(self.tau_func, self.timesteps.cpu())
        return solver.sa_solver(levels, convert, taus, predictor_order=cfg.predictor_order, corrector_order=cfg.corrector_order,
                                data_prediction=data, lower_order_final=cfg.lower_order_final, begin=begin)
