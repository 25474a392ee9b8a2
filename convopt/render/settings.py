"""A run's settings and environment as short readable rows (not a JSON dump), the data roles as a table,
and settings flattened to dotted keys (what `convopt report A B` compares)."""
from __future__ import annotations

import json
from typing import Any

from convopt.render.figures import DASH, Cell, Column, Grid, finite, get
from convopt.text import safe


def plain(v: Any) -> str:
    """A setting's value as text: strings as they are, lists joined, None as a dash, the rest as JSON."""
    if v is None:
        return DASH
    if isinstance(v, str):
        return safe(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
        return ", ".join(safe(x) for x in v) if v else DASH
    return safe(json.dumps(v, ensure_ascii=False, sort_keys=True, default=str))


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as {'ort.threads': '1', ...}: one entry per leaf."""
    if not isinstance(d, dict):
        return {prefix: plain(d)}
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{safe(k)}" if prefix else safe(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: plain(v)})
    return out


def _row(key: str, value: Any) -> list[tuple[str, str]]:
    """One row for a scalar or a dict of scalars ('k v, k v', unset values left out); nested dicts recurse."""
    if not isinstance(value, dict):
        return [(key, plain(value))]
    if all(not isinstance(v, dict) for v in value.values()):
        parts = [f"{safe(k)} {plain(v)}" for k, v in value.items() if v is not None]
        return [(key, ", ".join(parts) or DASH)]
    rows: list[tuple[str, str]] = []
    for k, v in value.items():
        rows += _row(f"{key}.{safe(k)}", v)
    return rows


def settings_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings (the data roles have their own table) and the environment, one short row per group."""
    rows: list[tuple[str, str]] = []
    for k, v in (report.get("settings") or {}).items():
        if k != "data":
            rows += _row(safe(k), v)
    env = report.get("environment") or {}
    if env:
        rows.append(("environment", ", ".join(f"{safe(k)} {plain(v)}" for k, v in env.items() if v not in (None, ""))))
    rows.append(("report schema", safe(report.get("schema_version", ""))))
    return rows


def data_grid(report: dict[str, Any]) -> Grid:
    """Which data played which role: fit (refits), select (every decision), report (the figures reported)."""
    roles = get(report, "budget", "data") or get(report, "settings", "data") or {}
    rows = []
    for role, what in (("fit", "refits and least-squares work"), ("select", "every keep/rollback decision"),
                       ("report", "measured once, never used to decide")):
        d = roles.get(role) if isinstance(roles, dict) else None
        if isinstance(d, dict):
            rows.append((Cell(role, what), Cell(safe(d.get("samples", DASH)), sort=finite(d.get("samples"))),
                         Cell(safe(d.get("source", "")))))
    how = roles.get("how") if isinstance(roles, dict) else None
    cols = (Column("role", False), Column("samples"), Column("source", False))
    return Grid("data", cols, tuple(rows), notes=(safe(how),) if how else ())
