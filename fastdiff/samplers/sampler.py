"""Sampler classes: a noise schedule plus a solver, planned into a device-resident coefficient table.

A sampler is configured once (``fastdiff.samplers.DPMSolverPP(order=3)``) and planned per run
(``plan(steps, device)``): the plan holds one float32 row per model evaluation, already in the
model's coordinates, so the sampling loop is ``model call -> one sampler_update launch`` with no
input scaling, no host sync and no shape change between steps.

Defaults follow Stable Diffusion's training schedule (scaled_linear betas 0.00085..0.012) with
"trailing" timestep spacing (Lin et al. 2024); pass ``config=pipe.scheduler.config`` (any diffusers
scheduler config) to take a model's own schedule (keys it lacks take the scheduler's defaults, as in
diffusers' ``from_config``). Other keyword options are the diffusers scheduler
config keys of the same sampler (``use_karras_sigmas=True``, ``final_sigmas_type="sigma_min"``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from .._cache import LRU, cache_key
from ..solvers import scheduling
from .loop import sample_plan
from .plan import Plan

SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing", clip_sample=False)


#: plans by value (fastdiff.sample makes a Sampler per call), and the configurations already validated
_PLANS: "LRU[Plan]" = LRU(32)
_VALIDATED: "LRU[bool]" = LRU(32)


def _validate(cls: type, cfg: dict) -> None:
    """Build the scheduler once to refuse a bad configuration now, not at the first run; a
    configuration seen before is not built again."""
    key = cache_key(cls, cfg)
    if key is not None and _VALIDATED.get(key):
        return
    cls(**cfg)
    if key is not None:
        _VALIDATED.put(key, True)


class Sampler:
    """Base class; subclasses set ``scheduler_class`` (a core from fastdiff.solvers.scheduling) and
    may translate friendly options."""

    scheduler_class: type = scheduling.ScheduleCore
    defaults: Mapping[str, Any] = SD_SCHEDULE
    #: step() arguments of the scheduler that change the table (DDIM's eta, Euler's churn)
    step_options: tuple = ()

    def __init__(self, config: Optional[Mapping[str, Any]] = None, **options: Any):
        cls = self.scheduler_class
        params = cls._init_params()
        if config is None:
            cfg = {k: v for k, v in self.defaults.items() if k in params}
        else:
            # As diffusers' from_config: a key the config lacks, or one it lists in _use_default_values
            # (defaults of the class that wrote it, e.g. SD-1.5's PNDM "leading"), takes the scheduler's default.
            given = dict(getattr(config, "config", config))
            defaulted = set(given.get("_use_default_values", ()))
            cfg = {**params, **{k: v for k, v in given.items() if k in params and k not in defaulted}}
        self.step_kwargs: dict[str, float] = {}
        for k, v in self._translate(dict(options)).items():
            if k in self.step_options:
                self.step_kwargs[k] = float(v)
            elif k in params:
                cfg[k] = v
            else:
                allowed = sorted(set(params) | set(self.step_options) | set(self._friendly()))
                raise TypeError(f"fastdiff: {type(self).__name__} got an unexpected option {k!r}; options: {', '.join(allowed)}")
        self.config = cfg
        _validate(cls, cfg)

    def _friendly(self) -> tuple:
        return ()

    def _translate(self, options: dict) -> dict:
        return options

    def __repr__(self) -> str:
        extra = {**self.config, **self.step_kwargs}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in extra.items())})"

    @property
    def scheduler_name(self) -> str:
        """The diffusers class this sampler's scheduler reproduces (e.g. "DPMSolverMultistepScheduler")."""
        return self.scheduler_class.__name__

    @property
    def prediction_type(self) -> str:
        return self.config.get("prediction_type", "flow_prediction" if self.scheduler_class is scheduling.FlowMatchEulerDiscreteScheduler else "epsilon")

    def make_scheduler(self):
        """A fresh scheduler core (fastdiff.solvers.scheduling) with this sampler's configuration."""
        return self.scheduler_class(**self.config)

    def _step_key(self) -> tuple:
        return ()

    def _begin(self, sched, steps: int, strength: float) -> int:
        """diffusers' img2img convention: skip the first (1 - strength) of the steps."""
        init = min(int(steps * strength), steps)
        return max(steps - init, 0) * sched.order

    def _set_timesteps(self, sched, steps: Optional[int], timesteps, sigmas, mu, strength: float) -> None:
        kw: dict[str, Any] = {}
        if timesteps is not None:
            kw["timesteps"] = list(timesteps)
        if sigmas is not None:
            kw["sigmas"] = list(sigmas)
        if mu is not None:
            kw["mu"] = mu
        if steps is not None and not kw.get("timesteps") and not kw.get("sigmas"):
            sched.set_timesteps(steps, **kw)
        else:
            sched.set_timesteps(**kw)

    def plan(
        self,
        steps: Optional[int],
        device: torch.device,
        *,
        strength: float = 1.0,
        timesteps: Optional[Sequence[float]] = None,
        sigmas: Optional[Sequence[float]] = None,
        mu: Optional[float] = None,
    ) -> Plan:
        """Derive the coefficient table (float64, host) and move it to ``device`` once.

        Plans are cached by content (sampler class, configuration, arguments, device), so calling
        ``fastdiff.sample`` again with the same settings skips the derivation (about 1-4 ms of Python);
        a Plan is never modified after it is built.
        """
        key = cache_key(type(self), self.config, self._step_key(), steps, strength, timesteps, sigmas, mu,
                        str(torch.device(device)))
        plan = None if key is None else _PLANS.get(key)
        if plan is None:
            plan = self._plan(steps, device, strength=strength, timesteps=timesteps, sigmas=sigmas, mu=mu)
            if key is not None:
                _PLANS.put(key, plan)
        return plan

    def _plan(self, steps, device, *, strength, timesteps, sigmas, mu) -> Plan:
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"fastdiff: strength expected a number in (0, 1], got {strength}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"fastdiff: steps expected a positive integer, got {steps!r}")
        sched = self.make_scheduler()
        self._set_timesteps(sched, steps, timesteps, sigmas, mu, strength)
        n = sched.num_inference_steps if steps is None else steps
        begin = self._begin(sched, n, strength)
        if begin >= len(sched.timesteps):
            raise ValueError(f"fastdiff: strength {strength} leaves no step to run with {n} steps")
        key = self._step_key()
        prog = sched.model_program(begin, key)
        scale, levels = sched._model_frame(begin)
        init = float(sched.init_noise_sigma) / scale[0]
        ts = sched.timesteps[begin:]
        return Plan(
            program=prog,
            table=prog.device_table(device),
            timesteps=ts.to(device),
            draws=list(prog.draws),
            noise_read=prog.reads_noise,
            levels=levels,
            init_scale=init,
            begin=begin,
            noise=sched.plan_noise(begin, key) if hasattr(sched, "plan_noise") else None,
        )


    def __call__(self, model_fn, noise, **kwargs: Any):
        """``fastdiff.sample(model_fn, noise, sampler=self, **kwargs)``."""
        return sample_plan(self, model_fn, noise, **kwargs)


