"""IPNDMScheduler: improved pseudo numerical methods (fourth-order Adams-Bashforth), diffusers-compatible."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import linear_multistep
from ..program import Program
from ._base import ScheduleCore

#: noise estimates an IPNDM step reads besides its own (fourth-order Adams-Bashforth)
_RING = 3


class IPNDMScheduler(ScheduleCore):
    """Drop-in for ``diffusers.IPNDMScheduler``: levels sigma = sin(pi s / 2)^2 for s from 1 to 0,
    alpha = sqrt(1 - sigma^2), a v-predicting model; the history holds the last three noise estimates."""

    def __init__(self, num_train_timesteps: int = 1000, trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None):
        self._register(locals())
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self._init_done = False
        self.set_timesteps(num_train_timesteps)
        self._init_done = True

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.num_inference_steps = num_inference_steps
        # float32 torch arithmetic, as diffusers', so timesteps and levels are bit-identical
        s = torch.cat([torch.linspace(1, 0, num_inference_steps + 1)[:-1], torch.tensor([0.0])])
        tb = self.config.trained_betas
        self.betas = torch.tensor(tb, dtype=torch.float32) if tb is not None else torch.sin(s * math.pi / 2) ** 2
        self.alphas = (1.0 - self.betas**2) ** 0.5
        self._reset()
        self.timesteps = (torch.atan2(self.betas, self.alphas) / math.pi * 2)[:-1].to(device)
        self._ts_host = self.timesteps.cpu().numpy()
        self._warm(0)

    def scale_model_input(self, sample, *args, **kwargs):
        return sample

    # -- passes that continue diffusers' history -------------------------------------------------
    # diffusers' IPNDMScheduler keeps every noise estimate (``ets``) until set_timesteps: a pass that
    # starts again without it (``scheduler._step_index = None``, as diffusers' own tests do) steps at
    # the order its list allows, reading the previous pass's last estimates. Here the estimates live
    # in the history ring, estimate g (counted from set_timesteps) in slot g mod 3; a pass's table is
    # cut out of a program that starts with placeholders for the estimates carried in and ends with
    # placeholders that read the last three (so those are written too).
    def _reset(self) -> None:
        super()._reset()
        self._estimates = 0  # noise estimates made since set_timesteps (diffusers' len(self.ets))
        self._pass_key: tuple = ()

    def _begin_pass(self) -> tuple:
        """The table key of a pass starting now: how many placeholder estimates precede it (as many
        as it reads, rounded up so that placeholder j sits in the slot its estimate occupies)."""
        k = self._estimates
        return (k if k < _RING else _RING + k % _RING,)

    def _warm(self, begin: int, key: tuple = ()) -> None:
        super()._warm(begin, key or self._begin_pass())

    def _program(self, begin: int, key: tuple = ()) -> Program:
        if not key or key[0] == "chain":
            return super()._program(begin, key)
        ck = (begin, key)
        if ck not in self._programs:
            carried = key[0]
            full = super()._program(begin, ("chain", carried))
            n = len(self._ts_host) - begin
            cut = slice(carried, carried + n)
            slots = full.slots[cut]
            if full.history != _RING or any(s != (carried + j) % _RING for j, s in enumerate(slots)):  # pragma: no cover
                raise RuntimeError("fastdiff: IPNDM history slots are not a ring in estimate order")
            self._programs[ck] = Program(rows=full.rows[cut], draws=full.draws[cut], history=full.history, slots=slots)
        return self._programs[ck]

    def _builder(self, begin: int, key: tuple):
        carried, trailing = (key[1], _RING) if key else (0, 0)
        return linear_multistep.ipndm(self.alphas.double().tolist(), self.betas.double().tolist(), begin=begin,
                                      carried=carried, trailing=trailing)

    def _model_frame(self, begin: int):
        al, si = self.alphas.double().tolist()[begin:], self.betas.double().tolist()[begin:]
        return [1.0] * len(al), list(zip(al, si))
