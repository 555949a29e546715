"""Run a fastdiff scheduler and diffusers' scheduler of the same name side by side."""

from __future__ import annotations

import inspect
import logging
import warnings

import torch

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SHAPE = (2, 3, 5, 4)


def toy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth, state- and time-dependent stand-in for a denoiser (never constant, never zero)."""
    return torch.tanh(x) * 0.5 + 0.1 * x + 0.01 * float(t) / 1000


def quiet_diffusers():
    import diffusers

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="diffusers")
    return diffusers


def trajectory(s, *, steps=None, set_kw=None, step_kw=None, seed=0, shape=SHAPE, begin=None, x0=None, model=toy_model):
    """The initial sample and every prev_sample of a run (and pred_original_sample / denoised where returned)."""
    if steps is not None:
        s.set_timesteps(steps, **(set_kw or {}))
    else:
        s.set_timesteps(**(set_kw or {}))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * getattr(s, "init_noise_sigma", 1.0)
    timesteps = s.timesteps
    if begin is not None:
        timesteps = timesteps[begin:]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(begin)
        if x0 is not None:
            noise = x / getattr(s, "init_noise_sigma", 1.0)
            t0 = timesteps[:1]
            x = s.scale_noise(x0, t0, noise) if hasattr(s, "scale_noise") else s.add_noise(x0, noise, t0)
    params = inspect.signature(s.step).parameters
    xs, extras = [x.clone()], [None]
    for t in timesteps:
        xi = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
        kw = dict(step_kw or {})
        if "generator" in params:
            kw["generator"] = g
        out = s.step(model(xi, t), t, x, **kw)
        x = out.prev_sample
        xs.append(x.clone())
        extra = getattr(out, "pred_original_sample", None)
        if extra is None:
            extra = getattr(out, "denoised", None)
        extras.append(extra.clone() if extra is not None else None)
    return xs, extras


def compare(name, cfg, *, steps=8, set_kw=None, step_kw=None, rtol=1e-5, begin=None, x0=None, check_extras=True):
    """Assert fastdiff's run matches diffusers' at every step within rtol.

    The tolerance is relative to the larger of the step's input and output scales: diffusers
    computes x + dt * (x - x0) / sigma in float32, whose rounding error scales with |x| (at zero
    terminal SNR, |x| ~ 4096 at the first step while the output is ~ 15)."""
    import fastdiff.schedulers as fs

    diffusers = quiet_diffusers()
    ref = getattr(diffusers, name)(**cfg)
    ours = getattr(fs, name).from_config(ref.config)
    xs_ref, ex_ref = trajectory(ref, steps=steps, set_kw=set_kw, step_kw=step_kw, begin=begin, x0=x0)
    xs, ex = trajectory(ours, steps=steps, set_kw=set_kw, step_kw=step_kw, begin=begin, x0=x0)
    torch.testing.assert_close(ours.timesteps.double(), ref.timesteps.double(), rtol=0, atol=0)
    if hasattr(ref, "sigmas") and isinstance(ref.sigmas, torch.Tensor) and ref.sigmas.dim() == 1 and len(ref.sigmas) == len(ours.sigmas):
        torch.testing.assert_close(ours.sigmas.double(), ref.sigmas.double(), rtol=1e-7, atol=0)
    assert len(xs) == len(xs_ref)
    for i in range(1, len(xs)):
        a, b = xs[i], xs_ref[i]
        assert torch.isfinite(b).all(), f"diffusers went non-finite at step {i}: not a parity case"
        assert torch.isfinite(a).all(), f"fastdiff went non-finite at step {i}"
        scale = max(b.abs().max().item(), xs_ref[i - 1].abs().max().item())
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=lambda m: f"step {i}: {m}")
    if check_extras:
        for i in range(1, len(ex)):
            a, b = ex[i], ex_ref[i]
            if b is None:
                continue
            assert a is not None, f"step {i}: fastdiff returned no pred_original_sample / denoised"
            scale = max(b.abs().max().item(), xs_ref[i - 1].abs().max().item())
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=lambda m: f"extra at step {i}: {m}")
    return xs[1:], xs_ref[1:]
