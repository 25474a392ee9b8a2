"""Two runs side by side (`convopt report A.json B.json`): what each run was, the settings that differ, each
budget's claim, the final figures with their intervals, and each layer's choice."""
from __future__ import annotations

from typing import Any

from convopt.render.figures import DASH, Cell, Column, Grid, get, num
from convopt.render.settings import flatten
from convopt.render.steps import budget_claim, limit_what, step_grid
from convopt.text import cell, safe

VOLATILE = ("environment.date",)


def _grid(title: str, rows: list[tuple[str, str, str]], numeric: bool = False, notes: tuple[str, ...] = ()) -> Grid:
    cols = (Column("", False), Column("A", numeric), Column("B", numeric))
    return Grid(title, cols, tuple((Cell(k), Cell(a), Cell(b)) for k, a, b in rows), notes=notes)


def runs_grid(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> Grid:
    rows = [("report", safe(names[0]), safe(names[1]))]
    for label, path in (("model", ("model",)), ("output", ("output",)), ("date", ("environment", "date")),
                        ("strategy", ("settings", "strategy"))):
        rows.append((label, safe(get(a, *path) or DASH), safe(get(b, *path) or DASH)))
    return _grid("runs", rows)


def settings_diff(a: dict[str, Any], b: dict[str, Any]) -> Grid:
    """Every setting (and environment entry) whose value differs between the runs."""
    fa = {**flatten(a.get("settings") or {}), **flatten(a.get("environment") or {}, "environment")}
    fb = {**flatten(b.get("settings") or {}), **flatten(b.get("environment") or {}, "environment")}
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k not in VOLATILE and fa.get(k) != fb.get(k)]
    rows = [(k, fa.get(k, "(not set)"), fb.get(k, "(not set)")) for k in keys]
    return _grid("settings that differ", rows, notes=() if rows else ("the settings are the same.",))


def _budget(r: dict[str, Any]) -> dict[str, str]:
    bud = r.get("budget")
    if not isinstance(bud, dict):
        return {"claim": "no budget (nothing measured)"}
    bound = bud.get("bound") or {}
    return {"claim": budget_claim(r) or "no budget",
            "certified": "yes" if bud.get("certified") else "no",
            "upper bound": ", ".join(f"{limit_what(k, r)} {num(v, '.3g')}" for k, v in bound.items()) or DASH,
            "decision samples": str(bud.get("decision_samples")), "report samples": str(bud.get("report_samples")),
            "message": safe(bud.get("message") or DASH)}


def budget_grid(a: dict[str, Any], b: dict[str, Any]) -> Grid:
    ba, bb = _budget(a), _budget(b)
    return _grid("budget", [(k, ba.get(k, DASH), bb.get(k, DASH)) for k in dict.fromkeys([*ba, *bb])])


def final_grid(a: dict[str, Any], b: dict[str, Any]) -> Grid:
    """The final model's figures (report data), with intervals: one row per figure."""
    ga, gb = step_grid(a), step_grid(b)
    fa = {c.header: v.joined() for c, v in zip(ga.columns, ga.rows[-1])}
    fb = {c.header: v.joined() for c, v in zip(gb.columns, gb.rows[-1])}
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k != "step"]
    return _grid("final model (report data)", [(k, fa.get(k, DASH), fb.get(k, DASH)) for k in keys], numeric=True)


def _choices(r: dict[str, Any]) -> dict[str, str]:
    out = {}
    for p in r.get("passes", []):
        if p.get("status") != "kept":
            continue
        for rw in p.get("rewritten", []):
            ranks = ", ".join(f"{safe(k)}={v}" for k, v in (rw.get("ranks") or {}).items())
            out[cell(rw.get("node", ""))] = f"{safe(rw.get('form', ''))} {ranks}".strip()
    return out


def layer_choices(a: dict[str, Any], b: dict[str, Any]) -> Grid:
    ca, cb = _choices(a), _choices(b)
    layers = list(dict.fromkeys([*ca, *cb]))
    rows = [(n, ca.get(n, "dense"), cb.get(n, "dense")) for n in layers]
    same = sum(ca.get(n) == cb.get(n) for n in layers)
    return _grid("layer choices", rows, notes=(f"{len(layers)} layers rewritten in either run, {same} the same way.",))


def comparison(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> list[Grid]:
    """The grids of `convopt report A B`, in order."""
    return [runs_grid(a, b, names), settings_diff(a, b), budget_grid(a, b), final_grid(a, b), layer_choices(a, b)]
