"""Conv geometry arithmetic: explicit pads from auto_pad, and output sizes (the ONNX Conv formulas)."""
from __future__ import annotations

import math

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def resolve_pads(
    auto_pad: str,
    pads: list[int] | None,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    in_hw: tuple[int, int] | None,
) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """Explicit (top, left, bottom, right) pads for a 2-D conv, or (None, reason)."""
    if auto_pad in ("", "NOTSET"):
        p = list(pads) if pads else [0, 0, 0, 0]
        return (p[0], p[1], p[2], p[3]), None
    if auto_pad == "VALID":
        return (0, 0, 0, 0), None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = []
        for ax in range(2):
            k_eff = (kernel[ax] - 1) * dilations[ax] + 1
            if strides[ax] == 1:
                totals.append(k_eff - 1)
            elif in_hw is None:
                return None, f"auto_pad {auto_pad} with stride {strides[ax]} needs a known input size"
            else:
                size = in_hw[ax]
                out = -(-size // strides[ax])
                totals.append(max((out - 1) * strides[ax] + k_eff - size, 0))
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in totals]
        else:
            begin = [t - t // 2 for t in totals]
        end = [t - b for t, b in zip(totals, begin)]
        return (begin[0], begin[1], end[0], end[1]), None
    return None, f"unknown auto_pad {auto_pad!r}"


def conv_out_size(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    """Output length of one spatial axis: floor((size + p0 + p1 - ((k - 1)·d + 1)) / s) + 1."""
    return (size + p0 + p1 - ((k - 1) * d + 1)) // s + 1


def align_up(value: int, align: int) -> int:
    return int(math.ceil(value / align) * align) if align > 1 else int(value)
