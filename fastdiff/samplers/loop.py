"""The sampling loop: ``fastdiff.sample``.

Each model evaluation is the model call plus one `fastdiff.ops.sampler_update` launch, which fuses
classifier-free guidance, the prediction-type conversion, the solver update, the history write and
the noise injection. Nothing in the loop reads a device value on the host: rows and timesteps are
views into tensors moved to the device once, noise is drawn with ``torch.randn``'s values on the device (`fastdiff.ops.randn`), and
progress / callbacks only see device tensors. ``cuda_graph=True`` replays the same step as a CUDA
graph (fastdiff/samplers/graph.py).

Inpainting: the known region is re-noised to the level of the state after every evaluation, from
the same initial noise, as diffusers' inpainting pipelines do:
``x <- mask * x + (1 - mask) * (p_j image + q_j noise)``. The known part for every level,
``p_j (1 - mask) image + q_j (1 - mask) noise``, is computed in one batched operation before the
loop, so each step adds a single fused elementwise pass, ``torch.addcmul(known[j], mask, x)``
(when that table would exceed ``inpaint.INPAINT_TABLE_BYTES`` the known part is formed per step instead,
two passes). It cannot fold into sampler_update's scalar coefficients: the mask is per element.
Heun's corrector and UniPC's corrector recover the state before their predictor from the current
state; with a binary mask that is exact where the image is generated (the kept region is replaced
anyway), with a soft mask the blended fraction of the known region leaks into that recovery.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops.randn import randn
from ..ops.sampler_update import LoopUpdate
from .graph import run_graphed
from .inpaint import Inpaint
from .plan import Plan
from .progress import progress_bar

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], Any]

def _check_inputs(noise: Tensor, image: Optional[Tensor], mask: Optional[Tensor], guidance_scale) -> None:
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.dim() < 1:
        raise ValueError(f"fastdiff.sample: noise expected a floating-point tensor (B, ...), got {noise!r:.80}")
    if image is not None:
        if not isinstance(image, Tensor) or tuple(image.shape) != tuple(noise.shape):
            raise ValueError(f"fastdiff.sample: image expected a tensor of noise's shape {tuple(noise.shape)}, "
                             f"got {getattr(image, 'shape', type(image).__name__)}")
        if image.device != noise.device:
            raise ValueError(f"fastdiff.sample: image expected a tensor on {noise.device}, got one on {image.device}")
    if mask is not None:
        if image is None:
            raise ValueError("fastdiff.sample: mask needs image (the known content to keep where mask is 0)")
        try:
            torch.broadcast_shapes(mask.shape, noise.shape)
        except RuntimeError:
            raise ValueError(f"fastdiff.sample: mask expected a shape broadcastable to {tuple(noise.shape)}, got {tuple(mask.shape)}") from None
        if torch.broadcast_shapes(mask.shape, noise.shape) != noise.shape:
            raise ValueError(f"fastdiff.sample: mask expected a shape broadcastable to {tuple(noise.shape)}, got {tuple(mask.shape)}")


def sample_plan(
    sampler: Any,
    model_fn: ModelFn,
    noise: Tensor,
    *,
    steps: Optional[int] = 20,
    guidance_scale: Optional[Union[float, Tensor]] = None,
    guidance_rescale: float = 0.0,
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
) -> Tensor:
    """``fastdiff.sample`` with a configured fastdiff.samplers.Sampler (only its ``plan`` is called; see
    fastdiff.samplers.sample for the arguments)."""
    _check_inputs(noise, image, mask, guidance_scale)
    if guidance_rescale and guidance_scale is None:
        raise ValueError("fastdiff.sample: guidance_rescale needs guidance_scale")
    plan = sampler.plan(steps, noise.device, strength=strength if image is not None else 1.0,
                        timesteps=timesteps, sigmas=sigmas, mu=mu)
    if image is not None and (mask is None or strength < 1.0):
        # img2img (and inpainting below full strength): the image noised to the first level, as diffusers' add_noise
        p, q = plan.levels[0]
        x = torch.add(image.to(noise.dtype) * p, noise, alpha=q)
    else:
        x = noise * plan.init_scale if plan.init_scale != 1.0 else noise
    inpaint = Inpaint(plan, image.to(noise.dtype), mask, noise) if mask is not None else None
    if cuda_graph:
        return run_graphed(plan, model_fn, x, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                           generator=generator, callback=callback, progress=progress, inpaint=inpaint,
                           desc=type(sampler).__name__)
    return run(plan, model_fn, x, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generator,
               callback=callback, progress=progress, inpaint=inpaint, desc=type(sampler).__name__)




def run(
    plan: Plan,
    model_fn: ModelFn,
    x: Tensor,
    *,
    guidance_scale=None,
    guidance_rescale: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    progress: Optional[bool] = None,
    inpaint: Optional[Inpaint] = None,
    desc: str = "sampling",
) -> Tensor:
    """The eager loop over a plan, starting from state ``x`` (model coordinates)."""
    guided = guidance_scale is not None
    hist = torch.empty((plan.history, *x.shape), dtype=x.dtype, device=x.device) if plan.history else None
    update = LoopUpdate(hist, guidance_scale, guidance_rescale if guided else 0.0)
    bar = progress_bar(progress, len(plan), desc)
    source = plan.noise(x, generator) if plan.noise is not None else None
    try:
        for j in range(len(plan)):
            t = plan.timesteps[j]
            out = model_fn(torch.cat([x, x]) if guided else x, t)
            z = source(j, x) if source is not None else None
            if source is None and plan.draws[j]:
                z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                if not plan.noise_read[j]:
                    z = None
            x = update(x, out, plan.table[j], z)
            if inpaint is not None:
                x = inpaint(j, x)
            if callback is not None:
                callback(j, t, x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return x
