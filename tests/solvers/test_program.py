"""The row compiler (fastdiff/solvers/program.py): symbolic solver steps become sampler_update rows."""

import pytest
import torch

import fastdiff
from fastdiff.solvers.program import Lin, ProgramBuilder


def run_rows(program, x, outputs, noises=None):
    """Apply a program's rows with sampler_update in float64 (the reference backend)."""
    hist = torch.zeros(program.history, *x.shape, dtype=torch.float64) if program.history else None
    for i, m in enumerate(outputs):
        z = noises[i] if noises is not None else None
        x = fastdiff.ops.sampler_update_reference(x, m, program.rows[i], history=hist, noise=z)
    return x


def test_lin_arithmetic():
    a, b = Lin.of("x", 0), Lin.of("d", 0)
    e = 2 * a - b / 4 + 0
    assert e.coef(("x", 0)) == 2.0 and e.coef(("d", 0)) == -0.25
    assert (e - e).terms == {}
    with pytest.raises(TypeError):
        e + 1.0


def test_model_output_and_earlier_state_are_rewritten_into_one_row():
    """A two-stage method written with the first stage's start state and raw model outputs: Heun's
    trapezoid x2 = x0 + h (f0 + f1) / 2 with f = m, and the compiled rows reproduce it."""
    prog = ProgramBuilder()
    h = 0.3
    x, m, _, _ = prog.eval(0.5, 2.0)  # D = 0.5 x + 2 m
    prog.advance(x + h * m)
    x1, m1, _, _ = prog.eval(0.25, -1.0)
    prog.advance(x + h * (m + m1) / 2)  # refers to x (state 0) and m (output 0)
    p = prog.build()
    assert p.history == 1 and p.slots == [0, -1]
    g = torch.Generator().manual_seed(0)
    x_init = torch.randn(3, 4, generator=g, dtype=torch.float64)
    f = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    want = x_init + h * (f[0] + f[1]) / 2
    torch.testing.assert_close(run_rows(p, x_init.clone(), f), want, rtol=1e-12, atol=1e-12)


def test_scaling_to_other_coordinates_keeps_the_trajectory():
    """build(scale) only changes the coordinates the kernel sees: x_solver = scale * x_kernel."""
    prog = ProgramBuilder()
    for c in (0.9, 0.7, 0.4):
        x, _, _, d = prog.eval(1.0, -0.5)
        prog.advance(c * x + (1 - c) * d)
    scale = [2.0, 3.0, 1.5, 1.0]
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, generator=g, dtype=torch.float64)
    outs = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3)]
    # the kernel-coordinate program sees outputs evaluated at its own states: x_solver / scale
    natural = run_rows(prog.build(), x0.clone(), outs)
    prog2 = ProgramBuilder()
    for c in (0.9, 0.7, 0.4):
        x, _, _, d = prog2.eval(1.0, -0.5)
        prog2.advance(c * x + (1 - c) * d)
    scaled = run_rows(prog2.build(scale=scale), x0.clone() / scale[0], outs)
    torch.testing.assert_close(scaled * scale[-1], natural, rtol=1e-12, atol=1e-12)


def test_history_slots_are_reused_once_dead():
    prog = ProgramBuilder()
    ds = []
    for i in range(6):
        x, _, _, d = prog.eval(1.0, 1.0)
        ds.append(d)
        prog.advance(x + d + (ds[-2] if i >= 1 else 0) + (ds[-3] if i >= 2 else 0))  # reads the two previous outputs
    p = prog.build()
    assert p.history == 2
    assert p.rows.shape == (6, 8)


def test_refuses_what_one_fused_step_cannot_read():
    prog = ProgramBuilder()
    x, _, z, _ = prog.eval(1.0, 1.0, draw=True)
    prog.advance(x + z)
    x1, _, _, _ = prog.eval(1.0, 1.0)
    with pytest.raises(ValueError, match="after a noisy step"):
        prog.advance(x1 + x)  # needs the earlier state, whose step added noise
    prog = ProgramBuilder()
    x, m, _, _ = prog.eval(1.0, 0.0)
    with pytest.raises(ValueError, match="cannot be recovered"):
        prog.advance(m)
    with pytest.raises(ValueError, match="non-finite output conversion"):
        ProgramBuilder().eval(float("inf"), 1.0)
    with pytest.raises(RuntimeError, match="at least one evaluation"):
        ProgramBuilder().build()
