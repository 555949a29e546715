"""UniPCMultistepScheduler: UniPC predictor-corrector (Zhao et al. 2023), diffusers-compatible."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import methods as solvers, rows as layout, schedules
from ._common import final_sigma, shift_flow_levels, sigma_spacing, spaced_sigmas
from ._multistep import MultistepScheduler


class UniPCMultistepScheduler(MultistepScheduler):
    """Drop-in for ``diffusers.UniPCMultistepScheduler`` (bh1 / bh2, any order, corrector on or off per step).

    The corrector needs the sample the previous predictor started from; it is rewritten in terms
    of the current sample and the stored outputs, so each step is still one fused launch with a
    history of converted outputs only. At a final sigma of 0 the last step is first order (its
    limit); diffusers returns NaN there for bh1 or without lower_order_final.
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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = [],
        solver_p=None,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: Optional[str] = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        shift_terminal: Optional[float] = None,
    ):
        self._register(locals())
        sigma_spacing(self.config)
        if solver_p is not None:
            raise NotImplementedError("fastdiff: UniPC with an external solver_p is not supported")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("`shift_terminal` is only supported when `use_flow_sigmas=True`.")
        if solver_type in ("midpoint", "heun", "logrho"):
            self.register_to_config(solver_type="bh2")
        elif solver_type not in ("bh1", "bh2"):
            raise NotImplementedError(f"{solver_type} is not implemented for {self.__class__}")
        self._init_training(clamp_zero_snr=True)
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = None
        self._init_tables()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      sigmas: Optional[Sequence[float]] = None, mu: Optional[float] = None) -> None:
        cfg = self.config
        kind = sigma_spacing(cfg)
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError("Passing `sigmas` is only supported when `use_flow_sigmas=True`.")
            num_inference_steps = len(sigmas)
        n = cfg.num_train_timesteps
        ts = schedules.multistep_timesteps(cfg.timestep_spacing, num_inference_steps, n, steps_offset=cfg.steps_offset)
        vp_last = final_sigma(cfg, self.alphas_cumprod)
        zero_last = cfg.final_sigmas_type == "zero"
        if kind is not None:
            sig = np.array(sigmas) if sigmas is not None else schedules.vp_sigmas(self.alphas_cumprod)
            log_sigmas = np.log(sig)
            sig = spaced_sigmas(cfg, kind, np.flip(sig).copy(), num_inference_steps)
            if kind == "karras" and cfg.use_flow_sigmas:
                sig = sig / (sig + 1)
                ts = (sig * n).copy()
            else:
                ts = np.array([schedules.sigma_to_t(s, log_sigmas) for s in sig])
                if kind == "karras":
                    ts = ts.round()
            last = 0.0 if zero_last else sig[-1]
        elif cfg.use_flow_sigmas:
            sig = np.array(sigmas, dtype=np.float64) if sigmas is not None else np.linspace(1, 1 / n, num_inference_steps + 1)[:-1]
            sig = shift_flow_levels(cfg, sig, cfg.flow_shift, mu)
            if np.fabs(sig[0] - 1) < 1e-6:
                sig[0] -= 1e-6
            ts = (sig * n).copy()
            last = 0.0 if zero_last else sig[-1]
        else:
            full = schedules.vp_sigmas(self.alphas_cumprod)
            sig = np.interp(ts, np.arange(0, len(full)), full)
            last = vp_last
        self._install_sigmas(sig, ts, last, device)

    def _builder(self, begin: int, key: tuple):
        cfg = self.config
        levels = [self._alpha_sigma(s) for s in self._sig]
        conv = layout.x0_conversion if self.predict_x0 else layout.eps_conversion
        pt = layout.check_prediction_type(cfg.prediction_type)
        convert = [conv(pt, al, si) for al, si in levels[:-1]]
        return solvers.unipc(levels, convert, order=cfg.solver_order, solver_type=cfg.solver_type, predict_x0=self.predict_x0,
                             lower_order_final=cfg.lower_order_final, disable_corrector=self.disable_corrector, begin=begin)
