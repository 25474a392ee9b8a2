"""Per-layer views of a report: the layers the written model rewrote, what was skipped and why, and for auto
mode the steps it checked on the select data and every candidate it considered."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from convopt.render.figures import (
    DASH, UNKNOWN, Cell, Column, Grid, finite, fmt_count, get, listed, num, ratio, share,
)
from convopt.text import cell, safe


def _auto(report: dict[str, Any]) -> dict[str, Any]:
    a = get(report, "extra", "auto")
    return a if isinstance(a, dict) else {}


def _dense_ms(report: dict[str, Any]) -> dict[str, float]:
    """Each layer's latency alone (auto's dense timing), by layer name."""
    out: dict[str, float] = {}
    for c in listed(_auto(report).get("candidates")):
        ms = finite(get(c, "dense_ms"))
        if isinstance(c, dict) and isinstance(c.get("layer"), str) and ms is not None:
            out[c["layer"]] = ms
    return out


def _layer_error(rewrite: dict[str, Any], chosen: Any) -> tuple[Cell, str]:
    """The layer's error and what it is: 'output' (relative output error on the fit data, after auto's refit)
    or 'weights' (relative weight error)."""
    refit = get(chosen, "refit_layer_error")
    if isinstance(refit, list) and len(refit) == 2 and finite(refit[1]) is not None:
        return Cell(num(refit[1], ".3g"), sort=finite(refit[1])), "output"
    w = rewrite.get("weight_rel_error")
    return Cell(num(w, ".3g"), sort=finite(w)), "weights"


ERROR_NOTES = {"output": "error: the layer's relative output error on the fit data, after auto's refit",
               "weights": "error: the relative error of the layer's weights (not measured on data)"}


LAYER_COLUMNS = (
    Column("layer", False), Column("kernel", False, "kernel and input → output channels"),
    Column("MACs %", help="the layer's share of the original model's conv MACs"),
    Column("time %", help="the layer timed alone (auto mode) over the original model's median latency"),
    Column("form", False, "the factorized form written"), Column("ranks", False),
    Column("MACs", help="the layer's MACs after the rewrite, and the ratio to before"),
    Column("speedup", help="the layer's own speedup, timed alone (auto mode)"),
    Column("error", help="relative output error of the layer on the fit data (auto), else relative weight error"),
)


def layer_grid(report: dict[str, Any]) -> Grid:
    """One row per layer the written model rewrote (passes that were kept)."""
    total = report.get("macs_before")
    model_ms = finite(get(report.get("final"), "latency", "original", "median_ms"))
    dense, chosen = _dense_ms(report), _auto(report).get("chosen") or {}
    rows, kinds_of_error = [], set()
    for p in report.get("passes", []):
        if p.get("status") != "kept":
            continue
        for r in p.get("rewritten", []):
            node = r.get("node", "")
            ch = chosen.get(node) if isinstance(chosen, dict) else None
            ranks = ", ".join(f"{safe(k)}={v}" for k, v in (r.get("ranks") or {}).items())
            sp = finite(get(ch, "layer_speedup"))
            ms = dense.get(node) if isinstance(node, str) else None
            err, what = _layer_error(r, ch)
            kinds_of_error.add(what)
            if len(kinds_of_error) > 1:  # mixed: say which is which in the cell
                err = Cell(err.value, what, err.sort)
            rows.append((
                Cell(cell(node)),
                Cell("×".join(str(k) for k in r.get("kernel", [])), f"{r.get('channels_in')}→{r.get('channels_out')}"),
                Cell(share(r.get("macs_before"), total), sort=finite(r.get("macs_before"))),
                Cell(share(ms, model_ms) if ms is not None else DASH, sort=ms),
                Cell(safe(r.get("form", "")) or DASH), Cell(ranks or DASH),
                Cell(fmt_count(r.get("macs_after"), UNKNOWN), _r(r.get("macs_after"), r.get("macs_before")),
                     finite(r.get("macs_after"))),
                Cell(num(sp, ".2f", "×"), sort=sp),
                err,
            ))
    notes = tuple(ERROR_NOTES[k] for k in sorted(kinds_of_error)) if rows else (
        "no layer was rewritten in the written model.",)
    groups = (("rewritten layers: where", (0, 1, 2, 3)), ("rewritten layers: how", (0, 4, 5, 6, 7, 8)))
    return Grid("rewritten layers", LAYER_COLUMNS, tuple(rows), notes=notes, groups=groups).without_empty_columns()


def _r(after: Any, before: Any) -> str:
    r = ratio(after, before)
    return "" if r == UNKNOWN else r


def skip_groups(report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(pass, reason, layers) for every reason a pass left layers alone, most frequent first."""
    out = []
    for p in report.get("passes", []):
        by_reason: dict[str, list[str]] = defaultdict(list)
        for s in p.get("skipped", []):
            by_reason[safe(s.get("reason", ""))].append(cell(s.get("node", "")))
        for reason, nodes in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            out.append((cell(p.get("name", "")), reason, nodes))
    return out


