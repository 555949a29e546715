"""On a CUDA device: sampling loops never synchronise with the host, and cuda_graph=True replays
exactly what the eager loop computes. (Marked gpu; skipped without a CUDA device.)"""

import contextlib
import importlib.util

import pytest
import torch

import fastdiff
from fastdiff import _backend
from fastdiff.samplers import loop, make_sampler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SHAPE = (2, 4, 16, 16)
STOCHASTIC = ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "lcm"]
NAMES = ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "flow_euler"] + STOCHASTIC


@pytest.fixture(autouse=True)
def kernel_backend():
    """The best kernel this build has for CUDA tensors (the reference if neither cuda nor triton is here)."""
    has_triton = importlib.util.find_spec("fastdiff.triton") is not None and \
        importlib.util.find_spec("fastdiff.triton.sampler_update") is not None
    name = "cuda" if _backend.cuda_compiled() else "triton" if has_triton else "reference"
    with fastdiff.backend(name):
        yield name


def model(x, t):
    """Sync-free toy denoiser: t stays a device tensor; a doubled batch gets a conditional offset."""
    out = torch.tanh(x) * 0.5 + 0.1 * x + t.float() * 1e-5
    if x.shape[0] == 2 * SHAPE[0]:  # built on the device (torch.tensor(list) would be a host->device copy)
        out = out + 0.05 * (torch.arange(x.shape[0], device=x.device) >= SHAPE[0]).to(x.dtype).view(-1, 1, 1, 1)
    return out


@contextlib.contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def noise(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda")


@pytest.mark.parametrize("name", NAMES)
def test_eager_loop_makes_no_host_sync(name):
    sampler = make_sampler(name)
    plan = sampler.plan(4 if name == "lcm" else 8, torch.device("cuda"))  # the plan's one host->device copy
    x0 = noise() * plan.init_scale
    gen = torch.Generator(device="cuda").manual_seed(3)
    with no_host_sync():
        out = loop.run(plan, model, x0, guidance_scale=5.0, guidance_rescale=0.5, generator=gen, progress=False)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler", "DDIMScheduler", "LCMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_scheduler_steps_make_no_host_sync(name):
    """A pipeline-style loop over scheduler.timesteps on the device: the first step's position is
    read from the timestep's place in ``timesteps`` (no .item()), every row is a device view."""
    s = getattr(fastdiff.schedulers, name)()
    s.set_timesteps(4 if name == "LCMScheduler" else 6, device="cuda")
    x = noise() * float(getattr(s, "init_noise_sigma", 1.0))
    with no_host_sync():
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t), t), t, x).prev_sample
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", NAMES)
def test_cuda_graph_replays_the_eager_loop(name):
    steps = 4 if name == "lcm" else 8
    kw = dict(sampler=name, steps=steps, guidance_scale=4.0, progress=False)
    eager = fastdiff.sample(model, noise(1), generator=torch.Generator(device="cuda").manual_seed(5), **kw)
    graphed = fastdiff.sample(model, noise(1), generator=torch.Generator(device="cuda").manual_seed(5), cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, eager, rtol=1e-6, atol=1e-6)


def test_cuda_graph_with_default_generator_inpainting_and_callback():
    image = torch.linspace(-1, 1, torch.Size(SHAPE).numel(), device="cuda").reshape(SHAPE)
    mask = (torch.arange(SHAPE[-1], device="cuda") < 5).float().expand(SHAPE)
    seen = []
    kw = dict(sampler="euler_ancestral", steps=6, image=image, mask=mask, strength=0.7, progress=False)
    torch.manual_seed(0)
    eager = fastdiff.sample(model, noise(2), **kw)
    torch.manual_seed(0)
    graphed = fastdiff.sample(model, noise(2), cuda_graph=True, callback=lambda i, t, x: seen.append(i), **kw)
    torch.testing.assert_close(graphed, eager, rtol=1e-6, atol=1e-6)
    assert seen == list(range(len(seen))) and len(seen) > 0


def test_cuda_graph_replays_without_host_sync():
    sampler = make_sampler("dpmpp_3m")
    plan = sampler.plan(10, torch.device("cuda"))
    from fastdiff.samplers.graph import CudaGraphRecorder, GraphedSteps

    steps = GraphedSteps(plan, model, noise(4), 3.0, 0.0, None, None, CudaGraphRecorder(torch.device("cuda"), None))
    torch.cuda.synchronize()
    with no_host_sync():
        for j in range(len(plan)):
            steps.replay(plan.draws[j])
    assert torch.isfinite(steps.x).all()
