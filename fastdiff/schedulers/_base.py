"""What makes a fastdiff scheduler: the same-named diffusers class as a base (``conform``) and the
fused step, one `fastdiff.ops.sampler_update` launch per ``step()`` call, reading the step's row of
the table its core (fastdiff.solvers.scheduling) built at ``set_timesteps``, as a device view (no
host sync).
"""

from __future__ import annotations

import collections
import functools
import inspect
import sys
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .._backend import KERNEL_DTYPES
from ..ops.randn import randn
from ..ops.sampler_update import LoopUpdate
from ..solvers.methods import ve_conversion
from ..solvers.rows import A, B, check_prediction_type, x0_conversion
from ..solvers.scheduling import ScheduleCore


class FusedStep:
    """The step machinery; mixed in before a core (fastdiff.solvers.scheduling)."""

    _output_class: type  # set by conform: the BaseOutput diffusers' step returns

    def _output(self, return_dict: bool, prev_sample: Tensor, **extras: Optional[Tensor]):
        """diffusers' return value: its output class, or the tuple of (prev_sample, *extras)."""
        if not return_dict:
            return (prev_sample, *extras.values())
        # What the dataclass's __init__ and BaseOutput.__post_init__ produce (attributes for every field,
        # mapping entries for the set ones), without their per-call Python (~20-100 us a step on CPU).
        cls = self._output_class
        out = cls.__new__(cls)
        values = {"prev_sample": prev_sample, **extras}
        for k in cls.__dataclass_fields__:
            v = values.get(k)
            object.__setattr__(out, k, v)
            if v is not None:
                collections.OrderedDict.__setitem__(out, k, v)
        return out

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
        z_input: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """One step at self.step_index; returns (prev_sample, view of D_i or None). ``z_input`` is
        what the row reads through its c_z column when that is not fresh noise (KDPM2's first stage
        reads its model output there, DPM-Solver-SDE its host-side Brownian increment)."""
        begin = self._start_run()
        dev = sample.device
        prog, rows = self._row_views(dev, begin, key)
        r = self._step_index - begin
        if not 0 <= r < len(rows):
            raise IndexError(f"fastdiff: step {self._step_index} is outside this schedule ({begin}..{begin + len(prog) - 1}); "
                             "call set_timesteps before sampling again")
        row = rows[r]
        z = z_input
        if z is not None:
            z = z.to(sample.dtype) if z.dtype != sample.dtype else z
        elif prog.draws[r]:
            if noise is None:
                noise = draw_noise(sample.shape, generator, dev, noise_dtype or sample.dtype)
            z = noise.to(sample.dtype) if noise.dtype != sample.dtype else noise
            if not prog.reads_noise[r]:
                z = None  # drawn for seeded parity with diffusers, multiplied by 0
        hist = None
        if prog.history:
            h = self._history
            if h is None or h.shape[1:] != sample.shape or h.shape[0] != prog.history or h.dtype != sample.dtype or h.device != dev:
                h = self._history = torch.empty((prog.history, *sample.shape), dtype=sample.dtype, device=dev)
            hist = h
        m = model_output
        if model_override is not None:
            m, row = model_override, self._row_views(dev, begin, key, as_sample=True)[1][r]
        update = self._update
        if update is None or update[0].history is not hist:  # checked in full again for a new buffer
            # one per noise presence: each binds its kernel to its own call signature (KDPM2 alternates)
            update = self._update = (LoopUpdate(hist, None), LoopUpdate(hist, None))
        out = update[z is None](sample, m, row, z)
        slot = prog.slots[r]
        exposed = hist[slot] if (hist is not None and slot >= 0 and self._exposes) else None
        self._step_index += 1
        return out, exposed

    def _thresholded_x0(self, model_output: Tensor, sample: Tensor) -> tuple[Tensor, float, float]:
        """The model's x0 at this step after dynamic thresholding, with the step's (alpha, sigma)."""
        cfg = self.config
        alpha, sigma = self._alpha_sigma(self._sig[self._step_index])
        a, b = x0_conversion(check_prediction_type(cfg.prediction_type), alpha, sigma)
        x0 = threshold_sample(x0_from_coeffs(a, b, sample, model_output), cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0, alpha, sigma

    def _x0_from_table(self, sample: Tensor, model_output: Tensor, key: tuple = ()) -> Tensor:
        """The model's x0 at this step from the table row (device scalars, no host sync)."""
        begin = self._start_run()
        _, rows = self._row_views(sample.device, begin, key)
        return x0_from_row(rows[self._step_index - begin], sample, model_output)


def draw_noise(shape, generator, device, dtype: torch.dtype) -> Tensor:
    """diffusers' ``randn_tensor(shape, generator=..., device=..., dtype=...)``: the same values; a CPU
    draw takes fastdiff.ops.randn (PyTorch's sampler without its per-number overhead)."""
    device = torch.device(device)
    if device.type == "cpu" and (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu")):
        return randn(shape, generator=generator, device=device, dtype=dtype)
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype)


class SigmaInputScale:
    """diffusers' ``scale_model_input`` of the sigma-parameterised schedulers, ``x / (sigma**2 + 1) ** 0.5``,
    with the divisors derived once per level tensor by the same float32 tensor operations diffusers
    applies to one level per call (so the same values; the division by a float32 scalar is the same
    kernel): diffusers' four scalar tensor ops per call cost more than the division at SD sizes on CPU.
    Off the CPU it is diffusers' per-call form (deriving the table there would read the device)."""

    _fastdiff_keeps = ("scale_model_input",)  # conform keeps this one, not diffusers'
    _flags_scaling = False  # Euler, Euler-ancestral and LMS record the call (is_scale_input_called)

    def _input_level(self) -> tuple[Tensor, int]:
        """The level tensor and the index diffusers' scale_model_input reads at this step."""
        return self.sigmas, self.step_index

    @staticmethod
    def _input_scale(levels: Tensor) -> Tensor:
        """diffusers' per-level input scaling (applied elementwise: a level tensor of any shape)."""
        return (levels**2 + 1) ** 0.5

    def _apply_input_scale(self, sample: Tensor, scale: "Tensor | float") -> Tensor:
        return sample / scale

    def scale_model_input(self, sample: Tensor, timestep: Union[float, Tensor]) -> Tensor:
        if self.step_index is None:
            self._init_step_index(timestep)
        levels, i = self._input_level()
        if self._flags_scaling:
            self.is_scale_input_called = True
        if levels.device.type != "cpu" or sample.device.type != "cpu" or sample.dtype != torch.float32 or levels.dtype != torch.float32:
            return self._apply_input_scale(sample, self._input_scale(levels[i]))
        # one table per level tensor: two-stage schedulers alternate between two (KDPM2's sigmas and
        # sigmas_interpol), and a single slot would rebuild on every call
        cache = self.__dict__.setdefault("_input_scales", {})
        entry = cache.get(id(levels))
        if entry is None or entry[0] is not levels:
            if len(cache) > 4:  # the level tensors of earlier set_timesteps calls
                cache.clear()
            entry = cache[id(levels)] = (levels, self._input_scale(levels).tolist())
        return self._apply_input_scale(sample, entry[1][i])


class EDMInputScale(SigmaInputScale):
    """diffusers' EDM ``scale_model_input``: ``x * c_in``, ``c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5``
    (the EDM classes set ``is_scale_input_called``)."""

    _flags_scaling = True

    def _input_scale(self, levels: Tensor) -> Tensor:
        return self._get_conditioning_c_in(levels)

    def _apply_input_scale(self, sample: Tensor, scale: "Tensor | float") -> Tensor:
        return sample * scale


# -- making a core + fused step a diffusers scheduler -------------------------------------------
#: names every class keeps from fastdiff (its core or its own body); the rest of what diffusers' class
#: defines is diffusers' own
_FASTDIFF_NAMES = frozenset({"set_timesteps", "step", "set_begin_index"})
#: the configuration machinery diffusers' ConfigMixin provides, in place of the core's standalone one
_CONFIG_NAMES = ("config", "register_to_config", "from_config", "__repr__", "__len__")


class _DefaultFromCore:
    """A core property that the diffusers class sets as an instance attribute (``init_noise_sigma``):
    the instance's value once set, the core's until then."""

    def __init__(self, prop: property):
        self.prop = prop

    def __get__(self, obj, owner=None):
        return self if obj is None else self.prop.__get__(obj, owner)


def conform(cls: type) -> type:
    """Class decorator: ``cls(FusedStep, <core>, <diffusers class>)`` becomes a diffusers scheduler.

    diffusers' class supplies ``__init__`` (its signature, config registration, every attribute it
    sets), the configuration and serialisation machinery and every public method or attribute the
    core also defines; the core supplies ``set_timesteps`` (and what ``step`` reads), the class body
    its ``step``. The class is recorded as ``fastdiff.schedulers.<name>``, so a pipeline saved with
    it reloads it (model_index.json names the module; scheduler_config.json's ``_class_name`` is the
    diffusers name, so diffusers alone loads that folder into its own class).
    """
    dcls = next(c for c in cls.__mro__[1:] if c.__module__.startswith("diffusers."))
    core = next(c for c in cls.__mro__[1:] if issubclass(c, ScheduleCore))
    own = set(cls.__dict__) | _FASTDIFF_NAMES | set(getattr(cls, "_fastdiff_keeps", ()))
    names = {n for c in core.__mro__ if c is not object for n in vars(c)}
    for name in sorted(names - own):
        if name.startswith("_") and name not in _CONFIG_NAMES:
            continue
        try:
            theirs = inspect.getattr_static(dcls, name)
        except AttributeError:
            mine = inspect.getattr_static(core, name)
            if isinstance(mine, property):  # diffusers sets it per instance
                setattr(cls, name, _DefaultFromCore(mine))
            continue
        setattr(cls, name, theirs)
    init = dcls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_done = False  # diffusers' __init__ may call set_timesteps (Heun): no table for that one
        init(self, *args, **kwargs)
        self._init_done = True
        self._post_init()

    cls.__init__ = __init__
    cls.__module__ = "fastdiff.schedulers"
    cls._output_class = _output_class(dcls)
    return cls


def _output_class(dcls: type) -> type:
    """The BaseOutput class diffusers' ``step`` returns for this scheduler (its module's own, if any)."""
    from diffusers.schedulers.scheduling_utils import SchedulerOutput as Plain
    from diffusers.utils import BaseOutput

    mod = sys.modules[dcls.__module__]
    found = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, BaseOutput)
             and v.__module__ == mod.__name__ and "prev_sample" in getattr(v, "__dataclass_fields__", {})]
    return found[0] if len(found) == 1 else Plain


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
    if sample.dtype == model_output.dtype == torch.float32:
        # one pass (epsilon and flow: a = 1) or two, instead of three passes and two temporaries
        if isinstance(b, float) and isinstance(a, float):
            return torch.add(sample, model_output, alpha=b) if a == 1.0 else torch.mul(sample, a).add_(model_output, alpha=b)
        if isinstance(b, Tensor) and b.dim() == 0:
            return torch.addcmul(torch.mul(sample, a), model_output, b)
    return (a * sample.float() + b * model_output.float()).to(sample.dtype)


