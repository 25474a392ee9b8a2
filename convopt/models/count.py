"""Conv weight counts straight from a model's initializers (weights only, no bias): the literature's arithmetic."""
from __future__ import annotations

import math

import onnx


def conv_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Node name → number of weights (O · I/group · kh · kw) of every Conv whose weight is an initializer."""
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    return {n.name: sizes[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in sizes}


def conv_weight_params(model: onnx.ModelProto) -> int:
    """Total Conv weights of the model, biases excluded."""
    return sum(conv_weights(model).values())
