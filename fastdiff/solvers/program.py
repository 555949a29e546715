"""From a solver written as linear algebra on symbols to a `sampler_update` coefficient table.

A solver is described by what it does at each model evaluation i, in float64 on the host:
the state ``X_i``, the model output ``M_i`` and the noise ``Z_i`` are symbols, the converted output
``D_i = a_i X_i + b_i M_i`` (usually the x0 prediction) is one too, and the solver writes the next
state as a linear combination of any symbols seen so far, exactly as its paper or reference code
reads. Terms that one fused step cannot read are then rewritten away:

- ``M_j`` becomes ``(D_j - a_j X_j) / b_j``;
- an earlier state ``X_j`` (UniPC's corrector reads the sample before the last predictor, Heun's
  second stage the sample before the first) is eliminated through the step that left it:
  ``X_{j+1} = c_x X_j + (terms in D and Z_j)``, so ``X_j = (X_{j+1} - ...) / c_x``;
- what remains is ``c_x X_i + c_d D_i + sum_j c_j D_j + c_z Z_i``: one table row. Earlier D's live
  in a ring of history slots, allocated here by liveness so the history is as short as possible.

An expression that would need an earlier noise draw or an unrecoverable model output is refused
(ValueError) rather than approximated.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from .rows import A, B, CD, CX, CZ, SLOT, HISTORY, row_length

#: history terms this much smaller than an expression's largest coefficient are float64 round-off
PRUNE = 1e-12

Symbol = tuple  # (kind, eval index): kind in "x" (state), "m" (model output), "z" (noise), "d" (converted)


class Lin:
    """A linear combination of symbols with float64 (Python float) coefficients."""

    __slots__ = ("terms",)

    def __init__(self, terms: Optional[dict] = None):
        self.terms = {k: float(v) for k, v in (terms or {}).items() if v != 0.0}

    @staticmethod
    def of(kind: str, i: int) -> "Lin":
        return Lin({(kind, i): 1.0})

    def coef(self, sym: Symbol) -> float:
        return self.terms.get(sym, 0.0)

    def _combine(self, other: "Lin", sign: float) -> "Lin":
        if not isinstance(other, Lin):
            if other == 0:
                return Lin(self.terms)
            return NotImplemented
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out.get(k, 0.0) + sign * v
        return Lin(out)

    def __add__(self, other):
        return self._combine(other, 1.0)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __rsub__(self, other):
        return (-self)._combine(other, 1.0)

    def __neg__(self):
        return Lin({k: -v for k, v in self.terms.items()})

    def __mul__(self, s: float):
        if isinstance(s, Lin):
            return NotImplemented
        s = float(s)
        return Lin({k: v * s for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, s: float):
        return self * (1.0 / float(s))

    def __repr__(self) -> str:
        return " + ".join(f"{v:.6g}*{k[0]}{k[1]}" for k, v in sorted(self.terms.items(), key=lambda kv: (kv[0][1], kv[0][0]))) or "0"


def lin_sum(items: Iterable[Lin]) -> Lin:
    out = Lin()
    for it in items:
        out = out + it
    return out


@dataclass
class Program:
    """A coefficient table and what the sampling loop needs besides it.

    rows: (E, 6 + K) float64, one per model evaluation (layout: fastdiff/solvers/rows.py).
    draws: whether evaluation i draws fresh noise (a diffusers scheduler draws some it then
    multiplies by 0; drawing the same ones keeps seeded runs identical).
    history: K, the number of history slots (0: no history buffer).
    """

    rows: Tensor
    draws: list[bool]
    history: int
    slots: list[int] = field(default_factory=list)

    @functools.cached_property
    def reads_noise(self) -> list[bool]:
        """Whether row i's noise coefficient is nonzero (a drawn noise with coefficient 0 need not be passed)."""
        return [v != 0.0 for v in self.rows[:, CZ].tolist()]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def device_table(self, device, dtype=torch.float32) -> Tensor:
        return self.rows.to(device=device, dtype=dtype)


@dataclass
class _Eval:
    a: float
    b: float
    draw: bool
    row: Optional[Lin] = None  # X_{i+1} in terms of X_i, D_<=i, Z_i


