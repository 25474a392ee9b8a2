"""Render a report dict (Report.to_dict()) as a terminal table, Markdown, or a self-contained HTML page.

All three views are built from the same rows (:func:`pass_rows`, :func:`rewrite_rows`, :func:`skip_rows`);
every string that comes from the model or the run goes through :func:`convopt.text.safe` (no control
character, bidi override or other non-printable reaches a terminal or a file raw), names longer than 200
characters are shortened with a hash suffix in tables (:func:`convopt.text.cell`), and then each view
escapes for its target (rich Text, Markdown, HTML). Reports read from a file are checked first
(:mod:`convopt.report_check`).
"""
from __future__ import annotations

import html
import json
import math
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from convopt.report_check import report_schema, validate_report  # noqa: F401  (this module's API before)
from convopt.text import cell, safe

DASH = "–"


# ---------------------------------------------------------------------------------------------------------
# Formatting


def fmt_count(n: int | float | None) -> str:
    """1234567 → '1.23M'."""
    if n is None:
        return DASH
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def _num(v: float | None, spec: str, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return DASH
    return f"{v:{spec}}{suffix}"


def _ratio(after: int | None, before: int | None) -> str:
    if not before or after is None:
        return DASH
    return f"{after / before:.2f}×"


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _has_labels(report: dict[str, Any]) -> bool:
    ms = [report.get("baseline"), report.get("final")] + [p.get("measurement") for p in report.get("passes", [])]
    return any(_get(m, "accuracy", "labelled_top1") is not None for m in ms)


PASS_HEADERS_LABELLED = ["pass", "status", "rewritten", "skipped", "MACs", "params", "top-1 %", "Δ top-1",
                         "agreement %", "rel err", "speedup", "median ms", "note"]
PASS_HEADERS = [h for h in PASS_HEADERS_LABELLED if h not in ("top-1 %", "Δ top-1")]


def _measure_cells(m: dict[str, Any] | None, labelled: bool) -> list[str]:
    acc = _get(m, "accuracy") or {}
    cells = []
    if labelled:
        drop = acc.get("top1_drop")
        ci = acc.get("top1_drop_ci95")
        cells += [_num(acc.get("labelled_top1"), ".2f"),
                  DASH if drop is None else f"{0.0 - drop:+.2f}" + ("" if not ci else f" ±{ci:.2f}")]
    cells += [
        _num(acc.get("top1_agreement"), ".2f"),
        _num(acc.get("rel_l2_error"), ".2e"),
        _num(_get(m, "latency", "speedup"), ".2f", "×"),
        _num(_get(m, "latency", "candidate", "median_ms"), ".3g"),
    ]
    return cells


def pass_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): the original, one row per pass, and the final model. Cells are plain strings."""
    labelled = _has_labels(report)
    headers = PASS_HEADERS_LABELLED if labelled else PASS_HEADERS
    mb, pb = report.get("macs_before"), report.get("params_before")
    rows = [["original", "", "", "", f"{fmt_count(mb)} (1.00×)", fmt_count(pb),
             *_measure_cells(report.get("baseline"), labelled), ""]]
    for p in report.get("passes", []):
        note = p.get("rollback_reason") or ""
        rows.append([
            cell(p.get("name", "")), safe(p.get("status", "")), str(len(p.get("rewritten", []))),
            str(len(p.get("skipped", []))),
            f"{fmt_count(p.get('macs_after'))} ({_ratio(p.get('macs_after'), p.get('macs_before'))})",
            fmt_count(p.get("params_after")),
            *_measure_cells(p.get("measurement"), labelled), safe(note),
        ])
    ma, pa = report.get("macs_after"), report.get("params_after")
    rows.append(["final", "", "", "", f"{fmt_count(ma)} ({_ratio(ma, mb)})", fmt_count(pa),
                 *_measure_cells(report.get("final"), labelled), ""])
    return headers, rows


REWRITE_HEADERS = ["pass", "node", "kernel", "in→out", "form", "ranks", "MACs", "params", "weight err", "new nodes"]


def rewrite_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per rewritten node."""
    rows = []
    for p in report.get("passes", []):
        for r in p.get("rewritten", []):
            ranks = ", ".join(f"{safe(k)}={v}" for k, v in (r.get("ranks") or {}).items())
            rows.append([
                cell(p.get("name", "")), cell(r.get("node", "")),
                "×".join(str(k) for k in r.get("kernel", [])),
                f"{r.get('channels_in')}→{r.get('channels_out')}", safe(r.get("form", "")), ranks,
                f"{fmt_count(r.get('macs_before'))}→{fmt_count(r.get('macs_after'))} "
                f"({_ratio(r.get('macs_after'), r.get('macs_before'))})",
                f"{fmt_count(r.get('params_before'))}→{fmt_count(r.get('params_after'))}",
                _num(r.get("weight_rel_error"), ".2e"),
                ", ".join(cell(n) for n in r.get("new_nodes", [])),
            ])
    return rows