# ---------------------------------------------------------------------------------------------
# The samplers
# ---------------------------------------------------------------------------------------------
class DDPM(Sampler):
    """DDPM ancestral sampling (Ho et al. 2020)."""

    scheduler_class = scheduling.DDPMScheduler


class DDIM(Sampler):
    """DDIM (Song et al. 2021); ``eta`` scales the injected noise (0: deterministic)."""

    scheduler_class = scheduling.DDIMScheduler
    step_options = ("eta",)

    def _step_key(self) -> tuple:
        return (self.step_kwargs.get("eta", 0.0),)


class Euler(Sampler):
    """Euler on the probability-flow ODE (Karras et al. 2022), optional churn (s_churn, s_tmin, s_tmax, s_noise)."""

    scheduler_class = scheduling.EulerDiscreteScheduler
    step_options = ("s_churn", "s_tmin", "s_tmax", "s_noise")

    def _step_key(self) -> tuple:
        k = self.step_kwargs
        return (k.get("s_churn", 0.0), k.get("s_tmin", 0.0), k.get("s_tmax", math.inf), k.get("s_noise", 1.0))


class EulerAncestral(Sampler):
    """Euler-ancestral: an Euler step down, then fresh noise back up to the next level."""

    scheduler_class = scheduling.EulerAncestralDiscreteScheduler


class Heun(Sampler):
    """Heun's 2nd-order method (Karras et al. 2022): two model evaluations per step."""

    scheduler_class = scheduling.HeunDiscreteScheduler


class DPMSolverPP(Sampler):
    """DPM-Solver++ multistep (Lu et al. 2022): ``order`` 1-3, ``sde`` for the stochastic variant,
    ``solver_type`` midpoint / heun, ``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``."""

    scheduler_class = scheduling.DPMSolverMultistepScheduler

    def _friendly(self) -> tuple:
        return ("order", "sde")

    def _translate(self, options: dict) -> dict:
        if "order" in options:
            options["solver_order"] = options.pop("order")
        if "sde" in options:
            options["algorithm_type"] = "sde-dpmsolver++" if options.pop("sde") else "dpmsolver++"
        return options


