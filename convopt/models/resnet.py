"""ResNet (He et al. 2016, "Deep residual learning for image recognition"): blocks, ResNet-18 and ResNet-50.

Basic block: ReLU(x + BN(3×3(ReLU(BN(3×3(x)))))); at 256 channels two 3×3 convs hold 2·589,824 = 1,179,648
weights. Bottleneck: ReLU(x + BN(1×1(ReLU(BN(3×3(ReLU(BN(1×1(x))))))))); 256→64→64→256 holds
256·64 + 64·9·64 + 64·256 = 69,632. Every conv is followed by BatchNormalization (non-trivial inference
statistics drawn from the seeded generator, so that folding them is a real test). Stride 2 sits on the 3×3
of a bottleneck (the "v1.5" layout used by torchvision and MLPerf); projection shortcuts are 1×1 conv + BN.
Names follow torchvision with ``/`` separators (``layer2.0/conv1``, ``layer2.0/conv1/bn``, ``layer2.0/downsample``).
"""
from __future__ import annotations

import onnx

from convopt.models._builder import GraphBuilder, T

#: BN scale range on the last BN of each residual branch. Trained ResNets keep these small, so that
#: activations do not double at every block; 0.5..1.5 is used everywhere else.
RESIDUAL_BN_SCALE = (0.1, 0.4)


def basic_block(b: GraphBuilder, prefix: str, x: T, planes: int, stride: int = 1) -> T:
    y = b.conv_bn(f"{prefix}/conv1", x, planes, 3, stride=stride)
    y = b.conv_bn(f"{prefix}/conv2", y, planes, 3, relu=False, bn_scale=RESIDUAL_BN_SCALE)
    short = x
    if stride != 1 or x.c != planes:
        short = b.conv_bn(f"{prefix}/downsample", x, planes, 1, stride=stride, relu=False)
    return b.relu(f"{prefix}/relu", b.add(f"{prefix}/add", y, short))


def bottleneck_block(b: GraphBuilder, prefix: str, x: T, planes: int, out: int, stride: int = 1) -> T:
    """1×1 (→planes), 3×3 (planes→planes, stride), 1×1 (→out); projection shortcut when the shape changes."""
    y = b.conv_bn(f"{prefix}/conv1", x, planes, 1)
    y = b.conv_bn(f"{prefix}/conv2", y, planes, 3, stride=stride)
    y = b.conv_bn(f"{prefix}/conv3", y, out, 1, relu=False, bn_scale=RESIDUAL_BN_SCALE)
    short = x
    if stride != 1 or x.c != out:
        short = b.conv_bn(f"{prefix}/downsample", x, out, 1, stride=stride, relu=False)
    return b.relu(f"{prefix}/relu", b.add(f"{prefix}/add", y, short))


def resnet_basic_block(
    *, channels: int = 256, input_size: int = 14, batch: int = 1, seed: int = 0, bias: bool = True
) -> onnx.ModelProto:
    """One ResNet basic block, two 3×3 convs at ``channels`` (256 at 14×14, the conv4_x stage of ResNet-18/34)."""
    b = GraphBuilder("resnet_basic_block", seed=seed, bias=bias, batch=batch)
    x = b.input("input", channels, input_size, input_size)
    return b.model(basic_block(b, "block", x, channels), output_name="output", doc=resnet_basic_block.__doc__ or "")


def resnet_bottleneck_block(
    *, channels: int = 256, width: int = 64, input_size: int = 56, batch: int = 1, seed: int = 0, bias: bool = True
) -> onnx.ModelProto:
    """One ResNet bottleneck block 256→64→64→256 (1×1, 3×3, 1×1) at 56×56, the conv2_x stage of ResNet-50."""
    b = GraphBuilder("resnet_bottleneck_block", seed=seed, bias=bias, batch=batch)
    x = b.input("input", channels, input_size, input_size)
    y = bottleneck_block(b, "block", x, width, channels)
    return b.model(y, output_name="output", doc=resnet_bottleneck_block.__doc__ or "")


def _resnet(name: str, block: str, layers: tuple[int, ...], *, num_classes: int, input_size: int, batch: int,
            seed: int, bias: bool, doc: str) -> onnx.ModelProto:
    b = GraphBuilder(name, seed=seed, bias=bias, batch=batch)
    x = b.input("input", 3, input_size, input_size)
    x = b.conv_bn("conv1", x, 64, 7, stride=2, pad=3)
    x = b.maxpool("maxpool", x, 3, 2, 1)
    for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for j in range(n):
            stride = 2 if i > 1 and j == 0 else 1
            if block == "basic":
                x = basic_block(b, f"layer{i}.{j}", x, planes, stride)
            else:
                x = bottleneck_block(b, f"layer{i}.{j}", x, planes, planes * 4, stride)
    x = b.flatten("flatten", b.global_avgpool("avgpool", x))
    return b.model(b.gemm("fc", x, num_classes), flat=True, output_name="logits", doc=doc)


def resnet18(
    *, num_classes: int = 1000, input_size: int = 224, batch: int = 1, seed: int = 0, bias: bool = True
) -> onnx.ModelProto:
    """ResNet-18: 7×7/2 stem + max-pool, basic blocks [2, 2, 2, 2] at 64/128/256/512, global average pool, FC."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), num_classes=num_classes, input_size=input_size, batch=batch,
                   seed=seed, bias=bias, doc=resnet18.__doc__ or "")


def resnet50(
    *, num_classes: int = 1000, input_size: int = 224, batch: int = 1, seed: int = 0, bias: bool = True
) -> onnx.ModelProto:
    """ResNet-50: 7×7/2 stem + max-pool, bottlenecks [3, 4, 6, 3] (widths 64..512, ×4 out), global pool, FC."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), num_classes=num_classes, input_size=input_size,
                   batch=batch, seed=seed, bias=bias, doc=resnet50.__doc__ or "")
