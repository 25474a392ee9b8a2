"""Report records: frozen dataclasses that serialize to the JSON report CI gates on.

Every number in a report was measured or computed in the run that wrote it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class NodeRewrite:
    """One Conv node replaced by a chain of nodes."""

    node: str
    kernel: tuple[int, ...]
    channels_in: int
    channels_out: int
    ranks: dict[str, int]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    weight_rel_error: float
    new_nodes: tuple[str, ...]
    form: str = ""


@dataclass(frozen=True)
class NodeSkip:
    """One Conv node a pass refused, and why."""

    node: str
    reason: str


@dataclass(frozen=True)
class PassReport:
    """What one pass did to the model, and (when measured) what that did to accuracy and latency."""

    name: str
    status: str  # "kept" | "rolled_back" | "no_change"
    rewritten: tuple[NodeRewrite, ...]
    skipped: tuple[NodeSkip, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float
    rollback_reason: str | None = None
    measurement: dict[str, Any] | None = None


@dataclass(frozen=True)
class Report:
    """The whole run: settings, baseline measurement, one PassReport per pass, and the final result."""

    model: str
    output: str | None
    passes: tuple[PassReport, ...]
    settings: dict[str, Any]
    environment: dict[str, Any]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    baseline: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    schema_version: str = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def _clean(obj: Any) -> Any:
    """Make a value JSON-safe: tuples to lists, non-finite floats to None, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
