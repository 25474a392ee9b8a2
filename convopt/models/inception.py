"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions"), inference graphs.

Inception module: Concat(1×1, [1×1 reduce →] 3×3, [1×1 reduce →] 5×5, 3×3 max-pool [→ 1×1 pool proj]), each
conv followed by ReLU; layer names follow the reference Caffe model (``inception_3a/5x5_reduce``, ...).
Weight count of module (3a), 192 channels in:
naive 192·64 + 192·9·128 + 192·25·32 = 387,072; with 3×3/5×5 reductions 157,184; with the pool projection 163,328.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from convopt.models._builder import GraphBuilder, T


@dataclass(frozen=True)
class InceptionSpec:
    """Channel counts of one Inception module, as in Table 1 of the paper; 0 = that reduction is absent."""

    n1x1: int
    n3x3_reduce: int
    n3x3: int
    n5x5_reduce: int
    n5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj


#: GoogLeNet's Inception modules, Table 1 of Szegedy et al. 2015.
GOOGLENET_MODULES: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(64, 96, 128, 16, 32, 32),
    "3b": InceptionSpec(128, 128, 192, 32, 96, 64),
    "4a": InceptionSpec(192, 96, 208, 16, 48, 64),
    "4b": InceptionSpec(160, 112, 224, 24, 64, 64),
    "4c": InceptionSpec(128, 128, 256, 24, 64, 64),
    "4d": InceptionSpec(112, 144, 288, 32, 64, 64),
    "4e": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5a": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5b": InceptionSpec(384, 192, 384, 48, 128, 128),
}


def inception_module(b: GraphBuilder, prefix: str, x: T, spec: InceptionSpec) -> T:
    """Add one Inception module to ``b``; reductions / pool projection of size 0 are left out (naive form)."""
    branches = [b.conv_relu(f"{prefix}/1x1", x, spec.n1x1, 1, relu_name=f"{prefix}/relu_1x1")]
    for k, red, n in (("3x3", spec.n3x3_reduce, spec.n3x3), ("5x5", spec.n5x5_reduce, spec.n5x5)):
        y = x
        if red:
            y = b.conv_relu(f"{prefix}/{k}_reduce", y, red, 1, relu_name=f"{prefix}/relu_{k}_reduce")
        branches.append(b.conv_relu(f"{prefix}/{k}", y, n, int(k[0]), relu_name=f"{prefix}/relu_{k}"))
    pool = b.maxpool(f"{prefix}/pool", x, 3, 1, 1)
    if spec.pool_proj:
        pool = b.conv_relu(f"{prefix}/pool_proj", pool, spec.pool_proj, 1, relu_name=f"{prefix}/relu_pool_proj")
    branches.append(pool)
    return b.concat(f"{prefix}/output", branches)


def inception_3a(
    *, reductions: bool = True, pool_proj: bool = True, input_size: int = 28, batch: int = 1, seed: int = 0,
    bias: bool = True,
) -> onnx.ModelProto:
    """GoogLeNet's inception (3a) on 1×192×28×28: 64 / 96→128 / 16→32 / pool→32 (256 channels out).

    ``reductions=False`` drops the 1×1 reductions before the 3×3 and 5×5; ``pool_proj=False`` passes the
    192 pooled channels straight to the concat. Both False is the naive module (64+128+32+192 = 416 out).
    """
    s = GOOGLENET_MODULES["3a"]
    spec = InceptionSpec(s.n1x1, s.n3x3_reduce if reductions else 0, s.n3x3, s.n5x5_reduce if reductions else 0,
                         s.n5x5, s.pool_proj if pool_proj else 0)
    name = "inception_3a" if reductions and pool_proj else (
        "inception_3a_naive" if not (reductions or pool_proj) else "inception_3a_partial")
    b = GraphBuilder(name, seed=seed, bias=bias, batch=batch)
    x = b.input("input", 192, input_size, input_size)
    y = inception_module(b, "inception_3a", x, spec)
    return b.model(y, output_name="output", doc=inception_3a.__doc__ or "")


def inception_3a_naive(*, input_size: int = 28, batch: int = 1, seed: int = 0, bias: bool = True) -> onnx.ModelProto:
    """The naive Inception module with (3a)'s sizes: 1×1 (64), 3×3 (128), 5×5 (32), 3×3 max-pool; 416 out."""
    return inception_3a(reductions=False, pool_proj=False, input_size=input_size, batch=batch, seed=seed, bias=bias)


def googlenet(
    *, num_classes: int = 1000, input_size: int = 224, batch: int = 1, seed: int = 0, bias: bool = True,
    lrn: bool = True,
) -> onnx.ModelProto:
    """GoogLeNet (Inception v1) inference graph, 1×3×224×224 → 1×1000 logits, auxiliary classifiers omitted.

    Stem 7×7/2 conv, 3×3/2 max-pool, LRN, 1×1 conv, 3×3 conv, LRN, 3×3/2 max-pool; modules 3a-3b, pool,
    4a-4e, pool, 5a-5b; global average pool; fully connected to ``num_classes`` (dropout is a no-op at
    inference). Max-pools round up (ceil mode), like the reference Caffe model. ``lrn=False`` drops the LRNs.
    """
    b = GraphBuilder("googlenet", seed=seed, bias=bias, batch=batch)
    x = b.input("input", 3, input_size, input_size)
    x = b.conv_relu("conv1/7x7_s2", x, 64, 7, stride=2, pad=3, relu_name="conv1/relu_7x7")
    x = b.maxpool("pool1/3x3_s2", x, 3, 2, ceil=True)
    if lrn:
        x = b.lrn("pool1/norm1", x)
    x = b.conv_relu("conv2/3x3_reduce", x, 64, 1, relu_name="conv2/relu_3x3_reduce")
    x = b.conv_relu("conv2/3x3", x, 192, 3, relu_name="conv2/relu_3x3")
    if lrn:
        x = b.lrn("conv2/norm2", x)
    x = b.maxpool("pool2/3x3_s2", x, 3, 2, ceil=True)
    for stage, pool in (("3", "pool3/3x3_s2"), ("4", "pool4/3x3_s2"), ("5", None)):
        for key, spec in GOOGLENET_MODULES.items():
            if key.startswith(stage):
                x = inception_module(b, f"inception_{key}", x, spec)
        if pool:
            x = b.maxpool(pool, x, 3, 2, ceil=True)
    x = b.global_avgpool("pool5/7x7_s1", x)
    x = b.flatten("pool5/flatten", x)
    x = b.gemm("loss3/classifier", x, num_classes)
    return b.model(x, flat=True, output_name="logits", doc=googlenet.__doc__ or "")
