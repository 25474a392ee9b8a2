"""The built-in trained example: an Inception-style CNN on scikit-learn's digits, shipped as package data.

``data/example.onnx`` (input ``input`` 1×1×28×28 float32 in [0, 1], output ``logits`` 1×10),
``data/example_eval.npz`` (held-out ``input`` N×1×28×28 float32 and ``labels`` N int64) and
``data/example.json`` (data set, split, seed, epochs, accuracies). Made by ``scripts/train_example.py``.
"""
from __future__ import annotations

import atexit
import json
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convopt.errors import DataError, ModelLoadError

_files = ExitStack()
atexit.register(_files.close)
_paths: dict[str, Path] = {}


def _data_file(name: str) -> Path:
    """A real filesystem path to ``convopt/models/data/<name>``, extracted once if the package is zipped."""
    if name not in _paths:
        res = resources.files("convopt.models").joinpath("data").joinpath(name)
        if not res.is_file():
            raise DataError(f"the built-in example file {name} is missing from the convopt package; reinstall convopt")
        _paths[name] = res if isinstance(res, Path) else _files.enter_context(resources.as_file(res))
    return _paths[name]


def example_model_path() -> Path:
    """Path of the trained example model (ONNX, opset 13)."""
    return _data_file("example.onnx")


def example_data_path() -> Path:
    """Path of the held-out evaluation set (.npz with ``input`` and ``labels``)."""
    return _data_file("example_eval.npz")


def example_info() -> dict[str, Any]:
    """The training record: data set, preprocessing, split, seed, epochs, train and held-out accuracy."""
    return dict(json.loads(_data_file("example.json").read_text(encoding="utf-8")))


def load_example() -> onnx.ModelProto:
    """The trained example model."""
    try:
        return onnx.load(str(example_model_path()))
    except Exception as exc:  # protobuf raises several types on a damaged file
        raise ModelLoadError(f"cannot read the built-in example model: {exc}; reinstall convopt") from exc


def load_example_data() -> tuple[np.ndarray, np.ndarray]:
    """(inputs N×1×28×28 float32, labels N int64) of the bundled held-out set."""
    with np.load(example_data_path()) as z:
        return np.asarray(z["input"], dtype=np.float32), np.asarray(z["labels"], dtype=np.int64)
