"""Small models built in code, and ORT comparison helpers, for the unit tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODELS = SHARED / "models"
NO_SHARED = f"../shared not found beside the repo (looked for {SHARED})"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# fp32 full-rank rewrites must match to round-off: relative L2 error over the whole output
FULL_RANK_RTOL = 1e-4


def conv_model(
    cin: int = 8,
    cout: int = 16,
    k: tuple[int, int] = (3, 3),
    *,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] | None = None,
    auto_pad: str | None = None,
    group: int = 1,
    bias: bool = True,
    batch: int = 2,
    hw: tuple[int, int] = (13, 11),
    seed: int = 0,
    weights_as_constant: bool = False,
    opset: int = 13,
    ir_version: int = 8,
) -> onnx.ModelProto:
    """x (batch, cin, H, W) → Conv → Relu, with seeded random weights."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((cout, cin // group, *k)).astype(np.float32)
    B = rng.standard_normal(cout).astype(np.float32)
    attrs: dict[str, object] = {"kernel_shape": list(k), "strides": list(stride), "dilations": list(dilation), "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    elif pads is not None:
        attrs["pads"] = list(pads)
    inputs = ["x", "W"] + (["B"] if bias else [])
    nodes = []
    inits = []
    if weights_as_constant:
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "W")))
        if bias:
            nodes.append(helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(B, "B")))
    else:
        inits.append(numpy_helper.from_array(W, "W"))
        if bias:
            inits.append(numpy_helper.from_array(B, "B"))
    nodes.append(helper.make_node("Conv", inputs, ["y"], name="conv", **attrs))
    nodes.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, *hw])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, None, None, None])],
        inits,
    )
    if ir_version < 4:  # IR 3: every initializer is also a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="convopt-tests")
    m.ir_version = ir_version
    onnx.checker.check_model(m)
    return m


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 1, scale: float = 1.0, shapes: dict | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
        if shapes and i.name in shapes:
            dims = list(shapes[i.name])
        feeds[i.name] = (rng.standard_normal(dims) * scale).astype(np.float32)
    return feeds


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def rewrite_node(model: onnx.ModelProto, pass_name: str, ranks: dict[str, int], node: str = "conv"):
    """``model`` with ``node`` rewritten by ``pass_name`` at explicit ``ranks`` (one plan, applied once)."""
    from convopt.core.driver import conv_shapes
    from convopt.core.plan import Choice, Plan, apply_plan, conv_table

    return apply_plan(model, Plan({node: Choice(pass_name, ranks)}), conv_table(model, conv_shapes(model, None)))


def example_script(name: str) -> ModuleType:
    """examples/NAME.py loaded as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strip_keys(d: Any, keys: set[str]) -> Any:
    """``d`` (JSON-like) without the dict entries named in ``keys``, at any depth."""
    if isinstance(d, dict):
        return {k: strip_keys(v, keys) for k, v in d.items() if k not in keys}
    if isinstance(d, list):
        return [strip_keys(v, keys) for v in d]
    return d


def rss_mib() -> float:
    """This process's resident set (VmRSS, Linux), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
