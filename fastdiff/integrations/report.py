"""`PatchReport`: what `fastdiff.patch` did to each module it looked at, and why it left the rest alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

#: Entry.status values
SWAPPED, ALREADY, FOLDED, LEFT = "swapped", "already patched", "folded", "left alone"


@dataclass(frozen=True)
class Entry:
    path: str  #: the module's name in model.named_modules() ("" is the model itself)
    kind: str  #: the module's class name
    status: str  #: one of SWAPPED, ALREADY, FOLDED, LEFT
    detail: str  #: what was swapped in, or the reason not


@dataclass
class PatchReport:
    """One row per module a rule recognised (plus the ones it could not take), in model order.

    ``str(report)`` is a table (module path, class, status, detail); ``report.swapped`` lists the
    paths patched by this call; ``report.left_alone`` maps each refused path to its reason.
    """

    entries: list[Entry] = field(default_factory=list)

    def add(self, path: str, kind: str, status: str, detail: str) -> None:
        self.entries.append(Entry(path, kind, status, detail))

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def swapped(self) -> list[str]:
        return [e.path for e in self.entries if e.status == SWAPPED]

    @property
    def left_alone(self) -> dict[str, str]:
        return {e.path: e.detail for e in self.entries if e.status == LEFT}

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.entries)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in (SWAPPED, ALREADY, FOLDED, LEFT) if self.count(s)]
        return "fastdiff.patch: " + (", ".join(parts) if parts else "nothing recognised")

    def __str__(self) -> str:
        rows = [("module", "class", "status", "detail")] + [(e.path or "(model)", e.kind, e.status, e.detail) for e in self]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(lines + [self.summary()])

    def __repr__(self) -> str:
        return f"<PatchReport {self.summary().split(': ', 1)[1]}>"

    def merge(self, prefix: str, other: "PatchReport") -> None:
        """Add another model's rows under ``prefix`` (a pipeline component name)."""
        for e in other:
            self.add(f"{prefix}.{e.path}" if e.path else prefix, e.kind, e.status, e.detail)
