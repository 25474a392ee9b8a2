"""A model's large weights moved out of its protobuf into an anonymous temporary file, read back on demand.

A ModelProto holds its weights in its tensors' ``raw_data``: on the heap for as long as the model lives. A
measured run keeps its original model through the whole search, yet reads its weights only to build a step's
model, to refit a layer or to make a session. ``offload`` copies the model with each large initializer's bytes
written to a ``WeightFile`` instead, the tensor left as an ONNX external-data reference to it
(``data_location`` EXTERNAL; ``location`` naming the file, ``offset``, ``length``). The bytes are in the page
cache, not in the process, until asked for:

- ``array``: the tensor's values (a copy, as ``numpy_helper.to_array`` makes one);
- ``copy_to``: its bytes appended to another file, copied by the kernel (``os.copy_file_range``);
- ``inline``: the tensors given their bytes back, in place: the same message as the one offloaded.

Copies of an offloaded model (``CopyFrom``, a plan's step) point at the same file: a step's model holds only
its new weights. The file is unlinked from the start and closed with its ``WeightFile``: inline what must
outlive it (the result), and serialize with ``serialized`` what goes to another process. Where the temporary
folder is a tmpfs the file would be memory too: ``offload`` then moves nothing (``convopt.pages.tmp_on_disk``).

Only tensors a shape skeleton leaves out (``graph.infer.SKELETON_MAX_ELEMENTS``) are moved, so that
``onnx.checker`` and shape inference, which run on a skeleton, never meet a reference to the file.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import tempfile
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from convopt.graph.infer import SKELETON_MAX_ELEMENTS, copy_fields
from convopt.pages import tmp_on_disk

_OPEN: dict[str, int] = {}  # location -> descriptor, for every WeightFile open in this process
_NUMBERS = itertools.count()
_DEFAULT_SET = ("convopt.data_location", "default")  # this process's own mark: such stubs never leave it


class WeightFile:
    """One anonymous temporary file of offloaded weights, appended to; a context manager that closes it."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="convopt-weights-", buffering=0)  # unlinked already
        self.location = f"convopt-weights-{os.getpid()}-{next(_NUMBERS)}.bin"  # unique in this process
        self.size = 0
        _OPEN[self.location] = self._file.fileno()

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the file; returns its offset."""
        offset, view = self.size, memoryview(data)
        while view:  # pwrite may write part of it
            n = os.pwrite(self._file.fileno(), view, self.size)
            if n <= 0:
                raise OSError(f"could not write offloaded weights ({len(view)} bytes left)")
            self.size += n
            view = view[n:]
        return offset

    def close(self) -> None:
        _OPEN.pop(self.location, None)
        self._file.close()

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def offload(model: onnx.ModelProto, into: WeightFile) -> onnx.ModelProto:
    """A copy of ``model`` whose large main-graph initializers (more than SKELETON_MAX_ELEMENTS elements, in
    ``raw_data``) point at their bytes in ``into``; ``model`` itself where the temporary folder is memory.

    The copy never holds those bytes. Drop ``model`` for them to leave the process: a protobuf message gives
    its fields' memory back only with the whole message (upb's arena), never when a field is cleared."""
    if not tmp_on_disk():
        return model
    m = onnx.ModelProto()
    copy_fields(model, m, skip=("graph",))
    copy_fields(model.graph, m.graph, skip=("initializer",))
    for t in model.graph.initializer:
        if math.prod(t.dims) > SKELETON_MAX_ELEMENTS and t.HasField("raw_data") and t.data_location == onnx.TensorProto.DEFAULT:
            t = _moved(t, into)
        m.graph.initializer.append(t)
    return m


def _moved(tensor: onnx.TensorProto, into: WeightFile) -> onnx.TensorProto:
    raw = tensor.raw_data
    stub = without_data(tensor)
    point_at(stub, into.location, into.append(raw), len(raw))
    if tensor.HasField("data_location"):  # DEFAULT, set (as onnx's loader of external data leaves it)
        entry = stub.external_data.add()
        entry.key, entry.value = _DEFAULT_SET
    return stub


def point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` (holding no data) an ONNX external-data reference to ``length`` bytes of the file
    ``location`` at ``offset``, in place."""
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def without_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A new TensorProto with ``tensor``'s fields but neither its bytes nor where they are."""
    stub = onnx.TensorProto()
    copy_fields(tensor, stub, skip=("raw_data", "external_data", "data_location"))
    return stub


def offloaded(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor``'s bytes are in an open WeightFile."""
    return _source(tensor) is not None


def _source(tensor: onnx.TensorProto) -> tuple[int, int, int] | None:
    """(descriptor, offset, length) of an offloaded tensor's bytes, else None."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    fd = _OPEN.get(info.get("location", ""))
    if fd is None:
        return None
    return fd, int(info["offset"]), int(info["length"])


def _read(tensor: onnx.TensorProto) -> bytes:
    fd, offset, length = _source(tensor)  # type: ignore[misc]
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"offloaded weights of '{tensor.name}': read {len(data)} of {length} bytes")
    return data


def array(tensor: onnx.TensorProto) -> np.ndarray:
    """``numpy_helper.to_array(tensor)``, for an offloaded tensor too."""
    if not offloaded(tensor):
        return numpy_helper.to_array(tensor)
    if tensor.data_type == onnx.TensorProto.FLOAT:
        return np.frombuffer(bytearray(_read(tensor)), dtype="<f4").reshape(tuple(tensor.dims))
    return numpy_helper.to_array(_inlined_tensor(tensor))


def _inlined_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.CopyFrom(tensor)
    _restore(t, _read(tensor))
    return t


def _restore(tensor: onnx.TensorProto, data: bytes) -> None:
    """The tensor as it was before ``offload``: its bytes, and ``data_location`` DEFAULT where it was set."""
    was_set = any((e.key, e.value) == _DEFAULT_SET for e in tensor.external_data)
    del tensor.external_data[:]
    tensor.ClearField("data_location")
    if was_set:
        tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


def copy_to(tensor: onnx.TensorProto, out: BinaryIO) -> None:
    """Append an offloaded tensor's bytes to ``out`` (an unbuffered file, at its end), file to file."""
    src, offset, length = _source(tensor)  # type: ignore[misc]
    dst, done = out.fileno(), 0
    with contextlib.suppress(OSError):  # e.g. a kernel without copy_file_range across these files: read
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done)
            if n == 0:
                break
            done += n
    if done < length:
        write_all(out, os.pread(src, length - done, offset + done))


def write_all(out: BinaryIO, data: bytes) -> None:
    """``data`` written whole to ``out``, which may be unbuffered (a raw file may write part of it)."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        if not n:
            raise OSError(f"could not write to {getattr(out, 'name', 'a file')}")
        view = view[n:]


def inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every offloaded tensor of ``model`` its bytes back, in place; returns ``model``."""
    for t in external_data_helper._get_initializer_tensors(model):
        if offloaded(t):
            _restore(t, _read(t))
    return model


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when nothing of it is offloaded, else a copy with every weight inside."""
    if not any(offloaded(t) for t in external_data_helper._get_initializer_tensors(model)):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return inline(m)


def serialized(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()`` with every weight inside (for another process, which cannot read the file)."""
    return inlined(model).SerializeToString()


__all__ = ["WeightFile", "array", "copy_to", "inline", "inlined", "offload", "offloaded",
           "point_at", "serialized", "without_data", "write_all"]
