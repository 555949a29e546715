"""Benchmark: one guided sampler step, fastdiff's fused `sampler_update` against eager PyTorch and diffusers.

Two steps of a 20-step Stable Diffusion schedule (step 10, mid-trajectory), guidance scale 7.5:

- DDIM (eta = 0), from ``fastdiff.samplers.ddim_table``;
- DPM-Solver++(2M) at a second-order step (one history slot), from ``fastdiff.samplers.dpmpp_2m_table``.

Candidates: ``fastdiff.ops.sampler_update(x, out, row, history=..., guidance_scale=s)``; the eager
expression of the same update with the row's coefficients as Python numbers; diffusers'
``DDIMScheduler.step`` / ``DPMSolverMultistepScheduler.step`` preceded by the eager guidance combine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor

from .. import ops
from ..samplers import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod
from ._case import BASELINE, FASTDIFF, Candidate, Case, copy_floor, on_backend
from ._sizes import Size
from .guidance import SCALE, eager as eager_guidance, guided_inputs

OP = "sampler_update"
STEPS, STEP_INDEX = 20, 10
SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)

# Bytes per latent element N (e = bytes per element):
#   DDIM fused:     reads x and the [uncond; cond] output (3N), writes x_next (N)                 -> 4N e
#   DPM++(2M) fused: reads x, the output (2N) and the previous data prediction (N), writes x_next
#                   and the new data prediction into the history slot (2N)                        -> 6N e
#   eager DDIM: guidance (8N) + d = a x + b m (7N) + c_x x + c_d d (7N)                           -> 22N e
#   eager DPM++(2M): as DDIM plus + c_h h (5N)                                                    -> 27N e
TRAFFIC = {
    "ddim": "fused minimum: read x, u, c; write x_next = 4 x N x bytes/element (eager moves 22 x N)",
    "dpmpp_2m": "fused minimum: read x, u, c, h; write x_next, h = 6 x N x bytes/element (eager moves 27 x N)",
}
TITLES = {"ddim": "guided DDIM step (eta = 0)", "dpmpp_2m": "guided DPM-Solver++(2M) step, second order"}


@dataclass
class Step:
    name: str  # "ddim" or "dpmpp_2m"
    timestep: int
    row: Tensor  # float32 coefficient row on the host
    scheduler: Any  # the diffusers scheduler, or None when diffusers is missing


def _steps() -> tuple[list[Step], list[str]]:
    """The two steps with their coefficient rows (and diffusers schedulers when installed)."""
    notes = []
    try:
        import diffusers
    except ImportError:
        diffusers = None
        notes.append("diffusers is not installed: no diffusers baseline (pip install diffusers)")
    if diffusers is not None:
        ddim = diffusers.DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        dpm = diffusers.DPMSolverMultistepScheduler(**SD_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2)
        ddim.set_timesteps(STEPS)
        dpm.set_timesteps(STEPS)
        ac = ddim.alphas_cumprod
        ddim_ts, dpm_ts = ddim.timesteps.tolist(), dpm.timesteps.tolist()
    else:
        ddim = dpm = None
        ac = scaled_linear_alphas_cumprod()
        ddim_ts = [i * (1000 // STEPS) + 1 for i in reversed(range(STEPS))]  # "leading", steps_offset 1
        dpm_ts = torch.linspace(0, 999, STEPS + 1).round().flip(0)[:-1].long().tolist()  # "linspace"
    ddim_rows = ddim_table(ac, ddim_ts, final_alpha_cumprod=float(ac[0])).to(torch.float32)
    dpm_rows = dpmpp_2m_table(ac, dpm_ts).to(torch.float32)
    steps = [
        Step("ddim", ddim_ts[STEP_INDEX], ddim_rows[STEP_INDEX], ddim),
        Step("dpmpp_2m", dpm_ts[STEP_INDEX], dpm_rows[STEP_INDEX], dpm),
    ]
    return steps, notes


def eager(x: Tensor, model_out: Tensor, co: list[float], h_prev: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The step as eager PyTorch: returns (x_next, d), d the data prediction the next step reuses."""
    a, b, c_x, c_d = co[0], co[1], co[2], co[3]
    m = eager_guidance(model_out, SCALE)
    d = a * x + b * m
    x_next = c_x * x + c_d * d
    if h_prev is not None:
        x_next = x_next + co[6] * h_prev
    return x_next, d


