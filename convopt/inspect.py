"""inspect: one row per Conv (geometry, MACs, params) and, for each pass, "applies" or the reason not."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx

from convopt.graph import ConvSkip, ConvSpec, read_convs
from convopt.passes import PASSES
from convopt.core.driver import conv_shapes


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


@dataclass(frozen=True)
class InspectResult:
    rows: tuple[ConvRow, ...]
    total_macs: int
    total_params: int
    applicable: dict[str, int]  # pass name → number of convs it applies to

    def to_dict(self) -> dict[str, object]:
        return {
            "convs": [asdict(r) for r in self.rows],
            "totals": {"convs": len(self.rows), "macs": self.total_macs, "params": self.total_params,
                       "applicable": self.applicable},
        }


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
        rows.append(
            ConvRow(
                name=item.name,
                op="Conv",
                channels_in=item.in_channels,
                channels_out=item.out_channels,
                kernel=tuple(item.kernel),
                stride=tuple(item.strides),
                dilation=tuple(item.dilations),
                groups=item.group,
                output_size=item.out_hw,
                macs=item.macs,
                params=item.params,
                passes=verdicts,
            )
        )
    return InspectResult(
        rows=tuple(rows),
        total_macs=sum(r.macs or 0 for r in rows),
        total_params=sum(r.params or 0 for r in rows),
        applicable={n: sum(r.passes[n] == "applies" for r in rows) for n in passes},
    )
