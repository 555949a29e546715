"""Swapping a fastdiff scheduler into a real diffusers pipeline just works:
``pipe.scheduler = fastdiff.schedulers.X.from_config(pipe.scheduler.config)`` gives the same images."""

import numpy as np
import pytest
import torch

import fastdiff
from tests.samplers.harness import quiet_diffusers

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    quiet_diffusers()
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 norm_num_groups=4).eval()


def images(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np", **kw).images


@pytest.mark.parametrize("pipeline,scheduler,kw", [
    ("DDIMPipeline", "DDIMScheduler", {"eta": 0.5}),  # diffusers' default clip_sample=True: the clipped-x0 path
    ("DDPMPipeline", "DDPMScheduler", {}),
])
def test_swapped_scheduler_reproduces_the_pipeline(unet, pipeline, scheduler, kw):
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=diffusers.DDPMScheduler())
    ref = images(pipe, **kw)
    pipe.scheduler = getattr(fastdiff.schedulers, scheduler).from_config(pipe.scheduler.config)
    assert pipe.config["scheduler"][0].startswith("fastdiff")
    out = images(pipe, **kw)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
