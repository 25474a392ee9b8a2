"""A tiny NCHW graph builder: numpy weights from one seeded generator + onnx.helper nodes, shapes tracked.

Every layer is named by its caller (``inception_3a/5x5``); the node, its output tensor and its initializers
(``inception_3a/5x5/W``, ``.../B``) share that name. Conv weights are He-normal, std = sqrt(2 / fan_in) with
fan_in = (C_in / group) · kh · kw, drawn in build order from ``np.random.default_rng(seed)``, so the same
builder with the same options always gives the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8  # ONNX 1.10+: loads in ONNX Runtime 1.10 and later
PRODUCER = "convopt.models"


@dataclass(frozen=True)
class T:
    """A tensor in the graph being built: its name and (C, H, W) for batch-agnostic shape tracking."""

    name: str
    c: int
    h: int
    w: int


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out(size: int, k: int, s: int, p0: int, p1: int, ceil: bool = False) -> int:
    num = size + p0 + p1 - k
    if num < 0:
        raise ValueError(f"input of size {size} is too small for a {k}-wide window")
    return (-(-num // s) if ceil else num // s) + 1


class GraphBuilder:
    """Builds one NCHW float32 graph; call the layer methods, then ``model(outputs)``."""

    def __init__(self, name: str, *, seed: int = 0, bias: bool = True, batch: int = 1) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.bias = bias
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    # ---------------------------------------------------------------- plumbing
    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate layer name {name!r}")
        self._names.add(name)
        return name

    def _init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), self._claim(name)))
        return name

    def _node(self, op: str, name: str, inputs: list[str], **attrs: object) -> str:
        self._claim(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def input(self, name: str, c: int, h: int, w: int) -> T:
        self.inputs.append(helper.make_tensor_value_info(self._claim(name), TensorProto.FLOAT, [self.batch, c, h, w]))
        return T(name, c, h, w)

    # ---------------------------------------------------------------- layers
    def conv(
        self,
        name: str,
        x: T,
        cout: int,
        kernel: int | tuple[int, int],
        *,
        stride: int = 1,
        pad: int | tuple[int, int] | None = None,
        group: int = 1,
        bias: bool | None = None,
    ) -> T:
        """Conv with He-normal weights (O, I/group, kh, kw); pad defaults to 'same' for odd kernels."""
        kh, kw = _pair(kernel)
        ph, pw = _pair(pad) if pad is not None else (kh // 2, kw // 2)
        if x.c % group or cout % group:
            raise ValueError(f"{name}: channels {x.c}->{cout} not divisible by group {group}")
        fan_in = (x.c // group) * kh * kw
        w = (self.rng.standard_normal((cout, x.c // group, kh, kw)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        ins = [x.name, self._init(f"{name}/W", w)]
        if self.bias if bias is None else bias:
            ins.append(self._init(f"{name}/B", (self.rng.standard_normal(cout) * 0.01).astype(np.float32)))
        self._node("Conv", name, ins, kernel_shape=[kh, kw], strides=[stride, stride], pads=[ph, pw, ph, pw],
                   dilations=[1, 1], group=group)
        return T(name, cout, _out(x.h, kh, stride, ph, ph), _out(x.w, kw, stride, pw, pw))

    def bn(self, name: str, x: T, eps: float = 1e-5, scale_range: tuple[float, float] = (0.5, 1.5)) -> T:
        """Inference BatchNormalization with realistic, non-trivial scale, shift, mean and variance."""
        c = x.c
        scale = self.rng.uniform(*scale_range, c).astype(np.float32)
        shift = (self.rng.standard_normal(c) * 0.1).astype(np.float32)
        mean = (self.rng.standard_normal(c) * 0.1).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        ins = [x.name] + [self._init(f"{name}/{k}", v) for k, v in
                          (("scale", scale), ("B", shift), ("mean", mean), ("var", var))]
        self._node("BatchNormalization", name, ins, epsilon=eps)
        return T(name, x.c, x.h, x.w)

    def relu(self, name: str, x: T) -> T:
        return T(self._node("Relu", name, [x.name]), x.c, x.h, x.w)

    def lrn(self, name: str, x: T, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> T:
        return T(self._node("LRN", name, [x.name], size=size, alpha=alpha, beta=beta, bias=k), x.c, x.h, x.w)

    def maxpool(self, name: str, x: T, kernel: int, stride: int, pad: int = 0, ceil: bool = False) -> T:
        attrs: dict[str, object] = {"kernel_shape": [kernel, kernel], "strides": [stride, stride],
                                    "pads": [pad] * 4}
        if ceil:
            attrs["ceil_mode"] = 1
        self._node("MaxPool", name, [x.name], **attrs)
        return T(name, x.c, _out(x.h, kernel, stride, pad, pad, ceil), _out(x.w, kernel, stride, pad, pad, ceil))

    def global_avgpool(self, name: str, x: T) -> T:
        return T(self._node("GlobalAveragePool", name, [x.name]), x.c, 1, 1)

    def concat(self, name: str, xs: list[T]) -> T:
        if len({(x.h, x.w) for x in xs}) != 1:
            raise ValueError(f"{name}: branch sizes differ: {[(x.h, x.w) for x in xs]}")
        return T(self._node("Concat", name, [x.name for x in xs], axis=1), sum(x.c for x in xs), xs[0].h, xs[0].w)

    def add(self, name: str, a: T, b: T) -> T:
        if (a.c, a.h, a.w) != (b.c, b.h, b.w):
            raise ValueError(f"{name}: shapes differ: {(a.c, a.h, a.w)} vs {(b.c, b.h, b.w)}")
        return T(self._node("Add", name, [a.name, b.name]), a.c, a.h, a.w)

    def flatten(self, name: str, x: T) -> T:
        return T(self._node("Flatten", name, [x.name], axis=1), x.c * x.h * x.w, 1, 1)

    def gemm(self, name: str, x: T, out: int) -> T:
        """Fully connected layer on a flattened (N, K) tensor: Y = X · Wᵀ + B, W He-normal (out, K)."""
        k = x.c
        w = (self.rng.standard_normal((out, k)) * math.sqrt(2.0 / k)).astype(np.float32)
        b = (self.rng.standard_normal(out) * 0.01).astype(np.float32)
        self._node("Gemm", name, [x.name, self._init(f"{name}/W", w), self._init(f"{name}/B", b)], transB=1)
        return T(name, out, 1, 1)

    # ---------------------------------------------------------------- composites
    def conv_relu(self, name: str, x: T, cout: int, kernel: int | tuple[int, int], *, relu_name: str | None = None,
                  **kw: object) -> T:
        y = self.conv(name, x, cout, kernel, **kw)  # type: ignore[arg-type]
        return self.relu(relu_name or f"{name}/relu", y)

    def conv_bn(self, name: str, x: T, cout: int, kernel: int | tuple[int, int], *, relu: bool = True,
                bn_scale: tuple[float, float] = (0.5, 1.5), **kw: object) -> T:
        """Conv → BatchNormalization (→ ReLU); nodes ``{name}``, ``{name}/bn``, ``{name}/relu``."""
        y = self.bn(f"{name}/bn", self.conv(name, x, cout, kernel, **kw), scale_range=bn_scale)  # type: ignore[arg-type]
        return self.relu(f"{name}/relu", y) if relu else y

    # ---------------------------------------------------------------- finish
    def model(self, output: T, *, flat: bool = False, doc: str = "", output_name: str | None = None) -> onnx.ModelProto:
        """Close the graph: ``output`` becomes the graph output, shape (N, C) if ``flat`` else (N, C, H, W)."""
        out_name = output.name
        if output_name is not None and output_name != output.name:  # rename the last node's output tensor
            producer = next(n for n in self.nodes if output.name in n.output)
            producer.output[list(producer.output).index(output.name)] = self._claim(output_name)
            out_name = output_name
        shape = [self.batch, output.c] if flat else [self.batch, output.c, output.h, output.w]
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs,
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)], initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
                              producer_version=_version(), doc_string=doc)
        m.ir_version = IR_VERSION
        helper.set_model_props(m, {"convopt.model": self.name, "convopt.seed": str(self.seed),
                                   "convopt.bias": str(self.bias).lower()})
        return m


def _version() -> str:
    try:
        from convopt import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - convopt always has a version
        return "0"
