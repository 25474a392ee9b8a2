"""MobileNet v1 (Howard et al. 2017) depthwise separable block: 3×3 depthwise (group = C_in) → BN → ReLU →
1×1 pointwise → BN → ReLU. Weights k·k·M + M·N instead of k·k·M·N: 3·3·3 + 3·256 = 795 against 6,912 dense
for 3 channels in, 256 out. ``separable=False`` builds the dense 3×3 conv → BN → ReLU it replaces.
"""
from __future__ import annotations

import onnx

from convopt.models._builder import GraphBuilder


def mobilenet_v1_block(
    *, channels_in: int = 32, channels_out: int = 64, input_size: int = 112, stride: int = 1,
    separable: bool = True, batch: int = 1, seed: int = 0, bias: bool = True,
) -> onnx.ModelProto:
    """MobileNet v1's first separable block (32→64 at 112×112): depthwise 3×3 + BN + ReLU, pointwise 1×1 + BN + ReLU."""
    b = GraphBuilder("mobilenet_v1_block" if separable else "mobilenet_v1_block_dense", seed=seed, bias=bias,
                     batch=batch)
    x = b.input("input", channels_in, input_size, input_size)
    if separable:
        y = b.conv_bn("block/dw", x, channels_in, 3, stride=stride, pad=1, group=channels_in)
        y = b.conv_bn("block/pw", y, channels_out, 1)
    else:
        y = b.conv_bn("block/conv", x, channels_out, 3, stride=stride, pad=1)
    return b.model(y, output_name="output", doc=mobilenet_v1_block.__doc__ or "")
