"""The accuracy–speed trade-off as inline SVG: one panel per limit of the budget.

x is the speedup against the original (×, higher is faster), y the loss the budget limits (top-1 drop in
points, disagreement, relative error or the metric's drop; higher is worse), with the budget as a horizontal
line. Points: the original at (1, 0); every step auto checked on the select data, with a one-sided bar up to
the upper bound its decision compared with the budget (filled when certified, hollow when not); uniform
passes on the select data with their 95 % interval; the final model measured on the report data, with its
95 % interval. The y axis always holds 0, the budget and every interval, so noise looks like noise.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from convopt.render.figures import finite, get, listed
from convopt.render.steps import LIMITS, has_labels, limit_what, limits_of, metric_name
from convopt.text import cell, safe


@dataclass(frozen=True)
class Point:
    """One model on the chart: ``kind`` is original, check, check-rejected, pass, pass-rolled-back or final;
    ``low``/``high`` the ends of its bar (None: no bar)."""

    label: str
    kind: str
    x: float
    y: float
    low: float | None
    high: float | None
    note: str


@dataclass(frozen=True)
class Panel:
    """One chart: the loss it plots (a budget limit's name), its axis label, the budget line, the points."""

    key: str
    ylabel: str
    limit: float | None
    points: tuple[Point, ...]


_CHECK_KEYS = {"max_accuracy_drop": "top1_drop", "max_rel_error": "rel_l2_error"}
LARGEST = 1e12  # a value beyond this cannot be drawn on a readable axis: the point (or its bar) is left out


def _v(v: object) -> float | None:
    """A finite number small enough to chart, else None."""
    x = finite(v)
    return x if x is not None and abs(x) <= LARGEST else None


def _loss(acc: Any, key: str) -> tuple[float | None, list[Any] | None]:
    """The loss a limit bounds, from an accuracy dict, and its interval (disagreement has none)."""
    if key == "min_agreement":
        a = _v(get(acc, "top1_agreement"))
        return (None if a is None else 100.0 - a), None
    _, _, _, k, ik, _ = LIMITS[key]
    return _v(get(acc, k)), get(acc, ik) if ik else None


def _bar(iv: Any) -> tuple[float | None, float | None]:
    if isinstance(iv, list) and len(iv) == 2:
        lo, hi = _v(iv[0]), _v(iv[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None, None


def _checks(report: dict[str, Any], key: str) -> list[Point]:
    pts = []
    for c in listed(get(report, "extra", "auto", "checks")):
        x, bound = _v(get(c, "speedup")), _v(get(c, "bound", key))
        y = _v(get(c, _CHECK_KEYS[key])) if key in _CHECK_KEYS else None
        if x is None or (y is None and bound is None):
            continue
        ok = bool(get(c, "ok"))
        note = (f"step {c.get('step')} ({c.get('layers')} layers), select data: speedup {x:.3f}×"
                + (f", point estimate {y:.4g}" if y is not None else "")
                + (f", upper bound {bound:.4g}" if bound is not None else "")
                + (", certified" if ok else f", not certified: {safe(c.get('reason') or '')}"))
        pts.append(Point(str(c.get("step")), "check" if ok else "check-rejected", x, bound if y is None else y,
                         None if y is None else y, bound, note))
    return pts


def _passes(report: dict[str, Any], key: str) -> list[Point]:
    pts = []
    for p in report.get("passes", []):
        m, x = p.get("measurement"), _v(get(p, "latency", "speedup"))
        y, iv = _loss(get(m, "accuracy"), key)
        if m is None or x is None or y is None or p.get("name") == "auto":
            continue
        lo, hi = _bar(iv)
        kind = "pass" if p.get("status") == "kept" else "pass-rolled-back"
        pts.append(Point(cell(p.get("name", "")), kind, x, y, lo, hi,
                         f"{cell(p.get('name', ''))} ({safe(p.get('status', ''))}), select data: speedup {x:.3f}×, "
                         f"{y:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")))
    return pts


def _precisions(report: dict[str, Any], key: str) -> list[Point]:
    """With --quantize int8: the precision rows other than the original at FP32 and the model written."""
    pts = []
    for p in listed(report.get("precisions")):
        m = get(p, "measurement")
        if m is None or m == report.get("final") or (get(p, "model"), get(p, "precision")) == ("original", "fp32"):
            continue
        x, (y, iv) = _v(get(m, "latency", "speedup")), _loss(get(m, "accuracy"), key)
        if x is None or y is None:
            continue
        lo, hi = _bar(iv)
        label = f"{safe(get(p, 'model'))} {safe(get(p, 'precision')).upper()}"
        pts.append(Point(label, "precision", x, y, lo, hi, f"{label}, report data: speedup {x:.3f}×, {y:.4g}"
                         + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")))
    return pts


def chart_panels(report: dict[str, Any]) -> list[Panel]:
    """One panel per budget limit (top-1 drop when the run has labels and no budget, else relative error),
    each with the points that have both a speedup and that loss."""
    keys = list(limits_of(report)) or (["max_accuracy_drop"] if has_labels(report) else ["max_rel_error"])
    panels = []
    for key in keys:
        pts = [Point("original", "original", 1.0, 0.0, None, None, "the original model")]
        pts += _checks(report, key) + _passes(report, key)
        pts += _precisions(report, key)
        final = report.get("final")
        x = _v(get(final, "latency", "speedup"))
        y, iv = _loss(get(final, "accuracy"), key)
        if x is not None and y is not None:
            lo, hi = _bar(iv)
            pts.append(Point("final", "final", x, y, lo, hi, f"final model, report data: speedup {x:.3f}×, {y:.4g}"
                             + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")))
        if len(pts) == 1:
            continue
        limit = _v(limits_of(report).get(key))
        if key == "min_agreement" and limit is not None:
            limit = 100.0 - limit
        unit = {"max_accuracy_drop": " (points)", "min_agreement": " (points)"}.get(key, "")
        what = "top-1 disagreement" if key == "min_agreement" else limit_what(key, report)
        if key == "max_metric_drop":
            what = f"{metric_name(report) or 'metric'} drop (its own units)"
        panels.append(Panel(key, f"{what}{unit}, higher is worse", limit, tuple(pts)))
    return panels


def chart_points(report: dict[str, Any]) -> list[Point]:
    """Every point of every panel (what the page's self-check counts)."""
    return [p for panel in chart_panels(report) for p in panel.points]


# ---------------------------------------------------------------------------------------------------------
# SVG


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _extent(panel: Panel) -> tuple[float, float, float, float]:
    xs = [p.x for p in panel.points] + [1.0]
    ys = [0.0] + [v for p in panel.points for v in (p.y, p.low, p.high) if v is not None]
    if panel.limit is not None:
        ys.append(panel.limit)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    xpad, ypad = (x1 - x0) * 0.08 or 0.05, (y1 - y0) * 0.08 or max(abs(y1) * 0.1, 0.01)
    return x0 - xpad, x1 + xpad, y0 - ypad, y1 + ypad


def _e(s: Any) -> str:
    return html.escape(safe(s), quote=True)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def render_svg(panel: Panel, width: int = 760, height: int = 420) -> str:
    """One panel as inline SVG (no script, no external asset); every point a ``<g class="pt KIND">`` with a
    ``<title>`` tooltip."""
    ml, mr, mt, mb = 72, 20, 36, 52
    x0, x1, y0, y1 = _extent(panel)
    xt, yt = nice_ticks(x0, x1), nice_ticks(y0, y1)
    x0, x1, y0, y1 = min(x0, xt[0]), max(x1, xt[-1]), min(y0, yt[0]), max(y1, yt[-1])

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (v - y0) / (y1 - y0) * (height - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" class="chart" data-points="{len(panel.points)}" aria-label="{_e(panel.ylabel)} against speedup">',
           f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" class="plot"/>']
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" x2="{sx(v):.1f}" y1="{mt}" y2="{height - mb}" class="grid"/>'
                   f'<text x="{sx(v):.1f}" y="{height - mb + 16}" class="tick" text-anchor="middle">{_fmt(v)}×</text>')
    for v in yt:
        out.append(f'<line x1="{ml}" x2="{width - mr}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{sy(v) + 4:.1f}" class="tick" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<line x1="{sx(1.0):.1f}" x2="{sx(1.0):.1f}" y1="{mt}" y2="{height - mb}" class="ref"/>')
    if panel.limit is not None:
        out.append(f'<line x1="{ml}" x2="{width - mr}" y1="{sy(panel.limit):.1f}" y2="{sy(panel.limit):.1f}" '
                   f'class="budget"/><text x="{width - mr - 4}" y="{sy(panel.limit) - 5:.1f}" class="budget-label" '
                   f'text-anchor="end">budget {_fmt(panel.limit)}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2:.1f}" y="{height - 10}" class="axis" text-anchor="middle">'
               'speedup vs the original (×, higher is faster)</text>')
    cy = (mt + height - mb) / 2
    out.append(f'<text x="16" y="{cy:.1f}" class="axis" text-anchor="middle" transform="rotate(-90 16 {cy:.1f})">'
               f'{_e(panel.ylabel)}</text>')
    out += [_point(p, sx, sy) for p in panel.points]
    out.append("</svg>")
    return "".join(out)


def _point(p: Point, sx: Any, sy: Any) -> str:
    x, y = sx(p.x), sy(p.y)
    parts = [f'<g class="pt {_e(p.kind)}" data-kind="{_e(p.kind)}" data-x="{p.x:.6g}" data-y="{p.y:.6g}">'
             f'<title>{_e(p.note)}</title>']
    if p.low is not None and p.high is not None:
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(p.low):.1f}" y2="{sy(p.high):.1f}" class="bar"/>'
                     f'<line x1="{x - 4:.1f}" x2="{x + 4:.1f}" y1="{sy(p.high):.1f}" y2="{sy(p.high):.1f}" class="bar"/>'
                     f'<line x1="{x - 4:.1f}" x2="{x + 4:.1f}" y1="{sy(p.low):.1f}" y2="{sy(p.low):.1f}" class="bar"/>')
    if p.kind in ("final", "precision"):
        parts.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" class="mark"/>')
    else:
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if p.kind.startswith("check") else 5}" class="mark"/>')
    if p.kind in ("original", "final"):  # to the left, below: the steps' labels sit to the right
        parts.append(f'<text x="{x - 8:.1f}" y="{y + 16:.1f}" class="label" text-anchor="end">{_e(p.label)}</text>')
    elif not p.kind.startswith("check"):
        parts.append(f'<text x="{x + 8:.1f}" y="{y - 8:.1f}" class="label">{_e(p.label)}</text>')
    else:
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 12:.1f}" class="step">{_e(p.label)}</text>')
    parts.append("</g>")
    return "".join(parts)


LEGEND = (
    ("original", "the original model (1×, no loss)"),
    ("check", "a step auto checked on the select data (its number; speedup from its decision's timing), "
              "certified: the bar reaches its one-sided upper bound"),
    ("check-rejected", "a step auto checked, not certified (its bound is over the budget)"),
    ("pass", "a uniform pass kept, on the select data, with its 95 % interval"),
    ("pass-rolled-back", "a uniform pass rolled back"),
    ("final", "the written model on the report data (never used to decide), with its 95 % interval"),
    ("precision", "the other precisions (--quantize int8) on the report data, with their 95 % intervals"),
)
