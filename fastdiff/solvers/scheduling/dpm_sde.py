"""DPMSolverSDEScheduler: DPM-Solver++(2S) SDE with Brownian-tree noise (k-diffusion's
sample_dpmpp_sde), diffusers-compatible."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import dpm_sde as solvers, schedules
from ..brownian import BrownianNoise, require_torchsde
from ._two_stage import TwoStageScheduler


def _log_midpoints(sig: Tensor) -> Tensor:
    """sigma_fn(t + (t_next - t) / 2) with t = -log sigma, in float32 as diffusers computes each step's
    levels (the Brownian tree is queried at exactly these values)."""
    t = -sig.log()
    return (-(t[:-1] + (t[1:] - t[:-1]) * 0.5)).exp()


class DPMSolverSDEScheduler(TwoStageScheduler):
    """Drop-in for ``diffusers.DPMSolverSDEScheduler``: two model evaluations per step (order = 2),
    each one fused update whose noise is a Brownian increment computed on the host (see
    fastdiff/solvers/dpm_sde.py). Needs torchsde, as diffusers' class does."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        noise_sampler_seed: Optional[int] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        require_torchsde()
        self._init_schedule(locals())
        self.use_karras_sigmas = use_karras_sigmas
        self.noise_sampler = None
        self.noise_sampler_seed = noise_sampler_seed

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: Optional[int] = None) -> None:
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        n_train = num_train_timesteps or cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":  # float64 here, unlike the Euler family's float32 linspace
            ts = np.linspace(0, n_train - 1, num_inference_steps, dtype=np.float64)[::-1].copy()
        else:
            ts = schedules.spaced_timesteps(cfg.timestep_spacing, num_inference_steps, n_train, steps_offset=cfg.steps_offset)
        sig, ts, log_sigmas = self._spaced_levels(ts, num_inference_steps)
        mid_t = np.array([schedules.sigma_to_t(s, log_sigmas) for s in np.exp(-((-np.log(sig[:-1])) + np.diff(-np.log(sig)) * 0.5))])
        levels = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._reset()
        self.sigmas = torch.cat([levels[:1], levels[1:-1].repeat_interleave(2), levels[-1:]])
        ts_t = torch.from_numpy(np.asarray(ts, dtype=np.float64))
        ts_t = torch.cat([ts_t[:1], ts_t[1:].repeat_interleave(2)])
        ts_t[1::2] = torch.from_numpy(mid_t)
        self.timesteps = ts_t.to(device)
        self.sample = None
        self.mid_point_sigma = None
        self.noise_sampler = None
        self._sig = self.sigmas.double().tolist()
        self._ts_host = self.timesteps.cpu().numpy()
        self._warm(0, (1.0,))

    def _builder(self, begin: int, key: tuple):
        (s_noise,) = key
        return solvers.dpmpp_sde(self._sig, len(self._ts_host), self._noise_scale, prediction_type=self.config.prediction_type,
                                 begin=begin, s_noise=float(s_noise))

    def _query_levels(self, k: int, first: bool) -> tuple[Tensor, Tensor]:
        """The levels (float32 tensors, diffusers' arithmetic) whose Brownian increment evaluation k adds."""
        sig = self.sigmas
        pair = sig[k: k + 2] if first else sig[k - 1: k + 1]
        t = -pair.log()
        start = (-t[0]).exp()
        return start, _log_midpoints(pair)[0] if first else (-t[1]).exp()

    def _noise_scale(self, k: int, first: bool) -> float:
        """The factor making evaluation k's raw Brownian increment unit variance (0 where it adds no noise)."""
        if (self._sig[k + 1] if first else self._sig[k]) == 0.0:
            return 0.0
        start, end = self._query_levels(k, first)
        # signed: the increment runs from start down to end, W(end) - W(start) (see BrownianNoise.raw)
        return (1.0 if start < end else -1.0) / float((end - start).abs().sqrt())

    def brownian(self, x: Tensor, seed: Optional[int]) -> BrownianNoise:
        """A Brownian tree over this schedule's positive levels (diffusers' range and settings)."""
        sig = self.sigmas
        return BrownianNoise(x, sig[sig > 0].min().item(), sig.max().item(), seed)

    def plan_noise(self, begin: int, key: tuple):
        """For fastdiff.sample: a factory (first state, generator) -> source(j, x) giving evaluation j's z
        input in the model coordinates of _model_frame (see fastdiff/samplers/plan.py)."""
        (s_noise,) = key
        scale, _ = self._model_frame(begin)
        seed = self.config.noise_sampler_seed
        # per evaluation: (query levels, or None where no noise is added; first stage?; gamma on the first
        # stage's state in model coordinates, which its solver state is scale[j - 1] times)
        steps, first = [], True
        for j, k in enumerate(range(begin, len(self._ts_host))):
            if first and self._sig[k + 1] == 0.0:
                steps.append((None, True, 0.0))
                continue
            gamma = 0.0
            if not first:
                sigma, _, target = solvers.stage_levels(k, first, self._sig)
                gamma = solvers.second_stage_gamma(sigma, target, float(s_noise), self._noise_scale(k, False)) * scale[j - 1]
            steps.append((self._query_levels(k, first), first, gamma))
            first = not first

        def start(x: Tensor, generator) -> "Callable[[int, Tensor], Optional[Tensor]]":
            s = seed if seed is not None else int(torch.randint(0, 2**63 - 1, [], generator=generator))
            tree = self.brownian(x, s)
            stored: list[Tensor] = []

            def source(j: int, x: Tensor) -> Optional[Tensor]:
                levels, first_stage, gamma = steps[j]
                if levels is None:
                    return None
                w, _ = tree.raw(*levels)
                if first_stage:  # keep its input for the second stage
                    stored[:] = [x]
                    return w
                y = stored.pop()
                return torch.add(w.to(x.dtype), y, alpha=gamma) if gamma else y
            return source

        return start

    def _stage(self, k: int, first: bool) -> tuple[float, float]:
        sigma, mid, _ = solvers.stage_levels(k, first, self._sig)
        return sigma, mid
