"""What a run did, step by step: the original, each pass (or auto's step), the final model; the run's summary
and its verdict (the budget's claim, and whether the report data bear it out).

Roles, as the report records them (convopt.report): the original and final rows are measured once on the
**report** data, never used to decide; a pass row's accuracy is its decision's, on the **select** data. Every
speedup and latency in the grid comes from the report's one interleaved timing run (one baseline), never
from a decision's own timing.
"""
from __future__ import annotations

from typing import Any

from convopt.render.figures import (
    DASH, UNKNOWN, Cell, Column, Grid, finite, fmt_count, get, interval, num, ratio,
)
from convopt.text import cell, safe

STATUS = {"kept": "kept", "rolled_back": "rolled back", "no_change": "no change"}


def _measurements(report: dict[str, Any]) -> list[Any]:
    return [report.get("baseline"), report.get("final")] + [p.get("measurement") for p in report.get("passes", [])]


def has_labels(report: dict[str, Any]) -> bool:
    return any(get(m, "accuracy", "labelled_top1") is not None for m in _measurements(report))


def metric_name(report: dict[str, Any]) -> str | None:
    names = [get(m, "accuracy", "metric") for m in _measurements(report)]
    return next((cell(n) for n in names if isinstance(n, str) and n), None)


def _latency_cells(lat: Any) -> list[Cell]:
    sp, med = get(lat, "speedup"), get(lat, "candidate", "median_ms")
    iqr = get(lat, "candidate", "iqr_ms")
    return [Cell(num(sp, ".2f", "×"), sort=finite(sp)),
            Cell(num(med, ".3g"), "" if finite(iqr) is None else f"IQR {iqr:.2g}", finite(med))]


def _accuracy_cells(m: Any, labelled: bool, metric: str | None, reference: bool) -> list[Cell]:
    """top-1 %, top-1 drop [interval], agreement %, rel. error [interval], metric drop [interval]; the original
    (``reference``) has nothing to differ from, so only its own top-1 (and metric score) are shown."""
    acc = get(m, "accuracy") or {}
    cells = []
    if labelled:
        top1, drop = acc.get("labelled_top1"), acc.get("top1_drop")
        cells.append(Cell(num(top1, ".2f"), sort=finite(top1)))
        cells.append(Cell(DASH) if reference else
                     Cell(num(drop, "+.2f"), interval(acc.get("top1_drop_interval"), "+.2f"), finite(drop)))
    agree, rel = acc.get("top1_agreement"), acc.get("rel_l2_error")
    cells.append(Cell(DASH) if reference else Cell(num(agree, ".2f"), sort=finite(agree)))
    cells.append(Cell(DASH) if reference else
                 Cell(num(rel, ".3g"), interval(acc.get("rel_l2_error_interval"), ".3g"), finite(rel)))
    if metric is not None:
        score, drop = acc.get("metric_score"), acc.get("metric_drop")
        cells.append(Cell(num(score, ".4g"), sort=finite(score)) if reference else
                     Cell(num(drop, "+.4g"), interval(acc.get("metric_drop_interval"), "+.4g"), finite(drop)))
    return cells


def _columns(labelled: bool, metric: str | None) -> tuple[Column, ...]:
    cols = [Column("step", False, "the original, each pass (or auto's chosen step) and its status, the final model"),
            Column("data", False, "report: measured once, never used to decide; select: the decision's data"),
            Column("MACs", help="multiply-accumulates per sample, and the ratio to the original"),
            Column("speedup", help="median latency of the original / this model, one interleaved timing run"),
            Column("ms", help="median latency in milliseconds and its interquartile range")]
    if labelled:
        cols += [Column("top-1 %", help="labelled top-1 accuracy"),
                 Column("top-1 drop", help="points of labelled top-1 lost against the original, 95 % interval")]
    cols += [Column("agree %", help="% of samples whose top-1 class matches the original's"),
             Column("rel. error", help="relative L2 error of the outputs against the original, 95 % interval")]
    if metric is not None:
        cols.append(Column(f"{metric} drop", help=f"drop of the mean {metric} score (original row: the score)"))
    return tuple(cols)


def _data_cell(m: Any) -> Cell:
    if not isinstance(m, dict):
        return Cell(DASH)
    n = m.get("samples")
    return Cell(safe(m.get("role") or "data"), f"n={n}" if n else "")


