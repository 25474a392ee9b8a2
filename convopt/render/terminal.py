"""The terminal view: grids fitted to the console's width, never cutting a number or breaking a header.

A grid is printed in the first layout that fits (:func:`print_grid`): one line per row with each interval
beside its figure; two lines per row with the interval under its figure; else a vertical layout (one block
per row, ``header value`` items packed into lines). Numeric columns are never wrapped; text columns (names,
forms, reasons) fold within the width left to them. Prose lines (notes, verdicts) wrap on a terminal and stay
one line each in a pipe or a CI log, so grep finds them whole.
"""
from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from convopt.render.figures import Cell, Grid
from convopt.render.layers import layer_grid, skip_lines
from convopt.render.steps import precision_grid, step_grid, summary, verdict_lines, warnings_of

SEPARATOR = 2  # SIMPLE_HEAD without edges, padding on the right: one space of padding and a blank border
TEXT_MIN = 12  # a text column is never folded narrower than this (nor than its header)
STYLES = {"kept": "green", "rolled_back": "red", "no_change": "dim", "report": "bold"}


def _lines(c: Cell, two_line: bool) -> list[str]:
    if not c.detail:
        return [c.value]
    return [c.value, c.detail] if two_line else [c.joined()]


def _natural(grid: Grid, two_line: bool) -> list[int]:
    widths = [cell_len(col.header) for col in grid.columns]
    for row in grid.rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], *(cell_len(s) for s in _lines(c, two_line)))
    return widths


def column_widths(grid: Grid, width: int, two_line: bool) -> list[int] | None:
    """Each column's width when the grid fits ``width`` in this layout (numbers whole, text columns given what
    is left, largest need last), else None."""
    natural = _natural(grid, two_line)
    text = [i for i, col in enumerate(grid.columns) if not col.numeric]
    fixed = sum(w for i, w in enumerate(natural) if i not in text) + SEPARATOR * (len(natural) - 1)
    floor = {i: min(natural[i], max(TEXT_MIN, cell_len(grid.columns[i].header))) for i in text}
    if fixed + sum(floor.values()) > width:
        return None
    widths, left = list(natural), width - fixed
    for k, i in enumerate(sorted(text, key=lambda i: natural[i])):
        widths[i] = max(floor[i], min(natural[i], left // (len(text) - k)))
        left -= widths[i]
    return widths


def _table(grid: Grid, widths: list[int], two_line: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_lines=two_line, padding=(0, 1, 0, 0))
    for col, w in zip(grid.columns, widths):
        if col.numeric:
            table.add_column(col.header, justify="right", no_wrap=True, min_width=w)
        else:
            table.add_column(col.header, justify="left", overflow="fold", max_width=w, min_width=min(w, TEXT_MIN))
    for i, row in enumerate(grid.rows):
        style = STYLES.get(grid.kind(i), "")
        table.add_row(*(Text("\n".join(_lines(c, two_line)), style=style if j == 0 else "")
                        for j, c in enumerate(row)))
    return table


def _vertical(grid: Grid, console: Console) -> None:
    """One block per row: the first cell as a heading, then 'header value' items packed into lines."""
    width = console.width
    for i, row in enumerate(grid.rows):
        console.print(Text(row[0].joined(), style=STYLES.get(grid.kind(i), "")), soft_wrap=True)
        line = " "
        for col, c in zip(grid.columns[1:], row[1:]):
            item = f"{col.header} {c.joined()}"
            if line.strip() and cell_len(line) + 2 + cell_len(item) > width:
                console.print(Text(line), soft_wrap=True)
                line = " "
            line += ("  " if line.strip() else " ") + item
        if line.strip():
            console.print(Text(line), soft_wrap=True)


def _title(console: Console, title: str) -> None:
    if title:
        console.print(Text(title, style="bold"), soft_wrap=not console.is_terminal)


def prose(console: Console, text: str, style: str = "") -> None:
    """A sentence: wrapped at spaces on a terminal, one line in a pipe or a log."""
    console.print(Text(text, style=style), soft_wrap=not console.is_terminal)


def print_grid(console: Console, grid: Grid, notes: bool = True) -> None:
    """Print ``grid`` in the first layout that fits the console (see the module docstring)."""
    if not grid.rows:
        return
    for two_line in (False, True):
        widths = column_widths(grid, console.width, two_line)
        if widths is not None:
            _title(console, grid.title)
            console.print(_table(grid, widths, two_line))
            break
    else:
        parts = [grid.part(cols, title) for title, cols in grid.groups]
        fitted = [column_widths(p, console.width, True) for p in parts]
        if parts and all(w is not None for w in fitted):
            for p, w in zip(parts, fitted):
                _title(console, p.title)
                console.print(_table(p, w, True))  # type: ignore[arg-type]
        else:
            _title(console, grid.title)
            _vertical(grid, console)
    for note in grid.notes if notes else ():
        prose(console, f"  {note}", "dim")


def render_table(report: dict[str, Any], console: Console) -> None:
    """The terminal view of a report: summary, verdict, warnings, the steps, the rewritten layers and why
    layers were left alone. Model strings are escaped and printed as rich Text (markup shown literally)."""
    for label, value in summary(report):
        console.print(Text.assemble((f"{label}: ", "bold"), value), soft_wrap=not console.is_terminal)
    for line in verdict_lines(report):
        prose(console, line, "bold")
    for w in warnings_of(report):
        prose(console, f"warning: {w}", "yellow")
    console.print()
    print_grid(console, step_grid(report))
    precisions = precision_grid(report)
    if precisions.rows:
        console.print()
        print_grid(console, precisions)
    layers = layer_grid(report)
    if layers.rows:
        console.print()
        print_grid(console, layers)
    for line in skip_lines(report):
        prose(console, f"  {line}", "dim")


def render_text(report: dict[str, Any], width: int = 120) -> str:
    """The terminal view (:func:`render_table`) as plain text for a file: a first line ``convopt report``
    (how the write guard knows the file as convopt's), no colours or styles."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, emoji=False, highlight=False,
                      force_terminal=False, legacy_windows=False)
    render_table(report, console)
    return "convopt report\n\n" + buf.getvalue()


def render_comparison(grids: list[Grid], console: Console) -> None:
    """`convopt report A B` on the terminal."""
    for g in grids:
        if g.rows:
            print_grid(console, g)
        else:
            console.print(Text(g.title, style="bold"))
            for note in g.notes:
                prose(console, f"  {note}", "dim")
        console.print()


def comparison_text(grids: list[Grid], width: int = 120) -> str:
    """The comparison as plain text for a file (first line ``convopt report``, like :func:`render_text`)."""
    buf = io.StringIO()
    render_comparison(grids, Console(file=buf, width=width, color_system=None, emoji=False, highlight=False,
                                     force_terminal=False, legacy_windows=False))
    return "convopt report\n\n" + buf.getvalue()
