"""The shortcuts of the drop-in step path give diffusers' own values: scale_model_input's divisors
derived once per level tensor (fastdiff.schedulers._base.SigmaInputScale) and the one-pass x0."""

import warnings

import diffusers
import pytest
import torch

import fastdiff.schedulers as fs
from fastdiff.schedulers._base import x0_from_coeffs

NAMES = ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "EulerDiscreteScheduler",
         "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"]
CONFIGS = [{}, {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}, {"use_karras_sigmas": True}]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "v", "karras"])
@pytest.mark.parametrize("name", NAMES)
def test_scale_model_input_is_bitwise_diffusers_at_every_stage(name, cfg):
    warnings.simplefilter("ignore")
    try:
        ours, theirs = getattr(fs, name)(**cfg), getattr(diffusers, name)(**cfg)
    except TypeError:
        pytest.skip(f"{name} has no {sorted(cfg)}")
    ours.set_timesteps(9)
    theirs.set_timesteps(9)
    x = 10 * torch.randn(2, 4, 8, 8)
    for t in theirs.timesteps:  # both stages of the two-stage schedulers, on diffusers' trajectory
        torch.testing.assert_close(ours.scale_model_input(x, t), theirs.scale_model_input(x, t), rtol=0, atol=0)
        m = torch.tanh(x)
        kw = {"generator": torch.Generator().manual_seed(0)} if "Ancestral" in name else {}
        ours.step(m, t, x, **kw)
        x = theirs.step(m, t, x, **kw).prev_sample
    assert getattr(ours, "is_scale_input_called", None) == getattr(theirs, "is_scale_input_called", None)


def test_two_stage_schedulers_derive_each_level_tables_once(monkeypatch):
    s = fs.KDPM2DiscreteScheduler()
    derived = []
    monkeypatch.setattr(fs.KDPM2DiscreteScheduler, "_input_scale", staticmethod(lambda levels: derived.append(levels) or (levels**2 + 1) ** 0.5))
    s.set_timesteps(6)
    x = torch.randn(1, 4, 8, 8)
    for t in s.timesteps:  # the stages alternate between sigmas and sigmas_interpol
        x = s.step(torch.tanh(x), t, s.scale_model_input(x, t)).prev_sample
    assert len(derived) == 2


def test_scale_model_input_follows_a_new_schedule():
    ours, theirs = fs.EulerDiscreteScheduler(), diffusers.EulerDiscreteScheduler()
    x = torch.ones(1, 4, 2, 2)
    for steps in (5, 50):  # new sigmas after set_timesteps: the divisors are derived again
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        for s in (ours, theirs):
            s._step_index = 1
        torch.testing.assert_close(ours.scale_model_input(x, ours.timesteps[1]), theirs.scale_model_input(x, theirs.timesteps[1]),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("a,b", [(1.0, -3.5), (0.25, -0.75)])
def test_x0_from_coeffs_float32_paths_match_the_float_formula(a, b):
    x, m = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    want = (a * x.double() + b * m.double()).float()
    torch.testing.assert_close(x0_from_coeffs(a, b, x, m), want, rtol=2e-6, atol=2e-6)
    row = torch.tensor([a, b])
    torch.testing.assert_close(x0_from_coeffs(row[0], row[1], x, m), want, rtol=2e-6, atol=2e-6)
    half = x0_from_coeffs(a, b, x.half(), m.half())
    assert half.dtype == torch.float16


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_second_stage_x0_is_the_launch_s_own_output_and_matches_diffusers(name, prediction_type):
    """The corrector / second stage returns the D its launch wrote (no extra pass): diffusers' x0 to float32 rounding."""
    warnings.simplefilter("ignore")
    ours, theirs = getattr(fs, name)(prediction_type=prediction_type), getattr(diffusers, name)(prediction_type=prediction_type)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = 14 * torch.randn(2, 4, 8, 8)
    for j, t in enumerate(theirs.timesteps):
        m = torch.tanh(theirs.scale_model_input(x, t))
        ours.scale_model_input(x, t)
        kw = (lambda: {"generator": torch.Generator().manual_seed(j)}) if "Ancestral" in name else dict
        mine, ref = ours.step(m, t, x, **kw()), theirs.step(m, t, x, **kw())
        if j % 2 == 1:  # a second stage: x0 is a view of the history buffer
            assert mine.pred_original_sample._base is ours._history
        torch.testing.assert_close(mine.pred_original_sample, ref.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.prev_sample, ref.prev_sample, rtol=1e-5, atol=1e-5)
        x = ref.prev_sample


@pytest.mark.parametrize("name,kw", [("DDIMScheduler", {}), ("DDIMScheduler", {"eta": 0.7}), ("DDIMInverseScheduler", {})])
def test_clipped_ddim_steps_are_two_one_pass_launches_with_diffusers_values(name, kw):
    """clip_sample (diffusers' default): x0 = a x + b m, clamped, recombined with the unclipped epsilon
    (an epsilon model's output): two fixed-row sampler_update launches (the noise folded into the second)."""
    from tests.helpers import DispatchedOps

    ours, theirs = getattr(fs, name)(), getattr(diffusers, name)()
    assert ours.config.clip_sample
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = 3 * torch.randn(2, 4, 8, 8)
    y_ours = y_theirs = x
    for t in theirs.timesteps:
        m = torch.tanh(y_theirs)
        gen = {"generator": torch.Generator().manual_seed(int(t))} if kw else {}
        with DispatchedOps() as seen:
            o = ours.step(m, t, y_theirs, **kw, **gen)
        r = theirs.step(m, t, y_theirs, **kw, **({"generator": torch.Generator().manual_seed(int(t))} if kw else {}))
        assert [op for op in seen.ops if op.startswith("fastdiff.")] == ["fastdiff.sampler_update.default"] * 2
        torch.testing.assert_close(o.prev_sample, r.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o.pred_original_sample, r.pred_original_sample, rtol=1e-5, atol=1e-5)
        y_theirs = r.prev_sample


def test_clipped_ddim_steps_of_float64_or_autograd_inputs_take_pytorch():
    for dtype, grad in ((torch.float64, False), (torch.float32, True)):
        ours, theirs = fs.DDIMScheduler(), diffusers.DDIMScheduler()
        ours.set_timesteps(4)
        theirs.set_timesteps(4)
        x = torch.randn(1, 4, 4, 4, dtype=dtype, requires_grad=grad)
        t = theirs.timesteps[1]
        out = ours.step(torch.tanh(x), t, x).prev_sample
        torch.testing.assert_close(out, theirs.step(torch.tanh(x), t, x).prev_sample, rtol=1e-6, atol=1e-6)
        assert out.requires_grad == grad
