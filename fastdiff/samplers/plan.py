"""A sampler's plan: the device-resident coefficient table and what the loops need besides it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor

from ..solvers.program import Program


@dataclass
class Plan:
    """Everything a sampling loop needs, on the device.

    table: (E, 6 + K) float32 rows in model coordinates. timesteps: (E,) the model's time input per
    evaluation. draws: which evaluations draw fresh noise. levels[j] = (p, q): the state before
    evaluation j (and, at j = E, the output) is p x0 + q eps. init_scale: the multiplier taking unit
    noise to the first state (the scheduler's init_noise_sigma in model coordinates). noise: None
    (evaluations that draw read ``torch.randn``), or a factory called once per run with the first
    state and the generator, returning ``source(j, x) -> z``: evaluation j's z input, computed on
    the host (DPM-Solver-SDE's Brownian increments, which also carry its first stage's state).
    """

    program: Program
    table: Tensor
    timesteps: Tensor
    draws: list[bool]
    noise_read: list[bool]
    levels: list[tuple[float, float]]
    init_scale: float
    begin: int
    noise: Optional[Callable[[Tensor, Any], Callable[[int, Tensor], Optional[Tensor]]]] = None

    def __len__(self) -> int:
        return self.table.shape[0]

    @property
    def history(self) -> int:
        return self.program.history