SKIP_HEADERS = ["pass", "node", "reason"]


def skip_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per skipped node."""
    return [[cell(p.get("name", "")), cell(s.get("node", "")), safe(s.get("reason", ""))]
            for p in report.get("passes", []) for s in p.get("skipped", [])]


def _warnings(report: dict[str, Any]) -> list[str]:
    ms = [report.get("baseline"), report.get("final")] + [p.get("measurement") for p in report.get("passes", [])]
    seen: list[str] = []
    for m in ms:
        w = _get(m, "warning")
        if w and safe(w) not in seen:
            seen.append(safe(w))
    return seen


def _summary(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for the page head."""
    items = [("model", safe(report.get("model", ""))), ("output", safe(report.get("output") or DASH))]
    data = _get(report.get("baseline"), "data")
    if data:
        items.append(("data", safe(data)))  # the data source already states how many samples it holds
    items.append(("MACs", f"{fmt_count(report.get('macs_before'))} → {fmt_count(report.get('macs_after'))} "
                          f"({_ratio(report.get('macs_after'), report.get('macs_before'))})"))
    items.append(("params", f"{fmt_count(report.get('params_before'))} → {fmt_count(report.get('params_after'))} "
                            f"({_ratio(report.get('params_after'), report.get('params_before'))})"))
    sp = _get(report.get("final"), "latency", "speedup")
    if sp is not None:
        items.append(("speedup", _num(sp, ".2f", "×")))
    gate = report.get("gate")
    if gate:
        items.append(("gate", ", ".join(f"{safe(k)}={_plain(v)}" for k, v in gate.items())))
    return items


def _plain(v: Any) -> str:
    return safe(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------------
# Terminal


def _skip_summary(report: dict[str, Any]) -> list[str]:
    out = []
    for p in report.get("passes", []):
        reasons = Counter(safe(s.get("reason", "")) for s in p.get("skipped", []))
        if reasons:
            out.append(f"{cell(p.get('name', ''))}: skipped " + "; ".join(f"{r} ×{n}" for r, n in reasons.most_common()))
    return out


def render_table(report: dict[str, Any], console: Console) -> None:
    """Print the pass table, then one compact line per rewritten node and the skip reasons per pass.
    Model strings are escaped (:func:`safe`) and go through rich Text, so markup in node names is shown
    literally, never interpreted."""
    for label, value in _summary(report):
        console.print(Text.assemble((f"{label}: ", "bold"), value))
    for w in _warnings(report):
        console.print(Text(f"warning: {w}", style="yellow"))
    headers, rows = pass_rows(report)
    # the note (a rollback reason) is long prose: printed under the table, not squeezed into a column
    table = Table(title="passes", title_justify="left")
    for h in headers[:-1]:
        table.add_column(h, justify="left" if h in ("pass", "status") else "right", overflow="fold")
    style = {"kept": "green", "rolled_back": "red", "no_change": "dim"}
    for row in rows:
        table.add_row(*(Text(c, style=style.get(row[1], "") if i == 1 else "") for i, c in enumerate(row[:-1])))
    console.print(table)
    for row in rows:
        if row[-1]:
            console.print(Text(f"  {row[0]} {row[1]}: {row[-1]}", style="red"))
    for r in rewrite_rows(report):
        p, node, kernel, io, form, ranks, macs, params, err, _new = r
        console.print(Text(f"  {p}: {node}  {kernel} {io}  {form} {ranks}  MACs {macs}  params {params}  "
                           f"w-err {err}"))
    for line in _skip_summary(report):
        console.print(Text(f"  {line}", style="dim"))


def render_text(report: dict[str, Any], width: int = 160) -> str:
    """The terminal view (:func:`render_table`) as plain text for a file: a first line ``convopt report``
    (how the write guard knows the file as convopt's), no colours or styles."""
    import io

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, emoji=False, highlight=False,
                      force_terminal=False, legacy_windows=False)
    render_table(report, console)
    return "convopt report\n\n" + buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Markdown


