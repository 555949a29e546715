"""Every fastdiff scheduler is a diffusers scheduler: diffusers' class is a base, and everything but
set_timesteps and step (configuration, serialisation, outputs, helpers) is diffusers' own."""

import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import fastdiff.schedulers as fs  # noqa: E402

CLASSES = [n for n in fs.__all__ if n.endswith("Scheduler")]


@pytest.mark.parametrize("name", CLASSES)
def test_is_the_diffusers_class_and_serialises_like_it(tmp_path, name):
    ours, theirs = getattr(fs, name), getattr(diffusers, name)
    s = ours()
    assert isinstance(s, theirs) and isinstance(s, diffusers.SchedulerMixin) and isinstance(s, diffusers.ConfigMixin)
    assert dict(s.config) == dict(theirs().config)
    assert ours.compatibles == theirs.compatibles and ours._deprecated_kwargs == theirs._deprecated_kwargs
    s.save_pretrained(tmp_path)
    back = ours.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert type(back) is ours and public(back.config) == public(s.config)
    assert type(theirs.from_pretrained(tmp_path)) is theirs  # the saved config names diffusers' class


@pytest.mark.parametrize("name", CLASSES)
def test_step_returns_diffusers_output_classes(name):
    ours, theirs = getattr(fs, name)(), getattr(diffusers, name)()
    kw = {"mu": 0.5} if getattr(ours.config, "use_dynamic_shifting", False) else {}
    for s in (ours, theirs):
        s.set_timesteps(4, **kw)
    x = torch.randn(1, 4, 8, 8)
    scaled = lambda s, t: s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x  # noqa: E731 (not FlowMatch)
    a = ours.step(0.1 * x, ours.timesteps[0], scaled(ours, ours.timesteps[0]))
    b = theirs.step(0.1 * x, theirs.timesteps[0], scaled(theirs, theirs.timesteps[0]))
    assert type(a) is type(b) and list(a.keys()) == list(b.keys())
    assert len(ours.step(0.1 * x, ours.timesteps[1], x, return_dict=False)) == len(b.to_tuple())


def test_from_config_applies_diffusers_rules_for_old_configs():
    # SD-1.5's scheduler config, written by diffusers 0.6: no timestep_spacing, no prediction_type
    old = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                                  steps_offset=1).config
    assert "timestep_spacing" in old["_use_default_values"] or old["timestep_spacing"] == "leading"
    for name in ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler"):
        ours, theirs = getattr(fs, name).from_config(old), getattr(diffusers, name).from_config(old)
        assert dict(ours.config) == dict(theirs.config)
        ours.set_timesteps(10)
        theirs.set_timesteps(10)
        torch.testing.assert_close(ours.timesteps.to(theirs.timesteps.dtype), theirs.timesteps)


def test_diffusers_helpers_are_diffusers_own():
    s = fs.DDPMScheduler()
    assert s._get_variance.__func__ is diffusers.DDPMScheduler._get_variance
    assert fs.EulerDiscreteScheduler.add_noise is diffusers.EulerDiscreteScheduler.add_noise
    assert fs.FlowMatchEulerDiscreteScheduler.scale_noise is diffusers.FlowMatchEulerDiscreteScheduler.scale_noise


@pytest.mark.parametrize("make,call", [
    (lambda: fs.DDPMScheduler(variance_type="learned_range"), "step"),
    (lambda: fs.UniPCMultistepScheduler(solver_p=diffusers.DDIMScheduler()), "step"),
])
def test_deliberate_refusals_say_fastdiff(make, call):
    s = make()
    s.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(NotImplementedError, match="^fastdiff: "):
        s.step(torch.randn(1, 6, 4, 4) if isinstance(s, fs.DDPMScheduler) else x, s.timesteps[0], x)
    with pytest.raises(NotImplementedError, match="^fastdiff: per-token"):
        f = fs.FlowMatchEulerDiscreteScheduler()
        f.set_timesteps(4)
        f.step(x, f.timesteps[0], x, per_token_timesteps=torch.ones(1, 16))


def test_schedulers_need_diffusers_and_say_how_to_install_it():
    code = """
import sys
sys.modules["diffusers"] = None
import fastdiff
try:
    import fastdiff.schedulers
except ImportError as e:
    assert 'pip install "fastdiff[diffusers]"' in str(e), e
    print("refused")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"
