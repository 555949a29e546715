"""The DDIM and DPM-Solver++(2M) coefficient tables reproduce diffusers' schedulers step for step."""

import pytest
import torch

import fastdiff
from fastdiff.samplers import ddim_table, dpmpp_2m_table

diffusers = pytest.importorskip("diffusers")
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def toy_model(x, t):
    return torch.tanh(x) * 0.5 + 0.01 * t / 1000


def run_both(scheduler, table, steps_kwargs=None, noise=False):
    ts = scheduler.timesteps.tolist()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    y = x.clone()
    k = table.shape[1] - 6
    hist = torch.zeros(k, *x.shape) if k else None
    rows = table.to(torch.float32)
    for i, t in enumerate(ts):
        z = torch.randn(x.shape, generator=gen) if noise else None
        kw = {"variance_noise": z, **(steps_kwargs or {})} if noise else dict(steps_kwargs or {})
        x = scheduler.step(toy_model(x, t), t, x, **kw).prev_sample
        y = fastdiff.ops.sampler_update(y, toy_model(y, t), rows[i], history=hist, noise=z)
    return x, y


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(prediction_type, eta):
    s = diffusers.DDIMScheduler(**SD, clip_sample=False, prediction_type=prediction_type)
    s.set_timesteps(12)
    table = ddim_table(s.alphas_cumprod, s.timesteps.tolist(), eta=eta, prediction_type=prediction_type)
    x, y = run_both(s, table, {"eta": eta}, noise=eta > 0)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_2m_matches_diffusers(prediction_type, steps):
    s = diffusers.DPMSolverMultistepScheduler(**SD, prediction_type=prediction_type)
    s.set_timesteps(steps)
    table = dpmpp_2m_table(s.alphas_cumprod, s.timesteps.tolist(), prediction_type=prediction_type)
    x, y = run_both(s, table)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


def test_tables_refuse_bad_timesteps_and_non_finite_rows():
    ac = torch.linspace(0.99, 0.0, 1000, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim_table(ac, [10, 20])
    with pytest.raises(ValueError, match=r"values in \[0, 999\]"):
        ddim_table(ac, [1000, 10])
    with pytest.raises(ValueError, match="non-finite coefficients at steps \\[0\\]"):
        ddim_table(ac, [999, 500])  # alphas_cumprod = 0: epsilon prediction cannot reach x0
