"""IPNDMScheduler keeps its noise estimates until set_timesteps, as diffusers' does: a pass started
again without set_timesteps (``scheduler._step_index = None``, as diffusers' own full-loop test does)
steps at full order from the previous pass's estimates, each step still one fused launch."""

import pytest
import torch

from tests.samplers.harness import SHAPE, quiet_diffusers, toy_model
from tests.helpers import DispatchedOps

diffusers = pytest.importorskip("diffusers")
import fastdiff.schedulers as fs  # noqa: E402


def passes(s, lengths, *, steps=10):
    """Run ``len(lengths)`` passes over the first ``lengths[k]`` timesteps, starting each again as
    diffusers' test does (``_step_index = None``, no set_timesteps); every prev_sample."""
    s.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = []
    for n in lengths:
        for t in s.timesteps[:n]:
            x = s.step(toy_model(x, t), t, x).prev_sample
            out.append(x)
        s._step_index = None
    return out


@pytest.mark.parametrize("lengths,steps", [((10, 10), 10), ((2, 6), 6), ((1, 1, 1, 1, 5), 5), ((5, 10, 7), 10), ((4, 4, 4), 4)],
                         ids=["two-full", "short-then-full", "single-steps", "partial-passes", "three-full"])
def test_passes_without_set_timesteps_continue_diffusers_history(lengths, steps):
    ref = quiet_diffusers().IPNDMScheduler()
    ours = fs.IPNDMScheduler.from_config(ref.config)
    a, b = passes(ours, lengths, steps=steps), passes(ref, lengths, steps=steps)
    assert len(a) == len(b) == sum(lengths)
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5 * y.abs().max().item(), msg=lambda m: f"step {i}: {m}")


def test_set_timesteps_forgets_the_estimates():
    s = fs.IPNDMScheduler()
    passes(s, (10,))
    again = passes(s, (10,))
    fresh = passes(fs.IPNDMScheduler(), (10,))
    torch.testing.assert_close(again[-1], fresh[-1], rtol=0, atol=0)


def test_a_second_pass_is_one_launch_per_step_and_keeps_the_history_buffer():
    first = fs.IPNDMScheduler()
    first.set_timesteps(10)
    x = torch.randn(SHAPE)
    for t in first.timesteps:  # a first pass's table is built at set_timesteps
        m = toy_model(x, t)
        with DispatchedOps() as rec:
            x = first.step(m, t, x).prev_sample
        assert rec.compute() == ["fastdiff.sampler_update.default"]
    s = fs.IPNDMScheduler()
    passes(s, (10,))
    history = s._history
    x = torch.randn(SHAPE)
    for i, t in enumerate(s.timesteps):
        m = toy_model(x, t)
        with DispatchedOps() as rec:
            x = s.step(m, t, x).prev_sample
        assert rec.ops.count("fastdiff.sampler_update.default") == 1
        if i > 0:  # the pass's first step derives its table (host work, once per pass)
            assert rec.compute() == ["fastdiff.sampler_update.default"]
    assert s._history is history
