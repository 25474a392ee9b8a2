"""The report as Markdown (for a pull request or a CI summary): the verdict, the steps and layers with every
interval, what was left alone, the steps auto checked, the settings. Model strings cannot become HTML, links,
emphasis or extra table columns (:func:`md`)."""
from __future__ import annotations

from typing import Any

from convopt.render.figures import Grid
from convopt.render.layers import check_grid, layer_grid, skip_grid
from convopt.render.settings import data_grid, settings_rows
from convopt.render.steps import precision_grid, step_grid, summary, verdict_lines, warnings_of
from convopt.text import safe


def md(s: str) -> str:
    """Escape text for Markdown: '&' and '<' as entities (renderers pass raw HTML through, so a node named
    <script> must not become a tag), Markdown punctuation and pipes backslash-escaped, newlines flattened."""
    s = safe(s).replace("&", "&amp;").replace("<", "&lt;")
    s = s.replace("\\", "\\\\")
    for ch in "`*[]_":  # Markdown syntax: no links, images, emphasis or code spans from model strings
        s = s.replace(ch, "\\" + ch)
    s = s.replace("](", "]\\(")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


def grid_md(grid: Grid) -> list[str]:
    """A grid as a Markdown table (each figure with its interval beside it) and its notes."""
    if not grid.rows:
        return []
    lines = md_table([c.header for c in grid.columns], [[c.joined() for c in row] for row in grid.rows])
    return lines + [""] + [f"_{md(n)}_" + "  " for n in grid.notes]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = ["# convopt report", ""]
    lines += [f"**{md(v)}**  " for v in verdict_lines(report)]
    lines += [""] + [f"- **{md(k)}**: {md(v)}" for k, v in summary(report)]
    lines += [f"- **warning**: {md(w)}" for w in warnings_of(report)]
    lines += ["", "## Steps", "", *grid_md(step_grid(report))]
    for title, grid in (("Precisions (report data)", precision_grid(report)), ("Rewritten layers", layer_grid(report)), ("Left alone, and why", skip_grid(report, 40)),
                        ("Steps auto checked (select data)", check_grid(report))):
        if grid.rows:
            lines += ["", f"## {title}", "", *grid_md(grid)]
    lines += ["", "## Settings", "", *md_table(["setting", "value"], [list(r) for r in settings_rows(report)])]
    lines += ["", *grid_md(data_grid(report))]
    return "\n".join(lines).rstrip() + "\n"


def render_comparison_markdown(grids: list[Grid]) -> str:
    """`convopt report A B` as Markdown."""
    lines = ["# convopt report", "", "Two runs compared: A and B.", ""]
    for g in grids:
        lines += [f"## {md(g.title)}", "", *(grid_md(g) or [f"_{md(n)}_" for n in g.notes]), ""]
    return "\n".join(lines).rstrip() + "\n"