def step_grid(report: dict[str, Any]) -> Grid:
    """The steps table: original (report data), one row per pass (decision on the select data), final."""
    labelled, metric = has_labels(report), metric_name(report)
    mb = report.get("macs_before")
    base, final = report.get("baseline"), report.get("final")
    base_lat = _baseline_latency(report)
    rows = [(Cell("original"), _data_cell(base), Cell(fmt_count(mb, UNKNOWN), "1.00×" if finite(mb) else "",
                                                       finite(mb)),
             *_latency_cells(base_lat), *_accuracy_cells(base, labelled, metric, True))]
    kinds = ["report"]
    for p in report.get("passes", []):
        m = p.get("measurement")
        if p.get("status") == "no_change" and m is None and not p.get("rewritten"):
            continue  # said in a note: a row of dashes tells nothing
        rows.append((Cell(cell(p.get("name", "")), STATUS.get(p.get("status"), safe(p.get("status", "")))),
                     _data_cell(m),
                     Cell(fmt_count(p.get("macs_after"), UNKNOWN), _ratio_or_blank(p.get("macs_after"), mb),
                          finite(p.get("macs_after"))),
                     *_latency_cells(p.get("latency")), *_accuracy_cells(m, labelled, metric, m is None)))
        kinds.append(safe(p.get("status", "")))
    ma = report.get("macs_after")
    rows.append((Cell("final"), _data_cell(final), Cell(fmt_count(ma, UNKNOWN), _ratio_or_blank(ma, mb), finite(ma)),
                 *_latency_cells(get(final, "latency")), *_accuracy_cells(final, labelled, metric, final is None)))
    kinds.append("report")
    cols = _columns(labelled, metric)
    groups = (("steps: size and speed", (0, 1, 2, 3, 4)), ("steps: accuracy", (0, 1, *range(5, len(cols)))))
    return Grid("steps", cols, tuple(rows), tuple(kinds), tuple(step_notes(report)), groups).without_empty_columns(2)


def precision_grid(report: dict[str, Any]) -> Grid:
    """With --quantize int8: the original and the optimized model at FP32 and INT8, all on the report data and
    timed in one run (speedups against the original at FP32); the row of the model written is marked."""
    labelled, metric = has_labels(report), metric_name(report)
    rows, kinds = [], []
    for p in report.get("precisions") or []:
        m = p.get("measurement")
        written = m == report.get("final")
        macs = report.get("macs_before") if p.get("model") == "original" else report.get("macs_after")
        rows.append((Cell(f"{safe(p.get('model', ''))} {safe(p.get('precision', '')).upper()}",
                          "written" if written else ""),
                     _data_cell(m), Cell(fmt_count(macs, UNKNOWN), sort=finite(macs)),
                     *_latency_cells(get(m, "latency")),
                     *_accuracy_cells(m, labelled, metric, p.get("model") == "original"
                                      and p.get("precision") == "fp32")))
        kinds.append("report" if written else "")
    cols = (Column("model", False), *_columns(labelled, metric)[1:])
    notes = ("each measured on the report data and timed in one interleaved run; speedup against the original "
             "at FP32.",)
    groups = (("precisions: size and speed", (0, 1, 2, 3, 4)), ("precisions: accuracy", (0, 1, *range(5, len(cols)))))
    return Grid("precisions", cols, tuple(rows), tuple(kinds), notes, groups).without_empty_columns(2)


def _ratio_or_blank(after: Any, before: Any) -> str:
    r = ratio(after, before)
    return "" if r == UNKNOWN else r


def _baseline_latency(report: dict[str, Any]) -> dict[str, Any] | None:
    """The original's latency in the report's timing run (the final row's baseline), as a comparison of the
    original with itself."""
    orig = get(report.get("final"), "latency", "original") or get(report.get("baseline"), "latency", "candidate")
    if not isinstance(orig, dict):
        return None
    return {"candidate": orig, "original": orig, "speedup": 1.0}


def step_notes(report: dict[str, Any]) -> list[str]:
    """How to read the steps table (which data each row is on, where the timings come from), and why each
    rolled-back pass was rolled back."""
    notes = []
    rep, sel = get(report, "budget", "report_samples"), get(report, "budget", "decision_samples")
    if report.get("final") is not None:
        notes.append(f"original and final: measured once on the report data ({rep or '?'} samples), never used "
                     f"to decide; pass rows: the decision, on the select data ({sel or '?'} samples).")
        lat = get(report.get("final"), "latency", "original")
        if isinstance(lat, dict):
            notes.append(f"speedup and ms: one interleaved timing run of every model against one baseline (median "
                         f"of {lat.get('repeats')} runs at batch {lat.get('batch')}); intervals are 95%.")
    unchanged = [cell(p.get("name", "")) for p in report.get("passes", [])
                 if p.get("status") == "no_change" and p.get("measurement") is None and not p.get("rewritten")]
    if unchanged:
        notes.append(f"no change: {', '.join(unchanged)}.")
    for p in report.get("passes", []):
        if p.get("rollback_reason"):
            notes.append(f"{cell(p.get('name', ''))} rolled back: {safe(p['rollback_reason'])}")
    return notes


# ---------------------------------------------------------------------------------------------------------
# Summary and verdict


