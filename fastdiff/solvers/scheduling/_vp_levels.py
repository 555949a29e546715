"""What the DPM-Solver family's cores added with issue 9 share (inverse, singlestep, DEIS): diffusers'
normalisation of solver names, the dynamic flow shift, and the levels on VP timesteps or spaced sigmas."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import schedules
from ._common import sigma_spacing, spaced_sigmas


def normalise_solver(core: Any, algorithm_type: str, solver_type: str, algorithms: tuple, solver_types: tuple,
                     *, algorithm_alias: tuple = ("deis",), alias_to: str = "dpmsolver++",
                     solver_alias: tuple = ("logrho", "bh1", "bh2"), solver_to: str = "midpoint") -> None:
    """diffusers' rule: another family's name is recorded as this one's (``register_to_config``), an unknown one refused."""
    if algorithm_type in algorithm_alias:
        core.register_to_config(algorithm_type=alias_to)
    elif algorithm_type not in algorithms:
        raise NotImplementedError(f"{algorithm_type} is not implemented for {core.__class__}")
    if solver_type in solver_alias:
        core.register_to_config(solver_type=solver_to)
    elif solver_type not in solver_types:
        raise NotImplementedError(f"{solver_type} is not implemented for {core.__class__}")


def apply_mu(core: Any, mu: Optional[float]) -> Any:
    """A ``mu`` given to set_timesteps sets flow_shift = e^mu (dynamic shifting); returns the config."""
    if mu is not None:
        cfg = core.config
        if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
            raise ValueError("fastdiff: mu needs use_dynamic_shifting=True and time_shift_type='exponential'")
        core.register_to_config(flow_shift=float(np.exp(mu)))
    return core.config


def sigma_schedule(core: Any, ts: np.ndarray, steps: int, *, ascending: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """(sigmas, timesteps, spaced) for ``steps`` evaluations: Karras / exponential / beta spacing between
    the training sigmas' ends (timesteps read back from them), flow-matching levels, or the training
    sigmas interpolated at ``ts``. ``spaced``: one of the first two kinds, whose schedules end by repeating
    their last level (diffusers'). ``ascending`` spaces from the smallest level up (inversion)."""
    cfg = core.config
    n = cfg.num_train_timesteps
    full = schedules.vp_sigmas(core.alphas_cumprod)
    kind = sigma_spacing(cfg)
    if kind is not None:
        sig = spaced_sigmas(cfg, kind, full if ascending else np.flip(full).copy(), steps)
        ts = np.array([schedules.sigma_to_t(s, np.log(full)) for s in sig])
        return sig, ts.round() if kind == "karras" else ts, True
    if cfg.use_flow_sigmas:
        alphas = np.linspace(1, 1 / n, steps + 1)
        sig = np.flip(schedules.shift_flow_sigmas(1.0 - alphas, cfg.flow_shift))[:-1].copy()
        return sig, (sig * n).copy(), True
    return np.interp(ts, np.arange(0, len(full)), full), ts, False


def sigma_at(core: Any, t: int) -> float:
    """The VE sigma of training timestep ``t``, in float32 as diffusers computes it."""
    ac = core.alphas_cumprod[t]
    return float(((1 - ac) / ac) ** 0.5)