class UniPC(Sampler):
    """UniPC predictor-corrector (Zhao et al. 2023): ``order``, ``variant`` bh1 / bh2, ``disable_corrector``."""

    scheduler_class = scheduling.UniPCMultistepScheduler

    def _friendly(self) -> tuple:
        return ("order", "variant")

    def _translate(self, options: dict) -> dict:
        if "order" in options:
            options["solver_order"] = options.pop("order")
        if "variant" in options:
            options["solver_type"] = options.pop("variant")
        return options


class LCM(Sampler):
    """Latent consistency model sampling (Luo et al. 2023), 1-8 steps; img2img strength trims its
    original schedule the way diffusers' LCM pipelines do."""

    scheduler_class = scheduling.LCMScheduler
    defaults = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    def _set_timesteps(self, sched, steps, timesteps, sigmas, mu, strength):
        if sigmas is not None or mu is not None:
            raise ValueError("fastdiff: LCM takes steps or timesteps, not sigmas or mu")
        if timesteps is not None:
            sched.set_timesteps(timesteps=list(timesteps), strength=strength)
        else:
            sched.set_timesteps(steps, strength=strength)

    def _begin(self, sched, steps, strength):
        return 0


class PNDM(Sampler):
    """PNDM (Liu et al. 2022): Stable Diffusion 1.x's default, PLMS (4th-order Adams-Bashforth with a
    2nd-order start); ``skip_prk_steps=False`` warms up with pseudo Runge-Kutta instead."""

    scheduler_class = scheduling.PNDMScheduler
    defaults = dict(SD_SCHEDULE, skip_prk_steps=True)


class LMS(Sampler):
    """Linear multistep (k-diffusion's sample_lms): ``order`` (default 4) past derivatives, weights
    integrated from Lagrange polynomials in sigma."""

    scheduler_class = scheduling.LMSDiscreteScheduler
    step_options = ("order",)

    def _step_key(self) -> tuple:
        return (int(self.step_kwargs.get("order", 4)),)


class EDMEuler(Sampler):
    """Euler in Karras et al.'s EDM parameterisation (preconditioned networks, c_noise timesteps); churn via
    ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``."""

    scheduler_class = scheduling.EDMEulerScheduler
    defaults: Mapping[str, Any] = {}
    step_options = ("s_churn", "s_tmin", "s_tmax", "s_noise")

    def _step_key(self) -> tuple:
        k = self.step_kwargs
        return (k.get("s_churn", 0.0), k.get("s_tmin", 0.0), k.get("s_tmax", math.inf), k.get("s_noise", 1.0))


class DDIMInversion(Sampler):
    """DDIM inversion (Song et al. 2021; Mokady et al. 2022): runs a clean latent up to noise, for
    editing; pass the latent as ``noise``. The timesteps ascend."""

    scheduler_class = scheduling.DDIMInverseScheduler


class IPNDM(Sampler):
    """Improved PNDM (Zhang & Chen 2022): 4th-order Adams-Bashforth on the noise estimate of a
    v-predicting model, over sin^2-spaced levels."""

    scheduler_class = scheduling.IPNDMScheduler

    @property
    def prediction_type(self) -> str:
        return "v_prediction"  # the only output IPNDM reads (its config has no prediction_type)


class FlowMatchEuler(Sampler):
    """Euler for rectified-flow models (SD3, FLUX): the model predicts v = noise - x0. ``shift`` is
    SD3's resolution shift; ``use_dynamic_shifting`` with ``mu`` is FLUX's."""

    scheduler_class = scheduling.FlowMatchEulerDiscreteScheduler
    defaults: Mapping[str, Any] = {}


