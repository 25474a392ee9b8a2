"""VGG-16 (Simonyan & Zisserman 2015, configuration D): thirteen 3×3 convs with ReLU, five 2×2 max-pools,
fc6/fc7 (4096) and fc8; 138,357,544 parameters at full width (14,710,464 conv weights). Names follow the
reference Caffe model (``conv3_2``, ``relu3_2``, ``pool3``, ``fc6``); dropout is a no-op at inference.

Full size is ~550 MB of float32, so ``vgg16_weight_shapes`` gives every layer's weight shape without building
anything, and ``width`` scales every channel count and the fc6/fc7 width for small test copies.
"""
from __future__ import annotations

import onnx

from convopt.models._builder import GraphBuilder

#: Configuration D: output channels of each 3×3 conv, "M" for a 2×2/2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


def vgg16_weight_shapes(
    *, width: float = 1.0, input_size: int = 224, num_classes: int = 1000
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(layer name, "Conv" or "Gemm", weight shape) of every VGG-16 layer, without building the model.

    Conv weights are (O, I, 3, 3); Gemm weights are (out, in). Each layer also has a bias of size O / out.
    """
    if input_size % 32 or input_size < 32:
        raise ValueError("VGG-16 input_size must be a positive multiple of 32")
    shapes: list[tuple[str, str, tuple[int, ...]]] = []
    c, stage, idx = 3, 1, 1
    for v in VGG16_CFG:
        if v == "M":
            stage, idx = stage + 1, 1
            continue
        o = _scaled(int(v), width)
        shapes.append((f"conv{stage}_{idx}", "Conv", (o, c, 3, 3)))
        c, idx = o, idx + 1
    k = c * (input_size // 32) ** 2
    hidden = _scaled(4096, width)
    shapes += [("fc6", "Gemm", (hidden, k)), ("fc7", "Gemm", (hidden, hidden)), ("fc8", "Gemm", (num_classes, hidden))]
    return shapes


def vgg16(
    *, width: float = 1.0, num_classes: int = 1000, input_size: int = 224, batch: int = 1, seed: int = 0,
    bias: bool = True,
) -> onnx.ModelProto:
    """VGG-16 (configuration D), 1×3×224×224 → 1×1000 logits; ``width`` < 1 scales all channel counts down."""
    layers = vgg16_weight_shapes(width=width, input_size=input_size, num_classes=num_classes)
    b = GraphBuilder("vgg16", seed=seed, bias=bias, batch=batch)
    x = b.input("input", 3, input_size, input_size)
    convs = iter(name for name, op, _ in layers if op == "Conv")
    stage = 1
    for v in VGG16_CFG:
        if v == "M":
            x = b.maxpool(f"pool{stage}", x, 2, 2)
            stage += 1
            continue
        name = next(convs)
        x = b.conv_relu(name, x, _scaled(int(v), width), 3, pad=1, relu_name=name.replace("conv", "relu"))
    x = b.flatten("flatten", x)
    (_, _, s6), (_, _, s7), _ = layers[-3:]
    x = b.relu("relu6", b.gemm("fc6", x, s6[0]))
    x = b.relu("relu7", b.gemm("fc7", x, s7[0]))
    x = b.gemm("fc8", x, num_classes)
    return b.model(x, flat=True, output_name="logits", doc=vgg16.__doc__ or "")
