"""A model written for ONNX Runtime to read: a private temporary folder holding the graph and, beside it, the
weights as ONNX external data.

ORT parses a model file's protobuf whole before it builds its own initializers from it: with the weights
inside, the parsed copy of every weight is alive at the peak of making a session, on top of ORT's own
initializers and its re-laid-out weights. With the weights outside, ORT parses a graph of a few hundred KiB and
reads each weight from the data file straight into its own tensor. On ddddocr-det (19.2 MiB), making a
session peaked 62 MiB above what was held before with the weights inside, 39 MiB with them outside, for the
same session once made (32 MiB, after malloc_trim) and the same kernels (ORT optimizes the same graph).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import onnx

from convopt.graph.offload import copy_to, offloaded, point_at, without_data, write_all
from convopt.serialize import model_chunks

WEIGHTS = "weights.bin"
EXTERNAL_MIN = 1024
"""Initializers of at least this many bytes of ``raw_data`` go to the weights file (ONNX's own default
threshold for external data); smaller ones, and tensors held in typed fields, stay inside the graph."""


@contextlib.contextmanager
def model_file(model: onnx.ModelProto, initializers: Sequence[onnx.TensorProto] = ()) -> Iterator[Path]:
    """``model`` (with ``initializers`` added to its graph: another model's protos, not copied) written to a
    private temporary folder, removed on exit: ``model.onnx``, whose initializers point at ``weights.bin``
    beside it. Each weight is written once, one tensor at a time; nothing of ``model`` is changed or copied."""
    folder = Path(tempfile.mkdtemp(prefix="convopt-"))
    try:
        with open(folder / WEIGHTS, "wb", buffering=0) as data:
            stubs = [external(t, data) for t in (*model.graph.initializer, *initializers)]
        path = folder / "model.onnx"
        with open(path, "wb") as fh:
            for piece in model_chunks(model, stubs):
                fh.write(piece)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def external(tensor: onnx.TensorProto, data: BinaryIO) -> onnx.TensorProto:
    """``tensor`` itself when it stays inside the graph, else a new TensorProto with its fields but no data,
    pointing at its bytes appended to ``data`` (an unbuffered file named WEIGHTS, beside the model). An
    offloaded tensor's bytes are copied from its WeightFile by the kernel, never read into the process."""
    offset = data.tell()
    if offloaded(tensor):
        copy_to(tensor, data)
    elif tensor.data_location == onnx.TensorProto.EXTERNAL:
        return tensor
    else:
        raw = tensor.raw_data  # (a copy of the bytes: read once)
        if len(raw) < EXTERNAL_MIN:
            return tensor
        write_all(data, raw)
    stub = without_data(tensor)
    point_at(stub, WEIGHTS, offset, data.tell() - offset)
    return stub


__all__ = ["EXTERNAL_MIN", "WEIGHTS", "external", "model_file"]
