"""What every diffusers-compatible scheduler here shares: configuration, step bookkeeping, and the
fused step itself (one `fastdiff.ops.sampler_update` launch per `step()` call).

The classes mirror diffusers' scheduler API (``from_config``, ``set_timesteps``, ``step``,
``scale_model_input``, ``add_noise``, ``timesteps``, ``init_noise_sigma``, ``order``,
``set_begin_index``) without importing diffusers: ``from_config`` takes any mapping, a diffusers
FrozenDict included, so ``pipe.scheduler = fastdiff.schedulers.X.from_config(pipe.scheduler.config)``
works. At ``set_timesteps`` each class derives its coefficient table in float64 on the host
(fastdiff/samplers/solvers.py) and moves it to the device once; ``step`` reads its row as a view,
so no step synchronises with the host.

Bookkeeping differs from diffusers in one way: a step's position is a counter that starts at
``begin_index`` (or at the first timestep's position) and advances by one per call, so ``step``
must be called in schedule order, as every diffusers pipeline does. The first position is found
without a host sync when the timestep is an element of ``self.timesteps`` (as when iterating it);
otherwise by value, as diffusers does.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._cache import LRU, cache_key
from ..ops.sampler_update import LoopUpdate
from ..samplers import solvers
from ..samplers.program import Program, ProgramBuilder
from ._common import check_timestep_spacing, expand_like, training_schedule


#: each class's constructor parameters and defaults, read once
_INIT_PARAMS: dict[type, dict] = {}


class Config(dict):
    """A read-only mapping with attribute access, like diffusers' FrozenDict."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'Config' object has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("fastdiff: a scheduler config is read-only; use register_to_config or from_config")

    def __setitem__(self, key, value) -> None:
        raise TypeError("fastdiff: a scheduler config is read-only; use register_to_config or from_config")


class SchedulerOutput:
    """``prev_sample`` plus optional extras (``pred_original_sample``, ``denoised``); indexable like
    diffusers' BaseOutput (``out[0]``, ``out["prev_sample"]``, ``out.to_tuple()``).

    Extras that live in the scheduler's history buffer are views, valid until the next ``step``.
    """

    def __init__(self, prev_sample: Tensor, **extras: Optional[Tensor]):
        self.prev_sample = prev_sample
        self._keys = ["prev_sample"] + [k for k, v in extras.items() if v is not None]
        for k, v in extras.items():
            setattr(self, k, v)

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self._keys)

    def keys(self):
        return list(self._keys)

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self._keys)


