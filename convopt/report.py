"""Report records: frozen dataclasses, typed all the way to the CI gate, serialized to the JSON report once.

Every number in a report was measured or computed in the run that wrote it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

SCHEMA_VERSION = "2.0"


class Serializable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NodeRewrite:
    """One Conv node replaced by a chain of nodes (MACs None when the layer's size is unknown)."""

    node: str
    kernel: tuple[int, ...]
    channels_in: int
    channels_out: int
    ranks: dict[str, int]
    macs_before: int | None
    macs_after: int | None
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
    """What one step did to the model, and (when measured) what that did to accuracy and latency."""

    name: str
    status: str  # "kept" | "rolled_back" | "no_change"
    rewritten: tuple[NodeRewrite, ...]
    skipped: tuple[NodeSkip, ...]
    macs_before: int | None
    macs_after: int | None
    params_before: int
    params_after: int
    seconds: float
    rollback_reason: str | None = None
    measurement: Serializable | None = None  # the decision's measurement, on the select data
    latency: Serializable | None = None  # from the report's one interleaved timing run (one baseline)


@dataclass(frozen=True)
class BudgetReport:
    """The accuracy claim of the written model: its ``limits`` and ``confidence``; ``certified`` when every
    limited loss's upper bound on the decision data (``bound``) is within them (the original is); how many
    samples decided and how many the report was measured on; ``message``: why less could be certified."""

    limits: dict[str, Any]
    confidence: float
    certified: bool
    decision_samples: int
    report_samples: int
    bound: dict[str, float] | None
    message: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class PrecisionRow:
    """One of the four models of a quantized run (original / optimized × FP32 / INT8), measured on the report
    data and timed in the report's one interleaved run."""

    model: str  # "original" | "optimized"
    precision: str  # "fp32" | "int8"
    measurement: Serializable


@dataclass(frozen=True)
class GateResult:
    """The CI gate: the speedup the final model had to reach, and whether it did."""

    fail_under_speedup: float | None
    passed: bool
    reason: str | None


@dataclass(frozen=True)
class Report:
    """The whole run: settings, baseline measurement, one PassReport per step, and the final result."""

    model: str
    output: str | None
    passes: tuple[PassReport, ...]
    settings: dict[str, Any]
    environment: dict[str, Any]
    macs_before: int | None
    macs_after: int | None
    params_before: int
    params_after: int
    baseline: Serializable | None = None
    final: Serializable | None = None
    budget: BudgetReport | None = None
    precisions: tuple[PrecisionRow, ...] = ()
    gate: GateResult | None = None
    schema_version: str = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: records through their ``to_dict`` (or their fields), tuples to lists, non-finite
    floats to None, numpy scalars to Python."""
    if hasattr(obj, "to_dict") and not isinstance(obj, type):
        obj = obj.to_dict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
