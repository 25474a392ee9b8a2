"""Numbers as people read them, and the grid every view renders.

A :class:`Grid` is a titled table of :class:`Cell` rows, built once from a report and rendered by each view:
the terminal fits it to the console (:mod:`convopt.render.terminal`), Markdown writes a cell as
``value detail``, HTML as a value with the detail beneath it and a sort key. A cell's ``detail`` holds the
figure's interval (``[low, high]``) or spread (``IQR 0.13``), never a second figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DASH = "–"
UNKNOWN = "unknown"


def get(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]..., None where a level is missing or not a dict."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def listed(v: Any) -> list[Any]:
    """v when it is a list, else an empty list (free-form report parts may hold anything)."""
    return v if isinstance(v, list) else []


def finite(v: Any) -> float | None:
    """v as a float when it is a finite number, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def fmt_count(n: int | float | None, missing: str = DASH) -> str:
    """1234567 → '1.23M'; None → ``missing``."""
    if finite(n) is None:
        return missing
    assert n is not None
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def num(v: Any, spec: str, suffix: str = "") -> str:
    """v formatted with ``spec`` (and ``suffix``), or a dash when v is not a finite number."""
    x = finite(v)
    return DASH if x is None else f"{x:{spec}}{suffix}"


def ratio(after: Any, before: Any) -> str:
    """'0.30×', or ``unknown`` when either count is unknown (never 0 or negative)."""
    a, b = finite(after), finite(before)
    if a is None or b is None or b <= 0 or a < 0:
        return UNKNOWN
    return f"{a / b:.2f}×"


def interval(iv: Any, spec: str) -> str:
    """'[low, high]' from a two-element list of numbers; '' when there is none."""
    if not isinstance(iv, (list, tuple)) or len(iv) != 2:
        return ""
    lo, hi = finite(iv[0]), finite(iv[1])
    if lo is None and hi is None:
        return ""
    return f"[{num(lo, spec)}, {num(hi, spec)}]"


def share(part: Any, whole: Any) -> str:
    """part / whole as a percentage with one decimal ('12.3 %'), a dash when either is unknown."""
    p, w = finite(part), finite(whole)
    if p is None or w is None or w <= 0:
        return DASH
    return f"{100.0 * p / w:.1f} %"


@dataclass(frozen=True)
class Cell:
    """One figure: its ``value``, its interval or spread (``detail``, may be empty) and, for HTML sorting, a
    number (None: sort as text)."""

    value: str
    detail: str = ""
    sort: float | None = None

    def joined(self) -> str:
        return f"{self.value} {self.detail}" if self.detail else self.value


@dataclass(frozen=True)
class Column:
    """A grid column: its header, whether it holds numbers (right-aligned, never wrapped, never cut) and what
    it means (for the HTML header's tooltip and the terminal's vertical layout)."""

    header: str
    numeric: bool = True
    help: str = ""


@dataclass(frozen=True)
class Grid:
    """A titled table. ``kinds`` gives each row a style key (``kept``, ``rolled_back``, ``report`` ...);
    ``notes`` are sentences printed under it."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    kinds: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    groups: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (title, column indices): a narrow console's grids

    def kind(self, i: int) -> str:
        return self.kinds[i] if i < len(self.kinds) else ""

    def without_empty_columns(self, keep: int = 1) -> "Grid":
        """The grid without the columns (after the first ``keep``) whose every cell is a dash, e.g. agreement for
        a model with no class scores; column groups are renumbered."""
        cols = [i for i in range(len(self.columns))
                if i < keep or any(row[i].value not in (DASH, "") or row[i].detail for row in self.rows)]
        if len(cols) == len(self.columns):
            return self
        new = {old: k for k, old in enumerate(cols)}
        groups = tuple((t, tuple(new[i] for i in g if i in new)) for t, g in self.groups)
        return Grid(self.title, tuple(self.columns[i] for i in cols),
                    tuple(tuple(row[i] for i in cols) for row in self.rows), self.kinds, self.notes, groups)

    def part(self, columns: tuple[int, ...], title: str) -> "Grid":
        """The grid restricted to ``columns`` (by index), under ``title``, without notes."""
        return Grid(title, tuple(self.columns[i] for i in columns),
                    tuple(tuple(row[i] for i in columns) for row in self.rows), self.kinds)


def text_cell(s: str) -> Cell:
    return Cell(s)


def count_cell(n: Any, missing: str = DASH) -> Cell:
    return Cell(fmt_count(n, missing), sort=finite(n))
