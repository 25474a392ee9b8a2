"""Broken and hostile model files, generated in code (no binaries in the repo).

``write_corpus(folder)`` writes every case into ``folder`` and returns {case name: (model path, expected
message fragment)}. Each case must be refused by ``convopt inspect`` / ``convopt optimize`` with exit code 2
and one clear line. Run as a script to write them to a folder: ``python -m tests.corpus.make_corpus DIR``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import conv_model


def _base() -> onnx.ModelProto:
    return conv_model(cin=4, cout=8, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))


def _bytes(m: onnx.ModelProto) -> bytes:
    return m.SerializeToString()


def _zero_byte(d: Path) -> Path:
    p = d / "zero.onnx"
    p.write_bytes(b"")
    return p


def _truncated(d: Path) -> Path:
    data = _bytes(_base())
    p = d / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p


def _truncated_tail(d: Path) -> Path:
    data = _bytes(_base())
    p = d / "truncated_tail.onnx"
    p.write_bytes(data[:-3])
    return p


def _random_bytes(d: Path) -> Path:
    p = d / "random.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def _text_file(d: Path) -> Path:
    p = d / "text.onnx"
    p.write_text("<html>this is not a model</html>\n" * 20)
    return p


def _not_a_model_tensor(d: Path) -> Path:
    """A valid protobuf (a TensorProto) that is not a ModelProto."""
    p = d / "tensor.onnx"
    p.write_bytes(numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString())
    return p


def _not_a_model_graph(d: Path) -> Path:
    """A valid GraphProto (no ModelProto wrapper)."""
    p = d / "graph.onnx"
    p.write_bytes(_base().graph.SerializeToString())
    return p


def _checker_dangling_input(d: Path) -> Path:
    m = _base()
    m.graph.node[0].input[0] = "does_not_exist"
    p = d / "dangling.onnx"
    p.write_bytes(_bytes(m))
    return p


def _checker_unknown_op(d: Path) -> Path:
    m = _base()
    m.graph.node[1].op_type = "NoSuchOp"
    p = d / "unknown_op.onnx"
    p.write_bytes(_bytes(m))
    return p


def _future_opset(d: Path) -> Path:
    m = _base()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    p = d / "future_opset.onnx"
    p.write_bytes(_bytes(m))
    return p


def _ancient_opset(d: Path) -> Path:
    m = _base()
    m.opset_import[0].version = 1
    p = d / "ancient_opset.onnx"
    p.write_bytes(_bytes(m))
    return p


def _no_default_domain(d: Path) -> Path:
    m = _base()
    m.opset_import[0].domain = "com.example"
    p = d / "no_default_domain.onnx"
    p.write_bytes(_bytes(m))
    return p


def _future_ir(d: Path) -> Path:
    m = _base()
    m.ir_version = 99
    p = d / "future_ir.onnx"
    p.write_bytes(_bytes(m))
    return p


def _weight_vs_kernel_shape(d: Path) -> Path:
    """kernel_shape says 5x5, the weight is 3x3."""
    m = _base()
    for a in m.graph.node[0].attribute:
        if a.name == "kernel_shape":
            a.ints[:] = [5, 5]
    p = d / "kernel_mismatch.onnx"
    p.write_bytes(_bytes(m))
    return p


def _weight_vs_channels(d: Path) -> Path:
    """The weight expects 3 input channels, the input has 4."""
    m = _base()
    w = numpy_helper.to_array(m.graph.initializer[0])[:, :3]
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w), "W"))
    p = d / "channel_mismatch.onnx"
    p.write_bytes(_bytes(m))
    return p


def _group_not_dividing(d: Path) -> Path:
    """group=3 does not divide 4 input / 8 output channels."""
    m = _base()
    for a in m.graph.node[0].attribute:
        if a.name == "group":
            a.i = 3
    p = d / "bad_group.onnx"
    p.write_bytes(_bytes(m))
    return p


def _zero_dim_input(d: Path) -> Path:
    m = _base()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    p = d / "zero_dim_input.onnx"
    p.write_bytes(_bytes(m))
    return p


def _zero_dim_weight(d: Path) -> Path:
    """A weight with zero output channels."""
    m = _base()
    w = np.zeros((0, 4, 3, 3), dtype=np.float32)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(0, dtype=np.float32), "B"))
    p = d / "zero_dim_weight.onnx"
    p.write_bytes(_bytes(m))
    return p


def _kernel_larger_than_input(d: Path) -> Path:
    m = conv_model(cin=2, cout=4, k=(7, 7), batch=1, hw=(3, 3))
    p = d / "kernel_too_big.onnx"
    p.write_bytes(_bytes(m))
    return p


def _weight_data_short(d: Path) -> Path:
    """The weight's raw bytes are 8 short of its declared shape."""
    m = _base()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-8]
    p = d / "weight_data_short.onnx"
    p.write_bytes(_bytes(m))
    return p