class ProgramBuilder:
    """Collects one row per model evaluation; see the module docstring."""

    def __init__(self) -> None:
        self._evals: list[_Eval] = []

    def eval(self, a: float, b: float, *, draw: bool = False) -> tuple[Lin, Lin, Lin, Lin]:
        """Start model evaluation i with ``D_i = a X_i + b M_i``; returns (X_i, M_i, Z_i, D_i)."""
        if self._evals and self._evals[-1].row is None:
            raise RuntimeError("fastdiff: ProgramBuilder.eval called before the previous evaluation's advance()")
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"fastdiff: non-finite output conversion (a={a}, b={b}) at evaluation {len(self._evals)}")
        i = len(self._evals)
        self._evals.append(_Eval(float(a), float(b), bool(draw)))
        return Lin.of("x", i), Lin.of("m", i), Lin.of("z", i), Lin.of("d", i)

    def advance(self, x_next: Lin) -> None:
        """Set the state after the current evaluation (the next evaluation's X, or the final sample)."""
        i = len(self._evals) - 1
        if i < 0 or self._evals[i].row is not None:
            raise RuntimeError("fastdiff: ProgramBuilder.advance called without a pending evaluation")
        expr = self._reduce(x_next, i)
        for (kind, j), v in expr.terms.items():
            ok = (kind == "x" and j == i) or (kind == "d" and j <= i) or (kind == "z" and j == i)
            if not ok:
                raise ValueError(f"fastdiff: evaluation {i} needs {kind}{j}, which one fused step cannot read")
            if not math.isfinite(v):
                raise ValueError(f"fastdiff: non-finite coefficient for {kind}{j} at evaluation {i}")
        self._evals[i].row = expr

    def _reduce(self, expr: Lin, i: int) -> Lin:
        # Model outputs -> converted outputs.
        terms = dict(expr.terms)
        for sym in [s for s in terms if s[0] == "m"]:
            c = terms.pop(sym)
            ev = self._evals[sym[1]]
            if ev.b == 0.0:
                raise ValueError(f"fastdiff: model output m{sym[1]} cannot be recovered from its converted output (b = 0)")
            for s, v in ((("d", sym[1]), c / ev.b), (("x", sym[1]), -c * ev.a / ev.b)):
                terms[s] = terms.get(s, 0.0) + v
        # Earlier states -> later ones, oldest first, through the rows that produced them.
        for j in range(i):
            c = terms.pop(("x", j), 0.0)
            if c == 0.0:
                continue
            row = self._evals[j].row
            cx = row.coef(("x", j))
            if cx == 0.0:
                raise ValueError(f"fastdiff: state x{j} is needed after a step that discarded it (c_x = 0)")
            if row.coef(("z", j)) != 0.0:
                raise ValueError(f"fastdiff: state x{j} is needed after a noisy step; its noise cannot be re-read")
            f = c / cx
            terms[("x", j + 1)] = terms.get(("x", j + 1), 0.0) + f
            for s, v in row.terms.items():
                if s != ("x", j):
                    terms[s] = terms.get(s, 0.0) - f * v
        # Eliminating a state brings in every output its step read; terms that cancel analytically
        # (UniPC: the corrector's start state is exactly (x_i - predictor terms) / p0) leave float64
        # residues ~1e-17. Dropping history terms below 1e-12 of the largest coefficient changes the
        # result far below float32 resolution and keeps the history as short as the math needs.
        scale = max((abs(v) for v in terms.values()), default=0.0)
        for s in [s for s, v in terms.items() if s[0] == "d" and s[1] < i and abs(v) < PRUNE * scale]:
            del terms[s]
        return Lin(terms)

    def build(self, scale: Optional[Sequence[float]] = None, *, expose: bool = False) -> Program:
        """The table. ``scale[i]`` maps the state the kernel sees to the solver's: x_solver_i =
        scale[i] * x_kernel_i (length E + 1; the last entry is the final output's). ``expose``
        writes every D_i to a history slot, so a caller can read it after the step.
        """
        ev = self._evals
        n = len(ev)
        if n == 0 or ev[-1].row is None:
            raise RuntimeError("fastdiff: ProgramBuilder.build needs at least one evaluation, each advanced")
        k = [1.0] * (n + 1) if scale is None else [float(s) for s in scale]
        if len(k) != n + 1 or not all(math.isfinite(s) and s > 0 for s in k):
            raise ValueError(f"fastdiff: scale expected {n + 1} positive numbers, got {scale}")
        last_use: dict[int, int] = {}
        for i, e in enumerate(ev):
            for (kind, j), v in e.row.terms.items():
                if kind == "d" and j < i:
                    last_use[j] = i
        # Greedy interval colouring: a slot is free at evaluation i when its occupant is last read at i or before
        # (the kernel reads every history term of an element before it writes the new entry).
        occupant: list[Optional[int]] = []
        slot_of: dict[int, int] = {}
        writes: list[int] = []
        where: list[dict[int, int]] = []  # per evaluation: slot -> the D index it holds before the write
        for i in range(n):
            where.append({s: j for s, j in enumerate(occupant) if j is not None})
            if i in last_use or expose:
                free = [s for s, j in enumerate(occupant) if j is None or last_use.get(j, -1) <= i]
                if free:
                    s = free[0]
                else:
                    occupant.append(None)
                    s = len(occupant) - 1
                occupant[s] = i
                slot_of[i] = s
                writes.append(s)
            else:
                writes.append(-1)
        hist = len(occupant)
        rows = []
        for i, e in enumerate(ev):
            r = e.row
            ki, kn = k[i], k[i + 1]
            h = [0.0] * hist
            for (kind, j), v in r.terms.items():
                if kind == "d" and j < i:
                    s = slot_of[j]
                    if where[i].get(s) != j:  # pragma: no cover - the allocation above guarantees it
                        raise RuntimeError("fastdiff: history slot allocation failed")
                    h[s] += v / kn
            row = [0.0] * row_length(hist)
            row[A], row[B], row[SLOT] = e.a * ki, e.b, float(writes[i])
            row[CX], row[CD], row[CZ] = r.coef(("x", i)) * ki / kn, r.coef(("d", i)) / kn, r.coef(("z", i)) / kn
            row[HISTORY:] = h
            rows.append(row)
        table = torch.tensor(rows, dtype=torch.float64)
        if not bool(torch.isfinite(table).all()):
            bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(table))[:, 0]})
            raise ValueError(f"fastdiff: non-finite coefficients at evaluations {bad}")
        return Program(rows=table, draws=[e.draw for e in ev], history=hist, slots=writes)