def _md(s: str) -> str:
    """Escape text for Markdown: '&' and '<' as entities (renderers pass raw HTML through, so a node named
    <script> must not become a tag), Markdown punctuation and pipes backslash-escaped, newlines flattened."""
    s = safe(s).replace("&", "&amp;").replace("<", "&lt;")
    s = s.replace("\\", "\\\\")
    for ch in "`*[]":  # Markdown syntax: no links, images, emphasis or code spans from model strings
        s = s.replace(ch, "\\" + ch)
    s = s.replace("](", "]\\(")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: summary list, pass table, rewritten and skipped nodes."""
    lines = ["# convopt report", ""]
    lines += [f"- **{_md(k)}**: {_md(v)}" for k, v in _summary(report)]
    lines += [f"- **warning**: {_md(w)}" for w in _warnings(report)]
    lines += ["", "## Passes", "", *_md_table(*pass_rows(report))]
    rw = rewrite_rows(report)
    if rw:
        lines += ["", "## Rewritten nodes", "", *_md_table(REWRITE_HEADERS, rw)]
    sk = skip_rows(report)
    if sk:
        lines += ["", "## Skipped nodes", "", *_md_table(SKIP_HEADERS, sk)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# HTML


def _e(s: Any) -> str:
    return html.escape(safe(s), quote=True)


def _html_table(headers: list[str], rows: list[list[str]], status_col: int | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cls = f' class="{_e(row[status_col])}"' if status_col is not None and row[status_col] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d: dict[str, Any]) -> str:
    if not d:
        return "<p>(none)</p>"
    return _html_table(["key", "value"], [[safe(k), _plain(v)] for k, v in d.items()])


def chart_points(report: dict[str, Any]) -> tuple[str, list[tuple[str, str, float, float, float | None]]]:
    """(y label, [(label, status, speedup, y, median ms)]) for the baseline and every measured pass.
    y is labelled top-1 when the run has labels, else top-1 agreement, else relative L2 error."""
    ms = [("original", "baseline", report.get("baseline"))]
    ms += [(cell(p.get("name", "")), safe(p.get("status", "")), p.get("measurement")) for p in report.get("passes", [])]
    for key, label in (("labelled_top1", "labelled top-1 (%)"), ("top1_agreement", "top-1 agreement (%)"),
                       ("rel_l2_error", "relative L2 error")):
        if any(_get(m, "accuracy", key) is not None for _, _, m in ms):
            break
    points = []
    for name, status, m in ms:
        x, y = _get(m, "latency", "speedup"), _get(m, "accuracy", key)
        if x is not None and y is not None:
            points.append((name, status, float(x), float(y), _get(m, "latency", "candidate", "median_ms")))
    return label, points


def render_svg(report: dict[str, Any], width: int = 640, height: int = 380) -> str:
    """Inline SVG scatter: accuracy (y) against speedup vs the original (x), a labelled point per pass."""
    ylabel, points = chart_points(report)
    if not points:
        return "<p>No pass has both an accuracy and a latency measurement to chart.</p>"
    ml, mr, mt, mb = 64, 24, 16, 48
    xs, ys = [p[2] for p in points], [p[3] for p in points]
    x0, x1 = min(xs + [1.0]), max(xs + [1.0])
    y0, y1 = min(ys), max(ys)
    xpad, ypad = (x1 - x0) * 0.1 or 0.1, (y1 - y0) * 0.1 or max(abs(y1) * 0.01, 0.01)
    x0, x1, y0, y1 = x0 - xpad, x1 + xpad, y0 - ypad, y1 + ypad

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (v - y0) / (y1 - y0) * (height - mt - mb)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="accuracy against speedup per pass">',
             f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" class="plot"/>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - mb + 16}" class="tick" text-anchor="middle">'
                     f'{xv:.2f}×</text>')
        parts.append(f'<text x="{ml - 6}" y="{sy(yv) + 4:.1f}" class="tick" text-anchor="end">{yv:.3g}</text>')
    parts.append(f'<line x1="{sx(1.0):.1f}" x2="{sx(1.0):.1f}" y1="{mt}" y2="{height - mb}" class="ref"/>')
    parts.append(f'<text x="{(ml + width - mr) / 2:.1f}" y="{height - 8}" class="axis" text-anchor="middle">'
                 'speedup vs original (×, higher is faster)</text>')
    parts.append(f'<text x="14" y="{(mt + height - mb) / 2:.1f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(mt + height - mb) / 2:.1f})">{_e(ylabel)}</text>')
    for name, status, x, y, med in points:
        tip = f"{name} ({status}): speedup {x:.2f}×, {ylabel} {y:.4g}" + (f", median {med:.3g} ms" if med else "")
        right_half = sx(x) > (ml + width - mr) / 2  # label towards the middle so it stays inside the plot
        lx, anchor = (sx(x) - 8, "end") if right_half else (sx(x) + 8, "start")
        parts.append(f'<g class="pt {_e(status)}"><title>{_e(tip)}</title>'
                     f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5"/>'
                     f'<text x="{lx:.1f}" y="{sy(y) - 8:.1f}" class="label" text-anchor="{anchor}">'
                     f'{_e(name)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.kept td:nth-child(2){color:#17702b}tr.rolled_back td:nth-child(2){color:#b3261e}
tr.no_change td:nth-child(2){color:#777}
.warning{background:#fff4ce;padding:.5em 1em;border-left:4px solid #e0a800}
svg .plot{fill:#fafafa;stroke:#999}svg .tick{font-size:11px;fill:#555}svg .axis{font-size:12px}
svg .ref{stroke:#bbb;stroke-dasharray:4 3}svg .label{font-size:11px}
svg .pt circle{fill:#1f6feb}svg .pt.baseline circle{fill:#222}
svg .pt.rolled_back circle{fill:#fff;stroke:#b3261e;stroke-width:2}svg .pt.no_change circle{fill:#999}
"""


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG, no scripts or external assets). Every string from
    the model or the run is passed through html.escape."""
    title = f"convopt report: {report.get('model', '')}"
    body = [f"<h1>{_e(title)}</h1>", "<ul>"]
    body += [f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in _summary(report)]
    body.append("</ul>")
    body += [f'<p class="warning">{_e(w)}</p>' for w in _warnings(report)]
    headers, rows = pass_rows(report)
    body += ["<h2>Passes</h2>", _html_table(headers, rows, status_col=1)]
    body += ["<h2>Accuracy against speed</h2>", render_svg(report)]
    rw = rewrite_rows(report)
    if rw:
        body += ["<h2>Rewritten nodes</h2>", _html_table(REWRITE_HEADERS, rw)]
    sk = skip_rows(report)
    if sk:
        body += ["<h2>Skipped nodes</h2>", _html_table(SKIP_HEADERS, sk)]
    body += ["<h2>Settings</h2>", _kv_table(report.get("settings") or {}),
             "<h2>Environment</h2>", _kv_table(report.get("environment") or {})]
    if report.get("extra"):
        body += ["<h2>Extra</h2>", _kv_table(report["extra"])]
    body.append(f"<p>schema version {_e(report.get('schema_version', ''))}</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
