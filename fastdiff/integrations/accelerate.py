"""`fastdiff.accelerate` / `fastdiff.unaccelerate`: patch a diffusers pipeline's models and swap its scheduler."""

from __future__ import annotations

from typing import Any

from torch import nn

from .patching import patch, unpatch
from .report import LEFT, SWAPPED, PatchReport

#: the pipeline components that are patched, when the pipeline has them
MODELS = ("unet", "transformer", "vae", "controlnet")
_SAVED = "_fastdiff_scheduler"


def _components(pipe: Any) -> list[tuple[str, nn.Module]]:
    return [(n, getattr(pipe, n)) for n in MODELS if isinstance(getattr(pipe, n, None), nn.Module)]


def accelerate(pipe: Any) -> PatchReport:
    """Patch ``pipe.unet`` / ``transformer`` / ``vae`` / ``controlnet`` (`fastdiff.patch`) and replace
    ``pipe.scheduler`` by the fastdiff scheduler class of the same name, built from its config (the
    scheduler left as it is when fastdiff has no such class). Returns one report for all of it;
    calling it again changes nothing; `unaccelerate` undoes it."""
    if not hasattr(pipe, "components"):
        raise TypeError(f"fastdiff.accelerate: expected a diffusers pipeline, got {type(pipe).__name__} "
                        "(use fastdiff.patch for a model)")
    report = PatchReport()
    for name, model in _components(pipe):
        report.merge(name, patch(model))
    sched = getattr(pipe, "scheduler", None)
    if sched is not None:
        from .. import schedulers

        name = type(sched).__name__
        cls = getattr(schedulers, name, None)
        if type(sched).__module__.startswith("fastdiff."):
            report.add("scheduler", name, SWAPPED if _SAVED in pipe.__dict__ else LEFT,
                       "fastdiff scheduler" if _SAVED in pipe.__dict__ else "already a fastdiff scheduler")
        elif cls is None:
            report.add("scheduler", name, LEFT, f"fastdiff.schedulers has no {name}")
        else:
            pipe.__dict__[_SAVED] = sched
            pipe.scheduler = cls.from_config(sched.config)
            report.add("scheduler", name, SWAPPED, f"fastdiff.schedulers.{name} (fused step)")
    return report


def unaccelerate(pipe: Any) -> None:
    """Undo `accelerate`: the original models' forwards and processors and the original scheduler object."""
    for _, model in _components(pipe):
        unpatch(model)
    sched = pipe.__dict__.pop(_SAVED, None)
    if sched is not None:
        pipe.scheduler = sched