def _diffusers_call(step: Step, x: Tensor, model_out: Tensor, h_prev: Optional[Tensor]):
    sched, t = step.scheduler, step.timestep
    if step.name == "ddim":
        return lambda: sched.step(eager_guidance(model_out, SCALE), t, x, return_dict=False)[0]

    def dpm_step() -> Tensor:
        # Same state on every call: mid-trajectory, with the previous data prediction in hand, so
        # diffusers takes the second-order branch and its history matches fastdiff's.
        sched._step_index = STEP_INDEX
        sched.lower_order_nums = 1
        sched.model_outputs[-1] = h_prev
        return sched.step(eager_guidance(model_out, SCALE), t, x, return_dict=False)[0]

    return dpm_step


def _fastdiff_candidate(backend: str, step: Step, x: Tensor, model_out: Tensor, row: Tensor, h_prev: Optional[Tensor]) -> Candidate:
    dtypes = (x.dtype, model_out.dtype)
    history = None if h_prev is None else h_prev.unsqueeze(0).clone()  # (1, B, ...) ring buffer, slot 0

    def timed() -> Tensor:
        return ops.sampler_update(x, model_out, row, history=history, guidance_scale=SCALE)

    def checked() -> dict[str, Tensor]:
        if h_prev is None:
            return {"x_next": call()}
        fresh = h_prev.unsqueeze(0).clone()
        out = on_backend(backend, OP, OP, x.device, dtypes, lambda: ops.sampler_update(x, model_out, row, history=fresh, guidance_scale=SCALE),
                         coeffs_dtype=row.dtype)()
        return {"x_next": out, "history": fresh[0]}

    call = on_backend(backend, OP, OP, x.device, dtypes, timed, coeffs_dtype=row.dtype)
    return Candidate(f"fastdiff[{backend}]", FASTDIFF, call, checked)


def cases(sizes: Sequence[Size], dtypes: Sequence[torch.dtype], device: torch.device, backends: Sequence[str]) -> Iterator[Case]:
    steps, notes = _steps()
    for step in steps:
        co = step.row.tolist()
        row = step.row.to(device)
        for size in sizes:
            for dtype in dtypes:
                g = torch.Generator().manual_seed(1)
                x = torch.randn(size.shape, generator=g).to(device=device, dtype=dtype)
                model_out = guided_inputs(size, dtype, device, seed=2)
                h_prev = torch.randn(size.shape, generator=g).to(device=device, dtype=dtype) if step.name == "dpmpp_2m" else None
                e = x.element_size()
                nbytes = (6 if h_prev is not None else 4) * size.elements * e

                def eager_outputs(x=x, m=model_out, h=h_prev, co=co) -> dict[str, Tensor]:
                    return {"x_next": eager(x, m, co, h)[0]}

                def expected(x=x, m=model_out, h=h_prev, co=co) -> dict[str, Tensor]:
                    x_next, d = eager(x.double(), m.double(), co, None if h is None else h.double())
                    return {"x_next": x_next} if h is None else {"x_next": x_next, "history": d}

                cands = [Candidate("eager", BASELINE, lambda x=x, m=model_out, h=h_prev, co=co: eager(x, m, co, h), eager_outputs)]
                if step.scheduler is not None:
                    diff = _diffusers_call(step, x, model_out, h_prev)
                    cands.append(Candidate("diffusers", BASELINE, diff, lambda diff=diff: {"x_next": diff()}))
                cands += [_fastdiff_candidate(b, step, x, model_out, row, h_prev) for b in backends]
                cands.append(copy_floor(nbytes, dtype, device))
                yield Case(
                    bench="sampler_update",
                    variant=step.name,
                    size=size,
                    dtype=dtype,
                    device=device,
                    nbytes=nbytes,
                    traffic=TRAFFIC[step.name],
                    expected=expected,
                    candidates=cands,
                    notes=list(notes),
                )
