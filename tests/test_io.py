"""Loading refuses bad input with one clear error; saving is atomic and never overwrites the input."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from convopt.errors import ModelLoadError, OutputError, UnsupportedModelError
from convopt.io import load_model, save_model

from tests.helpers import conv_model


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_model(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load_model(tmp_path / "text.onnx")


def test_truncated_model(tmp_path: Path) -> None:
    data = conv_model().SerializeToString()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "t.onnx")


def test_future_opset(tmp_path: Path) -> None:
    m = conv_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    p = tmp_path / "future.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="newer than"):
        load_model(p)


def test_checker_failure(tmp_path: Path) -> None:
    m = conv_model()
    m.graph.node[0].input[0] = "does_not_exist"
    p = tmp_path / "bad.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="invalid ONNX model"):
        load_model(p)


def test_external_data_roundtrip_and_confinement(tmp_path: Path) -> None:
    m = conv_model(cin=16, cout=32)
    p = tmp_path / "ext.onnx"
    onnx.save_model(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    loaded = load_model(p)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).shape == (32, 16, 3, 3)
    # a location that climbs out of the model's folder is refused before anything is read
    sub = tmp_path / "sub"
    sub.mkdir()
    m2 = onnx.load(str(p), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../ext.data"
    (sub / "m.onnx").write_bytes(m2.SerializeToString())
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(sub / "m.onnx")
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(p)


def test_save_refuses_input_path_and_writes_atomically(tmp_path: Path) -> None:
    m = conv_model()
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    with pytest.raises(OutputError, match="refusing to overwrite"):
        save_model(m, src, input_path=src)
    save_model(m, src, input_path=src, overwrite=True)
    out = tmp_path / "o.onnx"
    save_model(m, out, input_path=src)
    assert onnx.load(str(out)).graph.node[0].op_type == "Conv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx"], "temp files left behind"
    with pytest.raises(OutputError, match="does not exist"):
        save_model(m, tmp_path / "no_dir" / "x.onnx")
