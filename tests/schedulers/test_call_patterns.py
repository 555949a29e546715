"""Call patterns diffusers' own tests and pipelines use, each checked against diffusers' class."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import fastdiff.schedulers as fs  # noqa: E402


def model(x, t):
    return 0.3 * x - 0.1 * torch.tanh(x) + 0.001 * float(t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_heun_takes_its_corrector_base_from_the_stored_predictor_sample(prediction_type):
    # diffusers' full-loop tests (and DiTPipeline) pass step() the scale_model_input result, not the
    # previous prev_sample: the corrector's base is then the sample stored at the predictor
    out = []
    for s in (fs.HeunDiscreteScheduler(prediction_type=prediction_type), diffusers.HeunDiscreteScheduler(prediction_type=prediction_type)):
        s.set_timesteps(10)
        sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        for t in s.timesteps:
            sample = s.scale_model_input(sample, t)
            sample = s.step(model(sample, t), t, sample).prev_sample
        out.append(sample)
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_ddpm_default_schedule_with_clipping_and_a_generator():
    # no set_timesteps (the 1000 training timesteps), clip_sample=True, noise from a generator, t = 1 then t = 0
    out = []
    for cls in (fs.DDPMScheduler, diffusers.DDPMScheduler):
        s = cls()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        steps = []
        for t in (1, 0):
            x = s.step(model(x, t), t, x, generator=g).prev_sample
            steps.append(x)
        out.append(steps)
    for ours, theirs in zip(*out):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
