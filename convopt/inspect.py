"""inspect: the model's inputs and opset, which dimensions are dynamic, and one row per Conv (geometry, MACs
and their share of the model's conv MACs, params, each pass's verdict: "applies" or the reason not), the share
of MACs some pass can rewrite and, when asked, each Conv's measured share of run time (convopt.measure.profile).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import onnx

from convopt.core.driver import conv_shapes
from convopt.graph import ConvSkip, DynamicDim, declared_dims, dynamic_dims, graph_inputs, read_convs
from convopt.measure.ort import OrtSettings
from convopt.passes import PASSES


@dataclass(frozen=True)
class ConvRow:
    name: str
    op: str
    channels_in: int | None
    channels_out: int | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    dilation: tuple[int, ...] | None
    groups: int | None
    output_size: tuple[int, ...] | None
    macs: int | None
    params: int | None
    passes: dict[str, str]  # pass name → "applies" or the reason it does not
    macs_share: float | None = None  # of the model's conv MACs; None when unknown
    time_ms: float | None = None  # kernel ms per run (--latency)
    time_share: float | None = None  # of all operators' kernel time (--latency)

    @property
    def rewritable(self) -> bool:
        """Whether some pass can rewrite this Conv."""
        return any(v == "applies" for v in self.passes.values())


@dataclass(frozen=True)
class InputInfo:
    """A real graph input: its element type, declared dims ('?' unknown, names for symbolic) and the shape
    inspect used (None: unknown)."""

    name: str
    dtype: str
    declared: tuple[int | str, ...] | None
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ModelInfo:
    """The header: opset, IR version, producer, the inputs, and every dynamic dimension not fixed by an
    ``--input-shape`` hint (with the option that fixes it)."""

    opset: int
    ir_version: int
    producer: str
    inputs: tuple[InputInfo, ...]
    dynamic: tuple[DynamicDim, ...]


@dataclass(frozen=True)
class InspectResult:
    rows: tuple[ConvRow, ...]
    total_macs: int | None  # None when some Conv's size is unknown
    total_params: int
    applicable: dict[str, int]  # pass name → number of convs it applies to
    model: ModelInfo | None = None
    latency: dict[str, float | int] | None = None  # total_ms, conv_ms, runs, threads (--latency)

    @property
    def unknown_macs(self) -> list[ConvRow]:
        """Convs convopt can read whose MACs are unknown (a dynamic spatial size)."""
        return [r for r in self.rows if r.macs is None and r.params is not None]

    @property
    def rewritable_share(self) -> float | None:
        """The share of the conv MACs that some pass can rewrite (None when MACs are unknown)."""
        if not self.total_macs:
            return None
        return sum(r.macs or 0 for r in self.rows if r.rewritable) / self.total_macs

    def to_dict(self) -> dict[str, object]:
        convs = [{**asdict(r), "rewritable": r.rewritable} for r in self.rows]
        totals: dict[str, object] = {"convs": len(self.rows), "macs": self.total_macs, "params": self.total_params,
                                     "applicable": self.applicable, "rewritable": sum(r.rewritable for r in self.rows),
                                     "rewritable_macs_share": self.rewritable_share}
        out: dict[str, object] = {"convs": convs, "totals": totals}
        if self.model is not None:
            out["model"] = asdict(self.model)
        if self.latency is not None:
            out["latency"] = self.latency
        return out


def model_info(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ModelInfo:
    """The inspect header; dims given by ``input_shapes`` are not reported as dynamic."""
    from convopt.graph import graph_input_shapes, input_dtype

    hints = input_shapes or {}
    shapes = graph_input_shapes(model, hints)
    inputs = []
    for vi in graph_inputs(model):
        dims = declared_dims(vi)
        try:
            dtype = input_dtype(vi).name
        except Exception:  # noqa: BLE001  (a non-tensor input: inspect still shows it)
            dtype = "?"
        inputs.append(InputInfo(vi.name, dtype, None if dims is None else tuple("?" if d is None else d for d in dims),
                                shapes.get(vi.name)))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    dynamic = tuple(d for d in dynamic_dims(model) if d.input not in hints)
    return ModelInfo(int(opset), int(model.ir_version), model.producer_name, tuple(inputs), dynamic)


def inspect_model(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> InspectResult:
    shapes = conv_shapes(model, input_shapes)
    rows: list[ConvRow] = []
    passes = {name: cls() for name, cls in PASSES.items()}
    for item in read_convs(model, shapes):
        if isinstance(item, ConvSkip):
            rows.append(ConvRow(item.name, item.node.op_type, None, None, None, None, None, None, None, None, None,
                                {n: item.reason for n in passes}))
            continue
        verdicts = {n: (p.applies(item) or "applies") for n, p in passes.items()}
        rows.append(ConvRow(name=item.name, op="Conv", channels_in=item.in_channels, channels_out=item.out_channels,
                            kernel=tuple(item.kernel), stride=tuple(item.strides), dilation=tuple(item.dilations),
                            groups=item.group, output_size=item.out_hw, macs=item.macs, params=item.params,
                            passes=verdicts))
    readable = [r for r in rows if r.params is not None]
    total = None if any(r.macs is None for r in readable) else sum(r.macs or 0 for r in readable)
    if total:
        rows = [replace(r, macs_share=None if r.macs is None else r.macs / total) for r in rows]
    return InspectResult(
        rows=tuple(rows), total_macs=total, total_params=sum(r.params or 0 for r in rows),
        applicable={n: sum(r.passes[n] == "applies" for r in rows) for n in passes},
        model=model_info(model, input_shapes),
    )


def with_latency(result: InspectResult, model: onnx.ModelProto, settings: OrtSettings,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, seconds: float = 2.0) -> InspectResult:
    """``result`` with each Conv's measured kernel time and share of the model's (ORT's profiler, about
    ``seconds`` of runs at ``settings.threads``)."""
    from convopt.measure.profile import layer_times

    convs = {c.index: c.name for c in read_convs(model, conv_shapes(model, input_shapes))}
    t = layer_times(model, convs, settings, input_shapes, seconds)
    rows = tuple(replace(r, time_ms=t.per_conv.get(r.name), time_share=t.share(r.name)) for r in result.rows)
    latency = {"total_ms": t.total_ms, "conv_ms": sum(t.per_conv.values()), "runs": t.runs, "threads": t.threads}
    return replace(result, rows=rows, latency=latency)
