"""``fastdiff.sample``: resolve a sampler name, then run the loop (fastdiff/samplers/loop.py)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .loop import Callback, ModelFn, sample_plan
from .sampler import Sampler, make_sampler


def sample(
    model_fn: ModelFn,
    noise: Tensor,
    *,
    sampler: Union[str, Sampler] = "dpmpp_2m",
    steps: Optional[int] = 20,
    guidance_scale: Optional[Union[float, Tensor]] = None,
    guidance_rescale: float = 0.0,
    prediction_type: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    image: Optional[Tensor] = None,
    strength: float = 1.0,
    mask: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: Optional[bool] = None,
    cuda_graph: bool = False,
    timesteps: Optional[Sequence[float]] = None,
    sigmas: Optional[Sequence[float]] = None,
    mu: Optional[float] = None,
    **options: Any,
) -> Tensor:
    """Sample from a diffusion or flow model; returns the final sample (B, ...).

    model_fn(x, t) -> model output of x's shape; ``t`` is a 0-d tensor on x's device (the
    scheduler's timestep: integer for DDPM / DDIM / DPM-Solver / UniPC / LCM, float for the Euler
    family and flow matching). With ``guidance_scale`` (a number or a per-sample (B,) tensor),
    model_fn is called once per step on the doubled batch ``cat([x, x])`` and must return
    ``cat([uncond, cond])`` outputs; the guidance (and ``guidance_rescale``) is fused into the update.

    noise: unit Gaussian noise (B, ...): the starting point (scaled to the first noise level here).
    sampler: a name (``fastdiff.samplers.NAMED``: ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m,
    dpmpp_3m, dpmpp_2m_sde, dpmpp_3m_sde, unipc, lcm, pndm, lms, edm_euler, ddim_inversion, ipndm,
    flow_euler, sa_solver, dpmpp_2m_inversion, edm_dpmpp_2m,
    deis, dpmpp_2s, dpmpp_3s, dpm2, dpm2_ancestral, tcd, dpmpp_sde) or a ``fastdiff.samplers.Sampler``; ``options`` and
    ``config`` (e.g. a diffusers scheduler config) configure a named one, ``prediction_type``
    (epsilon, v_prediction, sample, flow_prediction) included.
    image + strength: img2img, starting ``strength`` of the way up the schedule from ``image``
    noised with ``noise``. image + mask: inpainting (mask 1 = generate, 0 = keep image; see the
    module docstring). generator: seeds the per-step noise of stochastic samplers.
    callback(i, t, x): called after every model evaluation with the new state (no host sync
    unless the callback makes one). progress: a tqdm bar (default: on when stderr is a terminal).
    cuda_graph: capture the step once and replay it (CUDA tensors only; see graph.py).
    """
    if isinstance(sampler, str):
        if prediction_type is not None:
            options["prediction_type"] = prediction_type
        sampler = make_sampler(sampler, config, **options)
    elif options or config is not None or prediction_type is not None:
        raise TypeError("fastdiff.sample: options, config and prediction_type configure a named sampler; "
                        "a Sampler instance carries its own")
    return sample_plan(sampler, model_fn, noise, steps=steps, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                       image=image, strength=strength, mask=mask, generator=generator, callback=callback, progress=progress,
                       cuda_graph=cuda_graph, timesteps=timesteps, sigmas=sigmas, mu=mu)