class FusedScheduler:
    """Base of the diffusers-compatible schedulers; subclasses define ``__init__`` with diffusers'
    signature and defaults, ``_setup`` (training schedule), ``set_timesteps`` and ``_builder``."""

    order = 1
    #: programs kept per instance across set_timesteps calls with the same arguments and config
    _PROGRAM_MEMO_SIZE = 8
    _schedule_key: Optional[tuple] = None
    #: extra keys a diffusers config may carry that the subclass accepts but ignores
    _ignored_config: tuple = ()
    #: whether step() returns the converted output (pred_original_sample / denoised)
    _exposes: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Each subclass's set_timesteps (diffusers' signature) first records what it was called with:
        # the schedule, so the programs built from it, is a function of those arguments and the config.
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__.get("set_timesteps")
        if inner is None or getattr(inner, "_records_schedule", False):
            return

        @functools.wraps(inner)
        def set_timesteps(self, *args: Any, **kw: Any):
            config = getattr(self, "_internal_dict", None)  # None while __init__ has not registered it yet
            self._schedule_key = None if config is None else cache_key(type(self), config, args, kw)
            return inner(self, *args, **kw)

        set_timesteps._records_schedule = True
        cls.set_timesteps = set_timesteps

    # -- configuration ---------------------------------------------------------------------------
    def _register(self, params: dict) -> None:
        params = {k: v for k, v in params.items() if k not in ("self", "__class__")}
        object.__setattr__(self, "_internal_dict", Config(params))

    @property
    def config(self) -> Config:
        return self._internal_dict

    def register_to_config(self, **kwargs: Any) -> None:
        merged = dict(self._internal_dict)
        merged.update(kwargs)
        self._internal_dict = Config(merged)

    @classmethod
    def _init_params(cls) -> dict:
        """The constructor's keyword parameters and defaults (read once per class: callers only look)."""
        params = _INIT_PARAMS.get(cls)
        if params is None:
            sig = inspect.signature(cls.__init__)
            params = _INIT_PARAMS[cls] = {k: p.default for k, p in sig.parameters.items()
                                          if k != "self" and p.kind == p.POSITIONAL_OR_KEYWORD}
        return params

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Build from a diffusers (or fastdiff) scheduler config; keys this class does not take are ignored."""
        if config is None:
            config = {}
        if hasattr(config, "config") and not isinstance(config, Mapping):
            config = config.config
        if not isinstance(config, Mapping):
            raise TypeError(f"fastdiff: from_config expected a mapping or a scheduler, got {type(config).__name__}")
        merged = {**dict(config), **kwargs}
        params = cls._init_params()
        init = {k: v for k, v in merged.items() if k in params}
        unused = {k: v for k, v in merged.items() if k not in params and not k.startswith("_")}
        obj = cls(**init)
        return (obj, unused) if return_unused_kwargs else obj

    def _init_training(self, prediction_types: Sequence[str] = solvers.PREDICTION_TYPES, *, clamp_zero_snr: bool,
                       check_spacing: bool = True) -> None:
        """Check prediction_type (and timestep_spacing), then set betas, alphas and alphas_cumprod
        from the registered config (see training_schedule for ``clamp_zero_snr``)."""
        solvers.check_prediction_type(self.config.prediction_type, prediction_types)
        if check_spacing:
            check_timestep_spacing(self.config.timestep_spacing)
        self.betas, self.alphas_cumprod = training_schedule(self.config, clamp_zero_snr=clamp_zero_snr)
        self.alphas = 1.0 - self.betas

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({body})"

    # -- step bookkeeping ------------------------------------------------------------------------
    def _reset(self) -> None:
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._programs: dict = {}
        self._device_tables: dict = {}
        self._history: Optional[Tensor] = None
        self._update: Optional[LoopUpdate] = None
        self._run_begin: Optional[int] = None

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at this position (pipelines call it for img2img, before the first step)."""
        self._begin_index = int(begin_index)
        self._warm(self._begin_index)

    def _host_timesteps(self) -> np.ndarray:
        return self._ts_host

    def _position(self, timestep: Any) -> int:
        """Where ``timestep`` sits in self.timesteps (see the module docstring)."""
        ts = self.timesteps
        if isinstance(timestep, Tensor) and timestep.dim() == 0 and isinstance(ts, Tensor) and ts.dim() == 1 and len(ts):
            if timestep.device == ts.device and timestep.dtype == ts.dtype:
                try:
                    same = timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()
                except (RuntimeError, NotImplementedError):
                    same = False
                if same and ts.stride(0) > 0:
                    off = timestep.storage_offset() - ts.storage_offset()
                    if off % ts.stride(0) == 0 and 0 <= off // ts.stride(0) < len(ts):
                        return off // ts.stride(0)
        return self._index_for_value(timestep)

    def _index_for_value(self, timestep: Any) -> int:
        """diffusers' rule: the second match when the value repeats (so img2img starting inside a
        repeated pair does not run it twice), the first otherwise."""
        v = float(timestep.item() if isinstance(timestep, Tensor) else timestep)
        host = self._host_timesteps()
        return self._pick_match(np.nonzero(host == np.float32(v) if host.dtype == np.float32 else host == v)[0], v)

    def _pick_match(self, hits: np.ndarray, v: float) -> int:
        if len(hits) == 0:
            return self._missing_timestep(v)
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _missing_timestep(self, v: float) -> int:
        raise ValueError(f"fastdiff: timestep {v} is not in this scheduler's timesteps")

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Optional[Tensor] = None) -> int:
        if schedule_timesteps is not None and schedule_timesteps is not self.timesteps:
            vals = schedule_timesteps.detach().cpu().numpy()
            v = float(timestep.item() if isinstance(timestep, Tensor) else timestep)
            return self._pick_match(np.nonzero(vals == v)[0], v)
        return self._index_for_value(timestep)

    def _init_step_index(self, timestep: Any) -> None:
        self._step_index = self._begin_index if self._begin_index is not None else self._position(timestep)
        self._run_begin = None

    def _check_timed(self) -> None:
        if getattr(self, "num_inference_steps", None) is None and not getattr(self, "_untimed_ok", False):
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")

    def _check_float_timestep(self, timestep: Any) -> None:
        """diffusers' refusal of loop indices where timesteps are floats (Euler family, flow matching)."""
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not torch.is_floating_point(timestep)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `step()` is not "
                             "supported. Make sure to pass one of the `scheduler.timesteps` as a timestep.")

    def _ensure_step_index(self, timestep: Any) -> None:
        """Locate the first step of a run; a run that went past the end starts over (value-based
        diffusers schedulers allow looping over the timesteps again without set_timesteps)."""
        self._check_timed()
        if self._step_index is None or self._step_index >= len(self.timesteps):
            self._begin_index = None if self._step_index is not None else self._begin_index
            self._init_step_index(timestep)

    def _start_run(self) -> int:
        """The position the current run began at (this step's, on its first step)."""
        if self._run_begin is None:
            self._run_begin = self._step_index
        return self._run_begin

    def _sigmas_at(self, timesteps: Tensor, like: Tensor) -> Tensor:
        """self.sigmas at ``timesteps`` as diffusers looks them up for noising (by value before a
        begin index is set, else at the current or begin position), shaped to broadcast on ``like``."""
        sigmas = self.sigmas.to(device=like.device, dtype=like.dtype)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        return expand_like(sigmas[idx].flatten(), like)

    # -- tables ----------------------------------------------------------------------------------
    def _builder(self, begin: int, key: tuple) -> ProgramBuilder:  # pragma: no cover - abstract
        raise NotImplementedError

    def _model_frame(self, begin: int) -> tuple[list[float], list[tuple[float, float]]]:  # pragma: no cover - abstract
        """For the state before each evaluation from ``begin`` on, then the final output: the factor n
        with x_scheduler = n x_model (1 at the final output), and (p, q) with x = p x0 + q eps in
        those coordinates (model coordinates at evaluations, the scheduler's own at the end)."""
        raise NotImplementedError

    def model_program(self, begin: int = 0, key: tuple = ()) -> Program:
        """The table in model coordinates (the state is what the model sees, so no per-step input
        scaling is needed); its final output is in this scheduler's coordinates, as step() returns."""
        scale, _ = self._model_frame(begin)
        return self._builder(begin, key).build(scale=scale)

    def _program(self, begin: int, key: tuple = ()) -> Program:
        ck = (begin, key)
        if ck not in self._programs:
            # A pipeline calls set_timesteps with the same arguments for every image: reuse the program
            # (deriving it is 1-4 ms of Python, ten times diffusers' set_timesteps).
            memo = self.__dict__.setdefault("_program_memo", LRU(self._PROGRAM_MEMO_SIZE))
            mk = None if self._schedule_key is None else (self._schedule_key, begin, key)
            prog = None if mk is None else memo.get(mk)
            if prog is None:
                prog = self._builder(begin, key).build(expose=self._exposes)
                if mk is not None:
                    memo.put(mk, prog)
            self._programs[ck] = prog
        return self._programs[ck]

    def _table(self, device: torch.device, begin: int, key: tuple = (), *, as_sample: bool = False) -> tuple[Program, Tensor]:
        """The program and its float32 table on ``device``; ``as_sample`` gives the variant that reads an
        already converted output (a = 0, b = 1), used where a clipped or thresholded x0 replaces the model's."""
        prog = self._program(begin, key)
        tk = (begin, key, device, as_sample)
        if tk not in self._device_tables:
            rows = prog.rows.clone()
            if as_sample:
                rows[:, 0], rows[:, 1] = 0.0, 1.0
            self._device_tables[tk] = rows.to(device=device, dtype=torch.float32)
        return prog, self._device_tables[tk]

    def _warm(self, begin: int, key: tuple = ()) -> None:
        """Build the default table (and move it to the timesteps' device) before sampling starts."""
        if getattr(self, "num_inference_steps", None) is None:
            return
        dev = self.timesteps.device if isinstance(self.timesteps, Tensor) else torch.device("cpu")
        try:
            self._table(dev, begin, key)
        except ValueError:
            # Tables that cannot be built here are refused again, with the same message, at step().
            self._programs.pop((begin, key), None)

    # -- the fused step --------------------------------------------------------------------------
    def _fused_step(
        self,
        model_output: Tensor,
        sample: Tensor,
        *,
        key: tuple = (),
        generator: Optional[torch.Generator] = None,
        noise: Optional[Tensor] = None,
        noise_dtype: Optional[torch.dtype] = None,
        model_override: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """One step at self.step_index; returns (prev_sample, view of D_i or None)."""
        begin = self._start_run()
        prog, table = self._table(sample.device, begin, key)
        r = self._step_index - begin
        if not 0 <= r < len(prog):
            raise IndexError(f"fastdiff: step {self._step_index} is outside this schedule ({begin}..{begin + len(prog) - 1}); "
                             "call set_timesteps before sampling again")
        row = table[r]
        z = None
        if prog.draws[r]:
            if noise is None:
                noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype or sample.dtype)
            z = noise.to(sample.dtype) if noise.dtype != sample.dtype else noise
            if not prog.reads_noise[r]:
                z = None  # drawn for seeded parity with diffusers, multiplied by 0
        hist = None
        if prog.history:
            want = (prog.history, *sample.shape)
            h = self._history
            if h is None or tuple(h.shape) != want or h.dtype != sample.dtype or h.device != sample.device:
                h = self._history = torch.empty(want, dtype=sample.dtype, device=sample.device)
            hist = h
        m = model_output
        if model_override is not None:
            m, row = model_override, self._table(sample.device, begin, key, as_sample=True)[1][r]
        if self._update is None or self._update.history is not hist:  # checked in full again for a new buffer
            self._update = LoopUpdate(hist, None)
        out = self._update(sample, m, row, z)
        slot = prog.slots[r]
        exposed = hist[slot] if (hist is not None and slot >= 0 and self._exposes) else None
        self._step_index += 1
        return out, exposed

    def _x0_from_table(self, sample: Tensor, model_output: Tensor, key: tuple = ()) -> Tensor:
        """The model's x0 at this step from the table row (device scalars, no host sync)."""
        begin = self._start_run()
        _, table = self._table(sample.device, begin, key)
        return x0_from_row(table[self._step_index - begin], sample, model_output)


def threshold_sample(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): clip to the per-sample ratio-quantile of |x0|."""
    dtype = x0.dtype
    b = x0.shape[0]
    flat = x0.float().reshape(b, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def clip_x0(config: Any, x0: Tensor) -> Tensor:
    """x0 thresholded (config.thresholding) or else clamped to config.clip_sample_range."""
    if config.thresholding:
        return threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    return x0.clamp(-config.clip_sample_range, config.clip_sample_range)


def x0_from_coeffs(a: Any, b: Any, sample: Tensor, model_output: Tensor) -> Tensor:
    """a x + b m in float32, cast back to the sample's dtype (a, b: floats or device scalars)."""
    return (a * sample.float() + b * model_output.float()).to(sample.dtype)


def x0_from_row(row: Tensor, sample: Tensor, model_output: Tensor) -> Tensor:
    """a x + b m for a device row (two device scalars, no host sync)."""
    return x0_from_coeffs(row[0], row[1], sample, model_output)