class SASolver(Sampler):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector; ``predictor_order`` and
    ``corrector_order`` 1-4, ``tau_func`` (timestep -> stochasticity; default 1 on 200..800, else 0),
    ``algorithm_type`` data_prediction / noise_prediction. img2img noises the image at the first step's
    level; diffusers' pipelines (its add_noise is DDPM's) at the integer timestep's alphas_cumprod,
    which differs from that level under Karras, exponential, beta or flow sigmas."""

    scheduler_class = scheduling.SASolverScheduler
class DPMSolverPPInversion(DPMSolverPP):
    """DPM-Solver++ multistep inversion (Lu et al. 2022, run up the levels): runs a clean latent up to
    noise, for editing; pass the latent as ``noise``. ``order`` 1-3; the timesteps ascend."""

    scheduler_class = scheduling.DPMSolverMultistepInverseScheduler


class EDMDPMSolverPP(DPMSolverPP):
    """DPM-Solver++ multistep in Karras et al.'s EDM parameterisation (Playground v2.5): ``order`` 1-3,
    ``sde``, ``solver_type``; preconditioned networks, c_noise timesteps."""

    scheduler_class = scheduling.EDMDPMSolverMultistepScheduler
    defaults: Mapping[str, Any] = {}


class DEIS(Sampler):
    """DEIS (Zhang & Chen 2023): multistep exponential integrator of the noise prediction, Lagrange
    interpolation in log rho; ``order`` 1-3 (default 2)."""

    scheduler_class = scheduling.DEISMultistepScheduler

    def _friendly(self) -> tuple:
        return ("order",)

    def _translate(self, options: dict) -> dict:
        if "order" in options:
            options["solver_order"] = options.pop("order")
        return options


class DPMSolverSinglestep(DPMSolverPP):
    """Singlestep DPM-Solver++ (Lu et al. 2022): groups of ``order`` (1-3) evaluations, each step
    restarting from the group's first sample; ``sde`` (orders 1-2), ``solver_type`` midpoint / heun.
    An uneven last group is shortened (lower_order_final)."""

    scheduler_class = scheduling.DPMSolverSinglestepScheduler
    defaults = dict(SD_SCHEDULE, lower_order_final=True)


class DPM2(Sampler):
    """DPM-Solver-2 (Karras et al. 2022; k-diffusion's sample_dpm_2): an Euler step to the log-midpoint
    level, then the whole step again with the midpoint's derivative (two model evaluations per step)."""

    scheduler_class = scheduling.KDPM2DiscreteScheduler


class DPM2Ancestral(Sampler):
    """DPM-Solver-2 ancestral (k-diffusion's sample_dpm_2_ancestral): DPM-Solver-2 down to sigma_down,
    then fresh noise back up to the next level."""

    scheduler_class = scheduling.KDPM2AncestralDiscreteScheduler


class TCD(Sampler):
    """Trajectory consistency distillation's strategic stochastic sampling (Zheng et al. 2024), 2-8 steps;
    ``eta`` (the paper's gamma, default 0.3) sets how much of each step is re-noised (0: deterministic).
    img2img skips the first steps, as the generic diffusers pipelines TCD runs in do."""

    scheduler_class = scheduling.TCDScheduler
    defaults = LCM.defaults
    step_options = ("eta",)

    def _step_key(self) -> tuple:
        return (self.step_kwargs.get("eta", 0.3),)


class DPMPPSDE(Sampler):
    """DPM-Solver++(2S) SDE (Lu et al. 2022; k-diffusion's sample_dpmpp_sde): two model evaluations per
    step, Brownian-tree noise (needs torchsde); ``s_noise`` scales it. The tree's seed is
    ``noise_sampler_seed`` if given, else drawn from ``generator``. Not with cuda_graph=True."""

    scheduler_class = scheduling.DPMSolverSDEScheduler
    step_options = ("s_noise",)

    def _step_key(self) -> tuple:
        return (self.step_kwargs.get("s_noise", 1.0),)


#: fastdiff.sample(sampler=...) names
NAMED: dict[str, tuple[type, dict]] = {
    "ddpm": (DDPM, {}),
    "ddim": (DDIM, {}),
    "euler": (Euler, {}),
    "euler_ancestral": (EulerAncestral, {}),
    "heun": (Heun, {}),
    "dpmpp_2m": (DPMSolverPP, {"order": 2}),
    "dpmpp_3m": (DPMSolverPP, {"order": 3}),
    "dpmpp_2m_sde": (DPMSolverPP, {"order": 2, "sde": True}),
    "dpmpp_3m_sde": (DPMSolverPP, {"order": 3, "sde": True}),
    "unipc": (UniPC, {}),
    "lcm": (LCM, {}),
    "pndm": (PNDM, {}),
    "lms": (LMS, {}),
    "edm_euler": (EDMEuler, {}),
    "ddim_inversion": (DDIMInversion, {}),
    "ipndm": (IPNDM, {}),
    "flow_euler": (FlowMatchEuler, {}),
    "sa_solver": (SASolver, {}),
    "dpmpp_2m_inversion": (DPMSolverPPInversion, {"order": 2}),
    "edm_dpmpp_2m": (EDMDPMSolverPP, {"order": 2}),
    "deis": (DEIS, {}),
    "dpmpp_2s": (DPMSolverSinglestep, {"order": 2}),
    "dpmpp_3s": (DPMSolverSinglestep, {"order": 3}),
    "dpm2": (DPM2, {}),
    "dpm2_ancestral": (DPM2Ancestral, {}),
    "tcd": (TCD, {}),
    "dpmpp_sde": (DPMPPSDE, {}),
}


def make_sampler(name: str, config: Optional[Mapping[str, Any]] = None, **options: Any) -> Sampler:
    if name not in NAMED:
        raise ValueError(f"fastdiff: sampler expected one of {', '.join(NAMED)} or a fastdiff.samplers.Sampler, got {name!r}")
    cls, preset = NAMED[name]
    return cls(config, **{**preset, **options})
