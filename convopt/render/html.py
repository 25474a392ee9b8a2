"""The shareable report: one self-contained HTML page (inline CSS and SVG, one fixed inline script for
sorting tables, no network). Every string from the model or the run is escaped with html.escape after
:func:`convopt.text.safe`; a Content-Security-Policy lets only the page's own script run (by its hash), so even
a string that slipped through could not execute."""
from __future__ import annotations

import base64
import hashlib
import html
from typing import Any

from convopt.render.chart import LEGEND, chart_panels, render_svg
from convopt.render.figures import Grid, get
from convopt.render.layers import candidate_grid, check_grid, layer_grid, skip_grid
from convopt.render.settings import data_grid, settings_rows
from convopt.render.steps import precision_grid, step_grid, summary, verdict_lines, warnings_of
from convopt.text import safe

# Sorts a table.sortable by the clicked header (numbers by data-sort, missing last; text otherwise), or as the
# link's #sort=TABLE:COLUMN asks, and records on <html> what a headless browser checks: data-ready, data-points
# (chart points), data-height (for a full-page screenshot) and data-errors.
SCRIPT = r"""
(function () {
  var root = document.documentElement, errors = 0;
  window.addEventListener("error", function () { errors += 1; root.setAttribute("data-errors", String(errors)); });
  function key(td) {
    var s = td.getAttribute("data-sort");
    return s === null ? null : parseFloat(s);
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    rows.sort(function (a, b) {
      var x = a.cells[col], y = b.cells[col], kx = key(x), ky = key(y);
      if (kx !== null || ky !== null) {
        if (kx === null) { return 1; }
        if (ky === null) { return -1; }
        return (kx - ky) * dir;
      }
      return x.textContent.localeCompare(y.textContent) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, col, th); });
    });
  });
  var wanted = /^#sort=(\d+):(\d+)$/.exec(location.hash);  // a link can open a table sorted: #sort=TABLE:COLUMN
  if (wanted) {
    var t = document.querySelectorAll("table.sortable")[Number(wanted[1])];
    if (t && t.tHead.rows[0].cells[Number(wanted[2])]) {
      sortBy(t, Number(wanted[2]), t.tHead.rows[0].cells[Number(wanted[2])]);
    }
  }
  root.setAttribute("data-points", String(document.querySelectorAll("svg.chart .pt").length));
  root.setAttribute("data-height", String(document.documentElement.scrollHeight));
  root.setAttribute("data-ready", "1");
})();
"""
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
CSP = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1180px;color:#1d1d1f;
padding:0 1em;line-height:1.4}
h1{font-size:1.45em;margin-bottom:.2em;overflow-wrap:anywhere}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #d8d8d8;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}th[title]{cursor:help}
td.t,th.t{text-align:left}td small{display:block;color:#666;white-space:nowrap}
tr.kept td:first-child{color:#17702b}tr.rolled_back td:first-child{color:#b3261e}tr.no_change td:first-child{color:#777}
tr.report td:first-child{font-weight:600}
table.sortable th{cursor:pointer}table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}
.verdict{padding:.6em 1em;border-left:5px solid #17702b;background:#eef7ef;margin:.8em 0}
.verdict.bad{border-color:#b3261e;background:#fbeeed}.verdict p{margin:.2em 0}
.warning{background:#fff4ce;padding:.4em 1em;border-left:4px solid #e0a800}
ul.summary{list-style:none;padding:0;columns:2;font-size:14px}ul.summary li{margin:.1em 0;overflow-wrap:anywhere}
.note{color:#555;font-size:13px;margin:.2em 0}
.charts{display:flex;flex-wrap:wrap;gap:1em}
ul.legend{font-size:13px;list-style:none;padding:0}ul.legend li{margin:.15em 0}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-1px;border-radius:50%}
.sw.original{background:#222}.sw.check{background:#1f6feb}.sw.check-rejected{border:2px solid #b3261e;box-sizing:border-box}
.sw.pass{background:#17702b}.sw.pass-rolled-back{border:2px solid #b3261e;box-sizing:border-box}
.sw.final{background:#e36209;border-radius:0}.sw.precision{background:#8a8a8a;border-radius:0}
svg .plot{fill:#fcfcfc;stroke:#999}svg .grid{stroke:#eee}svg .tick{font-size:11px;fill:#555}
svg .axis{font-size:12px;fill:#222}svg .ref{stroke:#aaa;stroke-dasharray:4 3}
svg .budget{stroke:#b3261e;stroke-width:1.5;stroke-dasharray:7 4}svg .budget-label{font-size:11px;fill:#b3261e}
svg .bar{stroke:#555;stroke-width:1.2}svg .label{font-size:11px;fill:#222}svg .step{font-size:10px;fill:#555}
svg .pt.original .mark{fill:#222}svg .pt.check .mark{fill:#1f6feb}
svg .pt.check-rejected .mark,svg .pt.pass-rolled-back .mark{fill:#fff;stroke:#b3261e;stroke-width:2}
svg .pt.pass .mark{fill:#17702b}svg .pt.final .mark{fill:#e36209}svg .pt.precision .mark{fill:#8a8a8a}svg .pt.final .bar{stroke:#e36209;stroke-width:2}
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
.footer{margin-top:2em;color:#777;font-size:12px}
"""


def _e(s: Any) -> str:
    return html.escape(safe(s), quote=True)


def grid_html(grid: Grid, sortable: bool = False) -> str:
    """A grid as an HTML table: a figure's interval under it in <small>, a sort key in data-sort, the column's
    meaning as the header's tooltip."""
    head = "".join(f'<th class="{"" if c.numeric else "t"}"' + (f' title="{_e(c.help)}"' if c.help else "")
                   + f">{_e(c.header)}</th>" for c in grid.columns)
    body = []
    for i, row in enumerate(grid.rows):
        kind = grid.kind(i)
        tds = []
        for col, c in zip(grid.columns, row):
            attrs = ("" if col.numeric else ' class="t"') + ("" if c.sort is None else f' data-sort="{c.sort:.9g}"')
            tds.append(f"<td{attrs}>{_e(c.value)}" + (f"<small>{_e(c.detail)}</small>" if c.detail else "") + "</td>")
        body.append(f'<tr{f" class={chr(34)}{_e(kind)}{chr(34)}" if kind else ""}>' + "".join(tds) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in grid.notes)
    return table + notes


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f'<tr><th class="t">{_e(k)}</th><td class="t">{_e(v)}</td></tr>' for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _verdict(report: dict[str, Any]) -> str:
    good = bool(get(report, "budget", "certified")) and get(report, "gate", "passed") is not False
    lines = "".join(f"<p>{_e(line)}</p>" for line in verdict_lines(report))
    return f'<div class="verdict{"" if good else " bad"}">{lines}</div>'


def _charts(report: dict[str, Any]) -> list[str]:
    panels = chart_panels(report)
    if not panels:
        return ["<h2>Accuracy against speed</h2>",
                "<p>No model has both an accuracy and a latency measurement to chart.</p>"]
    kinds = {p.kind for panel in panels for p in panel.points}
    legend = "".join(f'<li><span class="sw {k}"></span>{_e(text)}</li>' for k, text in LEGEND if k in kinds)
    svgs = "".join(f"<div>{render_svg(p)}</div>" for p in panels)
    return ["<h2>Accuracy against speed</h2>", f'<div class="charts">{svgs}</div>',
            f'<ul class="legend">{legend}<li><span class="sw" style="border-top:2px dashed #b3261e;border-radius:0;'
            'height:0"></span>the budget</li></ul>']


def _section(title: str, grid: Grid, sortable: bool = False) -> list[str]:
    return [] if not grid.rows else [f"<h2>{_e(title)}</h2>", grid_html(grid, sortable)]


def render_html(report: dict[str, Any]) -> str:
    """The report as a self-contained HTML page."""
    title = f"convopt report: {safe(report.get('model', ''))}"
    body = [f"<h1>{_e(title)}</h1>", _verdict(report), '<ul class="summary">']
    body += [f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in summary(report)]
    body.append("</ul>")
    body += [f'<p class="warning">{_e(w)}</p>' for w in warnings_of(report)]
    body += _charts(report)
    body += ["<h2>Steps</h2>", grid_html(step_grid(report))]
    body += _section("Precisions (report data)", precision_grid(report))
    body += _section("Rewritten layers", layer_grid(report), sortable=True)
    body += _section("Left alone, and why", skip_grid(report, max_names=40))
    body += _section("Steps auto checked (select data)", check_grid(report))
    body += ["<h2>Settings</h2>", _kv(settings_rows(report)), grid_html(data_grid(report))]
    cands = candidate_grid(report)
    if cands.rows:
        body += [f"<details><summary>Candidates auto considered ({len(cands.rows)}; click a header to sort)"
                 f"</summary>{grid_html(cands, sortable=True)}</details>"]
    date = get(report, "environment", "date")
    body.append(f'<p class="footer">convopt report schema {_e(report.get("schema_version", ""))}'
                f"{f', run {_e(date)}' if date else ''}</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"  # the write guard knows this head
        f"<title>{_e(title)}</title>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def render_comparison_html(grids: list[Grid]) -> str:
    """`convopt report A B` as a self-contained HTML page."""
    body = ["<h1>convopt report: two runs compared</h1>"]
    for g in grids:
        body += [f"<h2>{_e(g.title)}</h2>", grid_html(g) if g.rows else "".join(
            f'<p class="note">{_e(n)}</p>' for n in g.notes)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>convopt report: two runs compared</title>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