def summary(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for the head of every view."""
    items = [("model", safe(report.get("model", ""))), ("output", safe(report.get("output") or DASH))]
    data = get(report.get("baseline"), "data")
    if data:
        items.append(("data", safe(data)))  # the source, its sample count and the report split
    how = get(report, "budget", "data", "how") or get(report, "settings", "data", "how")
    if how:
        items.append(("split", safe(how)))
    mb, ma = report.get("macs_before"), report.get("macs_after")
    items.append(("MACs", f"{fmt_count(mb, UNKNOWN)} → {fmt_count(ma, UNKNOWN)} ({ratio(ma, mb)})"))
    pb, pa = report.get("params_before"), report.get("params_after")
    items.append(("params", f"{fmt_count(pb)} → {fmt_count(pa)} ({ratio(pa, pb)})"))
    sp = get(report.get("final"), "latency", "speedup")
    if finite(sp) is not None:
        items.append(("speedup", num(sp, ".2f", "×") + " (report timing run)"))
    date = get(report, "environment", "date")
    items.append(("date", safe(date) if date else "not recorded"))
    return items


def warnings_of(report: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for m in _measurements(report):
        w = get(m, "warning")
        if w and safe(w) not in seen:
            seen.append(safe(w))
    return seen


LIMITS = {  # limit → (what, unit, comparison, key in accuracy, interval key, format)
    "max_accuracy_drop": ("top-1 drop", " points", "≤", "top1_drop", "top1_drop_interval", "+.2f"),
    "min_agreement": ("top-1 agreement", " %", "≥", "top1_agreement", None, ".2f"),
    "max_rel_error": ("relative L2 error", "", "≤", "rel_l2_error", "rel_l2_error_interval", ".3g"),
    "max_metric_drop": ("metric drop", "", "≤", "metric_drop", "metric_drop_interval", "+.4g"),
}


def limit_what(name: str, report: dict[str, Any]) -> str:
    """What a limit bounds, in words: 'top-1 drop' ('top-1 disagreement' without labels), '<metric> drop'."""
    if name == "max_accuracy_drop" and not has_labels(report):
        return "top-1 disagreement"
    if name == "max_metric_drop":
        return f"{metric_name(report) or 'metric'} drop"
    return LIMITS[name][0]


def limits_of(report: dict[str, Any]) -> dict[str, float]:
    lim = get(report, "budget", "limits") or {}
    return {k: float(v) for k, v in lim.items() if k in LIMITS and finite(v) is not None}


def budget_claim(report: dict[str, Any]) -> str:
    """'top-1 drop ≤ 2 points at 95 % confidence (default)'."""
    parts = [f"{limit_what(k, report)} {LIMITS[k][2]} {v:g}{LIMITS[k][1]}" for k, v in limits_of(report).items()]
    conf = finite(get(report, "budget", "confidence"))
    src = get(report, "budget", "limits", "source")
    return (" and ".join(parts) + (f" at {conf:.0%} confidence" if conf else "")
            + (f" ({safe(src)})" if src and src != "given" else ""))


def _met(report: dict[str, Any]) -> tuple[bool | None, list[str]]:
    """Whether the final model's report-data point estimates are within every limit, and each figure."""
    acc = get(report.get("final"), "accuracy") or {}
    ok, said = True, []
    for name, limit in limits_of(report).items():
        _, unit, cmp, key, ikey, spec = LIMITS[name]
        v = finite(acc.get(key))
        if v is None:
            return None, []
        ok = ok and (v >= limit if cmp == "≥" else v <= limit + 1e-9)
        iv = interval(acc.get(ikey), spec) if ikey else ""
        said.append(f"{limit_what(name, report)} {v:{spec}}{unit}" + (f" {iv}" if iv else ""))
    return ok, said


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The run's verdict in a few lines: the claim and whether the decision data certified it (with the bound
    and the samples), whether the report data bear it out, why not, and the CI gate."""
    b = report.get("budget")
    if not isinstance(b, dict):
        lines = ["verdict: nothing was measured (--no-eval); no accuracy claim is made."]
    elif not limits_of(report):
        lines = [f"verdict: no accuracy claim ({safe(b.get('message') or 'no budget: rewrites were kept unchecked')})"]
    else:
        bound = b.get("bound") or {}
        bounds = ", ".join(f"{limit_what(k, report)} ≤ {num(v, '.3g')}" for k, v in bound.items() if k in LIMITS)
        cert = "certified" if b.get("certified") else "NOT certified"
        lines = [f"verdict: budget {budget_claim(report)}: {cert} on {b.get('decision_samples')} select samples"
                 + (f" (upper bound: {bounds})" if bounds else "")]
        met, said = _met(report)
        if met is not None:
            lines.append(f"report data ({b.get('report_samples')} samples, never used to decide): "
                         f"{'within' if met else 'OVER'} the budget: " + "; ".join(said))
        if b.get("message"):
            lines.append(f"{'note' if b.get('certified') else 'why'}: {safe(b['message'])}")
    gate = report.get("gate")
    if isinstance(gate, dict) and gate.get("fail_under_speedup") is not None:
        lines.append(f"CI gate: speedup ≥ {gate['fail_under_speedup']}: "
                     + ("passed" if gate.get("passed") else f"FAILED ({safe(gate.get('reason') or '')})"))
    return lines