def _weight_float_data_short(d: Path) -> Path:
    """The weight is stored as float_data, 3 values short of its declared shape."""
    m = _base()
    w = m.graph.initializer[0]
    values = numpy_helper.to_array(w).ravel()[:-3].tolist()
    w.ClearField("raw_data")
    w.float_data.extend(values)
    p = d / "weight_float_data_short.onnx"
    p.write_bytes(_bytes(m))
    return p


def _duplicate_output_names(d: Path) -> Path:
    """Two nodes write the same tensor (SSA violated)."""
    m = _base()
    m.graph.node[1].output[0] = "y"
    p = d / "duplicate_output.onnx"
    p.write_bytes(_bytes(m))
    return p


def _cycle(d: Path) -> Path:
    """Conv → Relu → Add(feeds back into the Conv): a cycle in the graph."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Add", ["x", "r"], ["a"], name="add"),
        helper.make_node("Conv", ["a", "W"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["r"], name="relu"),
    ]
    g = helper.make_graph(
        nodes, "cycle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4, 8, 8])],
        [W],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    p = d / "cycle.onnx"
    p.write_bytes(_bytes(m))
    return p


def _self_loop(d: Path) -> Path:
    """A node that reads its own output."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["y", "W"], ["y"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("Add", ["x", "y"], ["z"], name="add"),
    ]
    g = helper.make_graph(
        nodes, "selfloop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])],
        [W],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    p = d / "self_loop.onnx"
    p.write_bytes(_bytes(m))
    return p


def _external(d: Path, sub: str, location: str, create: bool) -> Path:
    """A model whose weight lives in external data at ``location`` (relative to the model's folder)."""
    folder = d / sub
    folder.mkdir(parents=True, exist_ok=True)
    m = _base()
    w = m.graph.initializer[0]
    raw = numpy_helper.to_array(w).tobytes()
    if create:
        target = Path(location) if Path(location).is_absolute() else folder / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = w.external_data.add()
        e.key, e.value = k, v
    p = folder / "model.onnx"
    p.write_bytes(_bytes(m))
    return p


def _external_missing(d: Path) -> Path:
    return _external(d, "ext_missing", "weights.bin", create=False)


def _external_climbs_out(d: Path) -> Path:
    return _external(d, "ext_climb/inner", "../secret.bin", create=True)


def _external_absolute(d: Path) -> Path:
    return _external(d, "ext_abs", str((d / "ext_abs_target" / "abs.bin").resolve()), create=True)


def _external_symlink_out(d: Path) -> Path:
    """The location is a plain name beside the model, but that file is a symlink leaving the folder."""
    p = _external(d, "ext_symlink", "weights.bin", create=False)
    outside = d / "ext_symlink_target.bin"
    outside.write_bytes(b"\x00" * 8 * 4 * 9 * 4)
    (p.parent / "weights.bin").symlink_to(outside)
    return p


def _external_too_short(d: Path) -> Path:
    """The external file exists but is shorter than the tensor."""
    p = _external(d, "ext_short", "weights.bin", create=True)
    (p.parent / "weights.bin").write_bytes(b"\x00" * 10)
    return p


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero_byte": (_zero_byte, "empty file"),
    "truncated": (_truncated, "not an ONNX model"),
    "truncated_tail": (_truncated_tail, ""),
    "random_bytes": (_random_bytes, "not an ONNX model"),
    "text_file": (_text_file, "not an ONNX model"),
    "protobuf_tensor": (_not_a_model_tensor, "not an ONNX model"),
    "protobuf_graph": (_not_a_model_graph, "not an ONNX model"),
    "checker_dangling_input": (_checker_dangling_input, "invalid ONNX model"),
    "checker_unknown_op": (_checker_unknown_op, "invalid ONNX model"),
    "future_opset": (_future_opset, "newer than"),
    "ancient_opset": (_ancient_opset, "too old"),
    "no_default_domain": (_no_default_domain, "default ONNX domain"),
    "future_ir_version": (_future_ir, "IR version 99 is newer"),
    "kernel_shape_vs_weight": (_weight_vs_kernel_shape, "kernel"),
    "weight_vs_input_channels": (_weight_vs_channels, "channel"),
    "group_not_dividing": (_group_not_dividing, "group"),
    "zero_dim_input": (_zero_dim_input, "zero"),
    "zero_dim_weight": (_zero_dim_weight, "zero"),
    "kernel_larger_than_input": (_kernel_larger_than_input, ""),
    "weight_raw_data_short": (_weight_data_short, "too small"),
    "weight_float_data_short": (_weight_float_data_short, "too small"),
    "duplicate_output_name": (_duplicate_output_names, "invalid ONNX model"),
    "cycle": (_cycle, "cycle"),
    "self_loop": (_self_loop, "cycle"),
    "external_missing": (_external_missing, "missing"),
    "external_climbs_out": (_external_climbs_out, "outside the model's folder"),
    "external_absolute": (_external_absolute, "absolute"),
    "external_symlink_out": (_external_symlink_out, "outside the model's folder"),
    "external_too_short": (_external_too_short, "external data"),
}


def write_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: (make(folder), needle) for name, (make, needle) in CASES.items()}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus_out")
    for name, (path, _) in write_corpus(out).items():
        print(f"{name}: {path}")
