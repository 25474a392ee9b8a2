"""Render a report dict (Report.to_dict()) as a terminal table, Markdown, or a self-contained HTML page, and
compare two reports.

Every view is built from the same grids (:mod:`convopt.render.steps`, :mod:`convopt.render.layers`,
:mod:`convopt.render.settings`); every string that comes from the model or the run goes through
:func:`convopt.text.safe` (no control character, bidi override or other non-printable reaches a terminal or a
file raw) and, for names, :func:`convopt.text.cell` (long names shortened with a hash suffix); then each view
escapes for its target (rich Text, Markdown, HTML). Reports read from a file are checked first
(:mod:`convopt.report_check`).
"""
from __future__ import annotations

from convopt.render.chart import chart_panels, chart_points, render_svg
from convopt.render.compare import comparison
from convopt.render.figures import fmt_count
from convopt.render.html import render_comparison_html, render_html
from convopt.render.markdown import render_comparison_markdown, render_markdown
from convopt.render.terminal import comparison_text, print_grid, render_comparison, render_table, render_text
from convopt.report_check import report_schema, validate_report

__all__ = ["chart_panels", "chart_points", "comparison", "comparison_text", "fmt_count", "print_grid",
           "render_comparison", "render_comparison_html", "render_comparison_markdown", "render_html",
           "render_markdown", "render_svg", "render_table", "render_text", "report_schema", "validate_report"]