def skip_lines(report: dict[str, Any]) -> list[str]:
    """One line per (pass, reason): 'auto: 12 layers left alone: reason'."""
    return [f"{p}: {len(nodes)} layer{'s' if len(nodes) != 1 else ''} left alone: {reason}"
            for p, reason, nodes in skip_groups(report)]


def skip_grid(report: dict[str, Any], max_names: int | None = None) -> Grid:
    rows = []
    for p, reason, nodes in skip_groups(report):
        shown = nodes if max_names is None else nodes[:max_names]
        more = len(nodes) - len(shown)
        rows.append((Cell(p), Cell(reason), Cell(str(len(nodes)), sort=len(nodes)),
                     Cell(", ".join(shown) + (f" and {more} more" if more else ""))))
    cols = (Column("pass", False), Column("reason", False), Column("layers"), Column("names", False))
    return Grid("skipped", cols, tuple(rows))


def check_grid(report: dict[str, Any]) -> Grid:
    """Every step of auto's greedy sequence tested on the select data: point estimates, the bound the decision
    used, certified or not, and the step's speedup."""
    rows, kinds = [], []
    for c in listed(_auto(report).get("checks")):
        if not isinstance(c, dict):
            continue
        bound = c.get("bound") or {}
        bounds = ", ".join(f"{num(v, '.3g')}" for v in bound.values()) if isinstance(bound, dict) else ""
        rows.append((Cell(str(c.get("step")), sort=finite(c.get("step"))),
                     Cell(str(c.get("layers")), sort=finite(c.get("layers"))),
                     Cell(num(c.get("speedup"), ".3f", "×"), sort=finite(c.get("speedup"))),
                     Cell(num(c.get("top1_drop"), "+.2f"), sort=finite(c.get("top1_drop"))),
                     Cell(num(c.get("rel_l2_error"), ".3g"), sort=finite(c.get("rel_l2_error"))),
                     Cell(bounds or DASH), Cell("yes" if c.get("ok") else "no"),
                     Cell(safe(c.get("reason") or ""))))
        kinds.append("kept" if c.get("ok") else "rolled_back")
    cols = (Column("step"), Column("layers"), Column("speedup"), Column("top-1 drop"), Column("rel. error"),
            Column("upper bound", help="the one-sided upper bound the decision compared with the budget"),
            Column("certified", False), Column("reason", False))
    return Grid("steps auto checked (select data)", cols, tuple(rows), tuple(kinds))


CANDIDATE_COLUMNS = (
    Column("layer", False), Column("candidate", False), Column("form", False), Column("MACs"),
    Column("MACs ratio"), Column("weight err"), Column("output err", help="on the fit data"),
    Column("dense ms", help="the layer alone, dense"), Column("ms", help="the layer alone, rewritten"),
    Column("layer speedup"), Column("cost", help="predicted cost against the budget"), Column("status", False),
)


def candidate_grid(report: dict[str, Any]) -> Grid:
    """Every candidate auto built, one row each."""
    rows = []
    for c in listed(_auto(report).get("candidates")):
        if not isinstance(c, dict):
            continue
        rows.append((Cell(cell(c.get("layer", ""))), Cell(safe(c.get("candidate", ""))), Cell(safe(c.get("form", ""))),
                     Cell(fmt_count(c.get("macs_after"), UNKNOWN), sort=finite(c.get("macs_after"))),
                     Cell(ratio(c.get("macs_after"), c.get("macs_before")),
                          sort=_quot(c.get("macs_after"), c.get("macs_before"))),
                     Cell(num(c.get("weight_rel_error"), ".3g"), sort=finite(c.get("weight_rel_error"))),
                     Cell(num(c.get("output_error"), ".3g"), sort=finite(c.get("output_error"))),
                     Cell(num(c.get("dense_ms"), ".3g"), sort=finite(c.get("dense_ms"))),
                     Cell(num(c.get("ms"), ".3g"), sort=finite(c.get("ms"))),
                     Cell(num(c.get("layer_speedup"), ".2f", "×"), sort=finite(c.get("layer_speedup"))),
                     Cell(num(c.get("cost"), ".3g"), sort=finite(c.get("cost"))),
                     Cell(safe(c.get("status", "")))))
    return Grid("candidates", CANDIDATE_COLUMNS, tuple(rows))


def _quot(a: Any, b: Any) -> float | None:
    x, y = finite(a), finite(b)
    return None if x is None or y is None or y <= 0 else x / y
