"""EDMDPMSolverMultistepScheduler: DPM-Solver++ in Karras et al.'s EDM parameterisation (Playground v2.5), diffusers-compatible."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from .. import edm, methods as solvers
from ._vp_levels import normalise_solver
from .edm_euler import EDMScheduler


class EDMDPMSolverMultistepScheduler(EDMScheduler):
    """Drop-in for ``diffusers.EDMDPMSolverMultistepScheduler``: the multistep DPM-Solver++ of
    methods.dpm_solver (orders 1-3, midpoint / heun, ODE and SDE) on the EDM state x = x0 + sigma eps
    (alpha = 1), whose data prediction is the preconditioned D = c_skip x + c_out m."""

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: Literal["karras", "exponential"] = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        rho: float = 7.0,
        solver_order: int = 2,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ):
        self._register(locals())
        normalise_solver(self, algorithm_type, solver_type, ("dpmsolver++", "sde-dpmsolver++"), ("midpoint", "heun"))
        self.num_inference_steps: Optional[int] = None
        self.is_scale_input_called = False
        sigmas = self._edm_sigmas(torch.linspace(0, 1, num_train_timesteps))
        self._reset()
        self.timesteps = self.precondition_noise(sigmas)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.numpy()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Any = None) -> None:
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        # a float32 ramp (EDMEuler's is float64), as diffusers computes this class's sigmas
        self._install_edm(self._edm_sigmas(torch.linspace(0, 1, num_inference_steps)), device)
        if cfg.final_sigmas_type == "sigma_min":  # the configured sigma_min, not the ramp's last level
            self.sigmas[-1] = cfg.sigma_min
            self._sig[-1] = float(self.sigmas[-1])
        self._warm(0)

    def _missing_timestep(self, v: float) -> int:
        return len(self.timesteps) - 1

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [(1.0, s) for s in self._sig]
        convert = [edm.edm_conversion(cfg.prediction_type, s, cfg.sigma_data) for s in self._sig[:-1]]
        return solvers.dpm_solver(
            levels, convert, order=cfg.solver_order, algorithm_type=cfg.algorithm_type, solver_type=cfg.solver_type,
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
            final_zero=cfg.final_sigmas_type == "zero", begin=begin,
        )
