"""Constant tensors of a graph: initializers and the outputs of Constant nodes, read by name."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convopt.graph import offload  # (the module: graph's package imports it through this one)


class ConstantTable:
    """Constant tensors of a graph: initializers and outputs of Constant nodes (some exporters use these)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._inits = {t.name: t for t in graph.initializer}
        self._const_nodes: dict[str, onnx.NodeProto] = {}
        for n in graph.node:
            if n.op_type == "Constant" and len(n.output) == 1:
                self._const_nodes[n.output[0]] = n
        # a graph input that shadows an initializer can be fed at run time: not constant (IR >= 4)
        self._shadowed = {i.name for i in graph.input}

    def is_constant(self, name: str, ir_version: int = 8) -> bool:
        if name in self._const_nodes:
            return True
        if name in self._inits:
            return ir_version < 4 or name not in self._shadowed
        return False

    def _attribute(self, name: str) -> onnx.AttributeProto | None:
        node = self._const_nodes.get(name)
        if node is None:
            return None
        return next((a for a in node.attribute if a.name.startswith("value")), None)

    def value(self, name: str) -> np.ndarray | None:
        if name in self._inits:
            return offload.array(self._inits[name])  # offloaded weights too
        a = self._attribute(name)
        if a is None:
            return None
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
        return None

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The constant's shape, read without materializing its values (None: not a readable constant)."""
        if name in self._inits:
            return tuple(int(d) for d in self._inits[name].dims)
        a = self._attribute(name)
        if a is None:
            return None
        if a.name == "value":
            return tuple(int(d) for d in a.t.dims)
        if a.name in ("value_float", "value_int"):
            return ()
        if a.name in ("value_floats", "value_ints"):
            return (len(a.floats) + len(a.ints),)
        return None

    def dtype(self, name: str) -> int | None:
        if name in self._inits:
            return self._inits[name].data_type
        a = self._attribute(name)
        if a is None:
            return None
        if a.name == "value":
            return a.t.data_type
        if a.name.startswith("value_float"):
            return onnx.TensorProto.FLOAT
        if a.name.startswith("value_int"):
            return onnx.TensorProto.INT64
        return None
