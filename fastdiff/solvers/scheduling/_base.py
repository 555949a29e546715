"""The diffusers-free core of every fused scheduler: configuration (standalone), the schedule a
``set_timesteps`` call installs, step bookkeeping and the coefficient tables derived from it.

fastdiff.samplers plans with these cores directly (no diffusers needed); fastdiff.schedulers puts
each core under the same-named diffusers class and adds the fused ``step``
(fastdiff/schedulers/_base.py). At ``set_timesteps`` a core derives its coefficient table in
float64 on the host (fastdiff/solvers/methods.py) and moves it to the device once, so no step
synchronises with the host.

A step's position is a counter that starts at ``begin_index`` (or at the first timestep's position)
and advances by one per call, so ``step`` must be called in schedule order, as every diffusers
pipeline does. The first position is found without a host sync when the timestep is an element of
``self.timesteps`` (as when iterating it); otherwise by value, as diffusers does.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..._cache import LRU, cache_key
from .. import rows as layout
from ..program import Program, ProgramBuilder
from ._common import check_timestep_spacing, training_schedule


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


class ScheduleCore:
    """Base of the scheduler cores; subclasses define ``__init__`` with diffusers' signature and
    defaults (used standalone), ``_post_init``, ``set_timesteps``, ``_builder`` and ``_model_frame``."""

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
        # keys an older diffusers wrote as its own defaults (SD-1.5's PNDM config has no timestep_spacing):
        # this class's defaults apply to them, as in diffusers' from_config
        defaulted = set(config.get("_use_default_values", ()))
        merged = {**{k: v for k, v in dict(config).items() if k not in defaulted}, **kwargs}
        params = cls._init_params()
        init = {k: v for k, v in merged.items() if k in params}
        unused = {k: v for k, v in merged.items() if k not in params and not k.startswith("_")}
        obj = cls(**init)
        return (obj, unused) if return_unused_kwargs else obj

    def _init_training(self, prediction_types: Sequence[str] = layout.PREDICTION_TYPES, *, clamp_zero_snr: bool,
                       check_spacing: bool = True) -> None:
        """Check prediction_type (and timestep_spacing), then set betas, alphas and alphas_cumprod
        from the registered config (see training_schedule for ``clamp_zero_snr``)."""
        layout.check_prediction_type(self.config.prediction_type, prediction_types)
        if check_spacing:
            check_timestep_spacing(self.config.timestep_spacing)
        self.betas, self.alphas_cumprod = training_schedule(self.config, clamp_zero_snr=clamp_zero_snr)
        self.alphas = 1.0 - self.betas

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({body})"

    def _post_init(self) -> None:
        """After another class's ``__init__`` (diffusers', in fastdiff.schedulers) set the attributes:
        the step state, and host copies of the schedule it installed."""
        self._reset()
        ts = self.timesteps
        self._ts_host = ts.cpu().numpy() if isinstance(ts, Tensor) else np.asarray(ts)
        if isinstance(getattr(self, "sigmas", None), Tensor):
            self._sig = self.sigmas.double().tolist()

    # -- step bookkeeping ------------------------------------------------------------------------
    def _reset(self) -> None:
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._programs: dict = {}
        self._device_tables: dict = {}
        self._history: Optional[Tensor] = None
        self._update = None  # the fused step's LoopUpdates, without and with noise (fastdiff.schedulers)
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
                rows[:, layout.A], rows[:, layout.B] = 0.0, 1.0
            table = rows.to(device=device, dtype=torch.float32)
            self._device_tables[tk] = table
            self._device_tables[("rows", *tk)] = (prog, table.unbind(0))
        return prog, self._device_tables[tk]

    def _row_views(self, device: torch.device, begin: int, key: tuple = (), *, as_sample: bool = False) -> tuple[Program, tuple]:
        """The program and its table's rows as views, made with the table (at set_timesteps for the
        default one), so a step indexes a tuple instead of launching a select."""
        got = self._device_tables.get(("rows", begin, key, device, as_sample))
        if got is None:
            self._table(device, begin, key, as_sample=as_sample)
            got = self._device_tables[("rows", begin, key, device, as_sample)]
        return got

    def _warm(self, begin: int, key: tuple = ()) -> None:
        """Build the default table (and move it to the timesteps' device) before sampling starts."""
        if getattr(self, "num_inference_steps", None) is None or not getattr(self, "_init_done", True):
            return
        dev = self.timesteps.device if isinstance(self.timesteps, Tensor) else torch.device("cpu")
        try:
            self._table(dev, begin, key)
        except ValueError:
            # Tables that cannot be built here are refused again, with the same message, at step().
            self._programs.pop((begin, key), None)