#: (a, b) of x0 = a x + b m for a plain (VE) state at level sigma, memoised: derived per step it is a
#: few microseconds of symbol algebra
ve_x0_coeffs = functools.lru_cache(maxsize=4096)(ve_conversion)


class AffinePass:
    """``c_x x + c_m m (+ c_z z)`` in one pass: the fused update with a fixed row (d = m), for the steps
    that no table row expresses (DDIM's clipped x0 recombined with the unclipped noise estimate), where
    PyTorch would take two or three passes. Rows are kept per coefficient tuple: a schedule reuses its
    few. ``usable`` says whether a call can take it (CPU tensors of a kernel dtype, no autograd), else use
    PyTorch. CPU only: on a GPU a new row would be a host-to-device copy in the step, which keeps none."""

    def __init__(self):
        self._update = LoopUpdate(None, None)
        self._rows: dict[tuple, Tensor] = {}

    def usable(self, *tensors: Tensor) -> bool:
        t0 = tensors[0]
        return t0.device.type == "cpu" and all(t.dtype == t0.dtype and t.device == t0.device and t.dtype in KERNEL_DTYPES
                                               and not t.requires_grad and t.shape == t0.shape for t in tensors)

    def __call__(self, x: Tensor, m: Tensor, c_x: float, c_m: float, z: Optional[Tensor] = None, c_z: float = 0.0) -> Tensor:
        key = (c_x, c_m, c_z)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= 4096:
                self._rows.clear()
            row = self._rows[key] = torch.tensor([0.0, 1.0, c_x, c_m, c_z, -1.0], dtype=torch.float32)
        return self._update(x, m, row, z if c_z != 0.0 else None)


def affine_pass(scheduler: Any) -> AffinePass:
    """The scheduler's AffinePass (made at first use: diffusers builds instances without our __init__)."""
    p = scheduler.__dict__.get("_affine_pass")
    if p is None:
        p = scheduler.__dict__["_affine_pass"] = AffinePass()
    return p


def x0_from_row(row: Tensor, sample: Tensor, model_output: Tensor) -> Tensor:
    """a x + b m for a device row (two device scalars, no host sync)."""
    return x0_from_coeffs(row[A], row[B], sample, model_output)

