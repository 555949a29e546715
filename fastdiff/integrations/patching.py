"""`fastdiff.patch` / `fastdiff.unpatch`: swap fastdiff kernels into a model, per instance, reversibly.

A `Rule` recognises one kind of module (by class or by structure), says why an instance cannot be
taken, and installs one swap: a forward bound on the instance (the class is untouched, so other
instances and the state dict are untouched) or a diffusers attention processor. What it replaced is
kept on the module (``_fastdiff_patch``), so `unpatch` puts back the very objects it found, and a
second `patch` sees the mark and does nothing. New forwards call the module's own submodules
(``self.attn1``, ``self.norm1.linear``, ...): PEFT/LoRA layers injected before or after patching
keep running, unmerged. Every fused forward falls back to the class's own forward per call for
inputs its rule does not cover, and the ops themselves fall back to their references off-GPU and in
float32/float64, so a patched model runs wherever the original did.

The rules live one family per module (rules_attention, rules_adaln, rules_norm, rules_timm); each
is a single `Rule(...)` entry in its module's ``RULES``.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .report import ALREADY, FOLDED, LEFT, SWAPPED, PatchReport

MARK = "_fastdiff_patch"


@dataclass(frozen=True)
class Rule:
    """One swap. ``matches``: is this module this rule's kind; ``refuse``: why this instance cannot be
    patched (None: it can); ``install``: do the swap through `swap_forward` / `swap_processor`;
    ``folds``: children whose work the new forward does itself (reported, not patched); ``swaps``:
    "forward" or "processor" (a diffusers attention processor)."""

    name: str
    matches: Callable[[nn.Module], bool]
    install: Callable[[nn.Module], dict]
    refuse: Callable[[nn.Module], Optional[str]] = lambda m: None
    folds: tuple[str, ...] = ()
    swaps: str = "forward"


def swap_forward(module: nn.Module, forward: Callable[..., Any]) -> dict:
    """Bind ``forward(module, ...)`` as this instance's forward; returns what unpatch restores (None:
    no instance forward, the class's; None survives copy.deepcopy of the model, a sentinel would not)."""
    saved = {"forward": module.__dict__.get("forward")}
    module.forward = types.MethodType(forward, module)
    return saved


def swap_processor(module: nn.Module, processor: Any) -> dict:
    saved = {"processor": module.processor}
    module.set_processor(processor)
    return saved


def original_forward(module: nn.Module) -> Callable[..., Any]:
    """The class's forward, bound: what a fused forward falls back to for inputs it does not cover."""
    return types.MethodType(type(module).forward, module)


def rules() -> list[Rule]:
    from . import rules_adaln, rules_attention, rules_norm, rules_timm

    # Blocks before the modules inside them, so a block's fused forward claims its norms first.
    return [*rules_adaln.RULES, *rules_timm.RULES, *rules_attention.RULES, *rules_norm.RULES]


# Classes a reader would expect fastdiff to handle: reported (with the reason) when no rule takes them.
_NOTABLE = re.compile(r"(Attention|AdaLayerNorm\w*|AdaGroupNorm|TransformerBlock|ResnetBlock\dD|GEGLU)$")


def _hooked(module: nn.Module) -> bool:
    return "forward" in module.__dict__ and MARK not in module.__dict__


def patch(model: nn.Module) -> PatchReport:
    """Swap fastdiff kernels into ``model`` in place; returns a `PatchReport` (print it for the table).

    Idempotent (patched modules are reported as such and left as they are) and undone by `unpatch`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastdiff.patch: model expected a torch.nn.Module, got {type(model).__name__}")
    report, folded, all_rules = PatchReport(), {}, rules()
    for path, module in model.named_modules():
        kind = type(module).__name__
        mark = module.__dict__.get(MARK)
        rule = None if mark is not None else next((r for r in all_rules if r.matches(module)), None)
        if path in folded and (mark is not None or rule is not None):
            report.add(path, kind, FOLDED, f"computed by {folded[path] or '(model)'}'s fused forward")
            continue
        if mark is not None:
            report.add(path, kind, ALREADY, mark["rule"])
            folds = mark["folds"]
        elif rule is None:
            if _NOTABLE.search(kind) and path not in folded:
                report.add(path, kind, LEFT, f"no fastdiff rule for {kind}")
            continue
        else:
            why = rule.refuse(module)
            if why is None and rule.swaps == "forward" and _hooked(module):
                why = "the instance already has its own forward (a hook, e.g. accelerate's offloading)"
            if why is not None:
                report.add(path, kind, LEFT, why)
                continue
            saved = rule.install(module)
            module.__dict__[MARK] = {"rule": rule.name, "folds": rule.folds, **saved}
            report.add(path, kind, SWAPPED, rule.name)
            folds = rule.folds
        for child in folds:
            if getattr(module, child, None) is not None:
                folded[f"{path}.{child}" if path else child] = path
    return report


def unpatch(model: nn.Module) -> int:
    """Undo `patch` on every module of ``model``: the original processors and forwards come back
    (the same objects). Returns how many modules were restored."""
    restored = 0
    for module in model.modules():
        mark = module.__dict__.pop(MARK, None)
        if mark is None:
            continue
        if "processor" in mark:
            module.set_processor(mark["processor"])
        if "forward" in mark:
            if mark["forward"] is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = mark["forward"]
        restored += 1
    return restored
