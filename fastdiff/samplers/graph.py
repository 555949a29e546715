"""``fastdiff.sample(..., cuda_graph=True)``: capture one sampling step as a CUDA graph and replay it.

Every evaluation runs the same kernels on the same buffers; only the step index changes, and it
lives on the device: the captured step reads its coefficient row, timestep and inpainting level
with ``index_select`` on a device counter and increments the counter itself. Two graphs are
captured from one memory pool, with and without a noise draw, so the random stream is consumed
exactly as in the eager loop (a stochastic sampler draws only where diffusers does); the host
picks which to replay from the plan. Between replays the host only launches the next graph,
updates the progress bar and calls the callback (with the state buffer, overwritten by the next
replay: clone it to keep it).

Requirements on model_fn are CUDA graph's: no host syncs, no CPU tensors, the same shapes every
call, and whatever it closes over (text embeddings, ...) kept alive. It is called once eagerly
first (a warm-up for lazy initialisation and autotuning) and then captured twice.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .. import ops
from .inpaint import INPAINT_TABLE_BYTES, Inpaint
from .plan import Plan
from .progress import progress_bar


def run_graphed(
    plan: Plan,
    model_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    guidance_scale=None,
    guidance_rescale: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback=None,
    progress: Optional[bool] = None,
    inpaint: Optional[Inpaint] = None,
    desc: str = "sampling",
    recorder: Optional["Recorder"] = None,
) -> Tensor:
    if plan.noise is not None:
        raise ValueError(f"fastdiff.sample: cuda_graph=True cannot replay {desc}'s host-side noise (Brownian-tree "
                         "increments); use cuda_graph=False")
    if recorder is None:
        if x.device.type != "cuda":
            raise ValueError(f"fastdiff.sample: cuda_graph=True needs CUDA tensors, got noise on {x.device}")
        recorder = CudaGraphRecorder(x.device, generator)
    steps = GraphedSteps(plan, model_fn, x, guidance_scale, guidance_rescale, generator, inpaint, recorder)
    bar = progress_bar(progress, len(plan), desc)
    try:
        for j in range(len(plan)):
            steps.replay(plan.draws[j])
            if callback is not None:
                callback(j, plan.timesteps[j], steps.x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return steps.x.clone()


class Recorder:
    """Turns a step function into something replayable (a CUDA graph; plain calls in CPU tests)."""

    def warmup(self, fn: Callable[[], None]) -> None:
        fn()

    def record(self, fn: Callable[[], None], draw: bool) -> Callable[[], None]:
        return fn


class CudaGraphRecorder(Recorder):
    def __init__(self, device: torch.device, generator: Optional[torch.Generator]):
        self.device, self.generator = device, generator
        self.pool = torch.cuda.graph_pool_handle()

    def warmup(self, fn: Callable[[], None]) -> None:
        # On a side stream, as CUDA graph capture wants (lazy initialisation, cuBLAS handles, autotuning).
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def record(self, fn: Callable[[], None], draw: bool) -> Callable[[], None]:
        g = torch.cuda.CUDAGraph()
        gen = self.generator
        if draw and gen is not None and gen is not torch.cuda.default_generators[self.device.index or 0]:
            register = getattr(g, "register_generator_state", None)
            if register is None:
                raise RuntimeError("fastdiff.sample: cuda_graph=True with a custom generator needs torch >= 2.5 "
                                   "(CUDAGraph.register_generator_state); pass generator=None to use the default one")
            register(gen)
        with torch.cuda.graph(g, pool=self.pool):
            fn()
        return g.replay


class GraphedSteps:
    """One sampling step captured (by `recorder`) with and without a noise draw; `replay(draw)` runs one
    step, `reset(x)` starts again from x without re-capturing (the sampler_overhead benchmark times it)."""

    def __init__(self, plan: Plan, model_fn, x: Tensor, guidance_scale, guidance_rescale: float,
                 generator: Optional[torch.Generator], inpaint: Optional[Inpaint], recorder: Recorder):
        dev = x.device
        self.plan, self.model_fn, self.generator, self.inpaint = plan, model_fn, generator, inpaint
        self.guided = guidance_scale is not None
        self.scale = guidance_scale.to(dev).contiguous() if isinstance(guidance_scale, Tensor) else guidance_scale
        self.rescale = guidance_rescale if self.guided else 0.0
        self.x = x.clone(memory_format=torch.contiguous_format)
        self.hist = torch.empty((plan.history, *x.shape), dtype=x.dtype, device=dev) if plan.history else None
        self.counter = torch.zeros(1, dtype=torch.long, device=dev)
        self.table = plan.table.contiguous()
        self.timesteps = plan.timesteps.contiguous()
        self.known = None
        if inpaint is not None:
            if inpaint.known is None:
                raise ValueError("fastdiff.sample: cuda_graph=True with inpainting needs the per-level known table, "
                                 f"larger here than fastdiff.samplers.inpaint.INPAINT_TABLE_BYTES ({INPAINT_TABLE_BYTES})")
            self.known = inpaint.known
        start = self.x.clone()

        # Warm up without drawing noise (the random stream stays where the eager loop would find it), then reset.
        recorder.warmup(lambda: self._step(draw=False))
        self.x.copy_(start)
        self.counter.zero_()
        # Capture records without running, so the state is untouched by it.
        self.graphs = {draw: recorder.record(lambda d=draw: self._step(draw=d), draw) for draw in sorted(set(plan.draws))}

    def _step(self, draw: bool) -> None:
        """One evaluation; the step index comes from the device counter (captured, not baked in)."""
        idx = self.counter
        row = self.table.index_select(0, idx).squeeze(0)
        t = self.timesteps.index_select(0, idx).squeeze(0)
        x = self.x
        out = self.model_fn(torch.cat([x, x]) if self.guided else x, t)
        z = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) if draw else None
        new = ops.sampler_update(x, out, row, history=self.hist, noise=z, guidance_scale=self.scale, guidance_rescale=self.rescale)
        if self.known is not None:
            new = torch.addcmul(self.known.index_select(0, idx).squeeze(0), self.inpaint.mask, new)
        self.x.copy_(new)
        self.counter.add_(1)

    def replay(self, draw: bool) -> None:
        self.graphs[draw]()

    def reset(self, x: Tensor) -> None:
        """Start again from state ``x`` with the captured graphs (no re-capture); the history needs no
        reset: every slot is written before it is read."""
        self.x.copy_(x)
        self.counter.zero_()
