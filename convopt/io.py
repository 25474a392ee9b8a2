"""Loading and saving models: bounded and validated on the way in, staged and committed on the way out.

load: regular file of at most ``max_bytes`` → bytes → ModelProto → external data (regular files confined
to the model's folder, counted in the same limit) → checker → opset check.
save: ModelProto → ``.convopt-<pid>-<name>.tmp`` beside the output → fsync → rename (convopt.writes); a
model too large for one protobuf goes with its tensors in ``<name>.data``, staged and renamed with it.
"""
from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from convopt.errors import InputError, ModelLoadError, OutputError, UnsupportedModelError
from convopt.graph import fill_output_types, find_cycle, inferred_dims, model_problem, shape_skeleton
from convopt.graph.offload import point_at
from convopt.limits import DEFAULT_MAX_MODEL_BYTES, fmt_bytes
from convopt.outputs import same_file as _same_file
from convopt.serialize import chunks
from convopt.text import native_stdout_captured, one_line, safe
from convopt.writes import Staged, atomic_write_bytes, commit, discard, stage

__all__ = ["atomic_write_bytes", "load_model", "load_model_report", "read_regular_file", "save_model",
           "save_outputs", "stage_model"]

MIN_OPSET = 7
# protobuf cannot serialize a message of 2 GiB or more; stay clear of the limit.
PROTOBUF_LIMIT = 2**31 - 2**24
# above this size the checker runs on a weight-free skeleton and the weights' sizes are checked apart: the full
# checker serializes and re-parses the whole model (two transient copies), which sets the peak memory of a load
FULL_CHECK_LIMIT = 64 * 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return safe(text[0]) if text else type(exc).__name__


class CheckerWarning(UserWarning):
    """What onnx's C++ checker printed (e.g. "Model contains experimental ops"), captured and re-issued as a
    Python warning: the CLI shows it as one escaped line, or nothing under -q."""


def read_regular_file(path: str | os.PathLike[str], limit: int, what: str,
                      error: type[InputError] = InputError) -> bytearray:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    The file is opened non-blocking and checked on its descriptor, so a FIFO cannot hang the read and a
    device (``/dev/zero``) or folder is refused before a byte is read; the size is checked before reading
    and again while reading (a ``/proc`` file reports size 0). Raises ``error`` with one line."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise error(f"file not found: {safe(p)} (expected {what})") from None
    except OSError as exc:
        raise error(f"cannot read {what} {safe(p)}: {safe(exc.strerror or exc)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{safe(p)} is a folder, not {what} file")
        raise error(f"{safe(p)} is not a regular file (a device, FIFO or socket); give {what} file")
    with os.fdopen(fd, "rb", buffering=0) as fh:
        too_big = error(f"{safe(p)} is larger than the {fmt_bytes(limit)} convopt reads as {what}")
        if st.st_size > limit:
            raise too_big
        try:
            return _read_all(fh, st.st_size, limit, too_big)
        except OSError as exc:
            raise error(f"cannot read {what} {safe(p)}: {safe(exc.strerror or exc)}") from None


def _read_all(fh: object, size: int, limit: int, too_big: InputError) -> bytearray:
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size:
            n = fh.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
    del buf[got:]
    while True:  # a file that grew since fstat, or one that reports no size
        more = fh.read(min(2**20, limit + 1 - len(buf)))  # type: ignore[attr-defined]
        if not more:
            return buf
        buf += more
        if len(buf) > limit:
            raise too_big


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports (0 when it imports none)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


def check_external_locations(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Refuse external-data locations that are absolute, leave the model's folder, hold a NUL byte or name
    anything but a regular file, before reading. Returns the external-data files (each once)."""
    base = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        if not loc:
            raise ModelLoadError(f"tensor '{safe(tensor.name)}' uses external data without a location")
        if "\x00" in loc:
            raise ModelLoadError(f"tensor '{safe(tensor.name)}' has an external-data location with a NUL byte "
                                 f"('{safe(loc)}'); the model is damaged: export it again")
        p = Path(loc)
        if p.is_absolute() or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise ModelLoadError(
                f"tensor '{safe(tensor.name)}' has an absolute external-data location '{safe(loc)}'; "
                "convopt only reads external data stored beside the model"
            )
        target = (base / p).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"tensor '{safe(tensor.name)}' has external-data location '{safe(loc)}' outside the model's folder; "
                "refused"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external-data file '{safe(loc)}' for tensor '{safe(tensor.name)}' is missing or not a regular "
                f"file (looked in {safe(base)})"
            )
        files[target] = None
    return list(files)


def parse_model(data: bytes, source: str = "<bytes>") -> onnx.ModelProto:
    """Parse bytes as an ONNX ModelProto, with a clear error when they are not one."""
    if not data:
        raise ModelLoadError(f"{source}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: not an ONNX model (cannot parse protobuf: {_first_line(exc)})") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(
            f"{source}: not an ONNX model (the protobuf has no ir_version, graph or opset_import)"
        )
    return model


@dataclass(frozen=True)
class LoadedModel:
    """A loaded, validated model, the warnings of its validation (one line each, for the user), and the
    external-data files its tensors were read from."""

    model: onnx.ModelProto
    warnings: tuple[str, ...] = ()
    data_files: tuple[Path, ...] = ()


def validate_model(model: onnx.ModelProto, source: str = "model") -> tuple[str, ...]:
    """Run onnx.checker and the opset checks; raise ModelLoadError/UnsupportedModelError. Graph outputs that
    declare no type or shape are typed by shape inference (in place); returns one warning per output filled."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset == 0:
        raise UnsupportedModelError(f"{source}: the model does not import the default ONNX domain")
    if opset > newest:
        raise UnsupportedModelError(
            f"{source}: opset {opset} is newer than this onnx package supports ({newest}); "
            "upgrade onnx or export with an older opset"
        )
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{source}: IR version {model.ir_version} is newer than this onnx package supports "
            f"({onnx.IR_VERSION}); upgrade onnx or export with an older IR version"
        )
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{source}: opset {opset} is too old (convopt supports opset {MIN_OPSET} and up); "
            "convert it with onnx.version_converter first"
        )
    cycle = find_cycle(model.graph)  # before the checker, which would only say "not topologically sorted"
    if cycle is not None:
        raise ModelLoadError(f"{source}: invalid ONNX model: {model_problem(model)}")
    try:
        warnings = fill_output_types(model)  # the checker demands output shapes, ORT and the IR spec do not
        run_checker(model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{source}: invalid ONNX model: {exc}") from exc
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise ModelLoadError(f"{source}: invalid ONNX model: {_first_line(exc)}") from exc
    except Exception as exc:  # the checker raises C++ exceptions of several types
        raise ModelLoadError(f"{source}: invalid ONNX model: {_first_line(exc)}") from exc
    problem = model_problem(model, inferred_dims(model))
    if problem is not None:
        raise ModelLoadError(f"{source}: invalid ONNX model: {problem}")
    return warnings


def run_checker(model: onnx.ModelProto, skeleton: bool = False) -> None:
    """onnx.checker within bounded memory: on the whole model below FULL_CHECK_LIMIT; above it (and always
    above 2 GB, where the checker cannot take the model), or with ``skeleton``, on a weight-free skeleton, plus
    the per-tensor checks for the weights left out. Raises what the checker raises, or ModelLoadError for a
    malformed weight. (The whole-model checker serializes and re-parses the model: two transient copies.)"""
    with native_stdout_captured() as printed:
        if not skeleton and approx_model_bytes(model) < min(FULL_CHECK_LIMIT, PROTOBUF_LIMIT):
            onnx.checker.check_model(model)
        else:
            _check_tensor_sizes(model)
            onnx.checker.check_model(shape_skeleton(model))
    for line in "".join(printed).splitlines():
        said = one_line(line.strip().removeprefix("Warning: "))
        if said:
            warnings.warn(f"onnx checker: {said}", CheckerWarning, stacklevel=2)


_ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4, onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * _ITEMSIZE.get(t.data_type, 8)


def approx_model_bytes(model: onnx.ModelProto) -> int:
    """The model's serialized size, estimated from its tensors' shapes (initializers and Constant nodes of the
    main graph) plus a little per node. ModelProto.ByteSize() is exact but, with the upb protobuf backend,
    serializes the whole model to measure it: two transient copies of a large model."""
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for n in model.graph.node:
        total += 256
        if n.op_type == "Constant":
            total += sum(_tensor_bytes(a.t) for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def fits_in_one_protobuf(model: onnx.ModelProto, limit: int | None = None) -> bool:
    """Whether the model serializes under ``limit`` (default PROTOBUF_LIMIT). Exact near the limit; far below
    it the estimate decides, so a normal-sized model is never serialized just to be measured."""
    limit = PROTOBUF_LIMIT if limit is None else limit
    if approx_model_bytes(model) < limit // 4:
        return True
    return model.ByteSize() < limit


def _check_tensor_sizes(model: onnx.ModelProto) -> None:
    """What onnx.checker verifies per tensor, for the initializers a shape skeleton leaves out: a known data
    type, one data field, and exactly as many stored values as the dims declare."""
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.UNDEFINED or t.data_type not in onnx.TensorProto.DataType.values():
            raise ModelLoadError(f"tensor '{t.name}' has no valid data type ({t.data_type})")
        fields = [f for f in ("raw_data", *_TYPED_FIELDS, "string_data") if len(getattr(t, f))]
        if len(fields) > 1:
            raise ModelLoadError(f"tensor '{t.name}' stores its data in more than one field ({', '.join(fields)})")
        n = 1
        for d in t.dims:
            n *= int(d)
        if t.HasField("raw_data") or t.raw_data:
            size = _ITEMSIZE.get(t.data_type)
            if size is not None and len(t.raw_data) != n * size:
                raise ModelLoadError(
                    f"tensor '{t.name}' has {len(t.raw_data)} bytes of data but its shape {list(t.dims)} "
                    f"needs {n * size}"
                )
            continue
        stored = [len(getattr(t, f)) for f in _TYPED_FIELDS if len(getattr(t, f))]
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and stored and stored[0] != n:
            raise ModelLoadError(f"tensor '{t.name}' stores {stored[0]} values but its shape {list(t.dims)} needs {n}")


def load_model(path: str | os.PathLike[str], *, validate: bool = True,
               max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Load and validate an ONNX model file; external data is read only from beside the model."""
    return load_model_report(path, validate=validate, max_bytes=max_bytes).model


def load_model_report(path: str | os.PathLike[str], *, validate: bool = True,
                      max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> LoadedModel:
    """load_model, with the warnings of validation (e.g. a graph output typed by shape inference) and the
    external-data files read. The model must be a regular file which, with its external data (regular files
    beside it), holds at most ``max_bytes``."""
    p = Path(path)
    data = read_regular_file(p, max_bytes, "an ONNX model", ModelLoadError)
    model = parse_model(data, safe(p))  # type: ignore[arg-type]
    del data
    files = check_external_locations(model, p.parent)
    if files:
        total = p.stat().st_size + sum(f.stat().st_size for f in files)
        if total > max_bytes:
            raise ModelLoadError(f"{safe(p)} and its external data hold {fmt_bytes(total)}, more than the "
                                 f"{fmt_bytes(max_bytes)} convopt reads; pass --max-model-bytes {total} to allow it")
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError,
                onnx.onnx_cpp2py_export.checker.ValidationError) as exc:  # e.g. a hard-linked data file
            raise ModelLoadError(f"{safe(p)}: cannot read external data: {_first_line(exc)}") from exc
    notes = validate_model(model, safe(p)) if validate else ()
    return LoadedModel(model, notes, tuple(files))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (convopt.outputs.same_file)."""
    return _same_file(Path(a), Path(b))


def stage_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Staged]:
    """Write ``model`` to temporary files beside ``path``: one file, or for a model too large for one
    protobuf its tensors in ``<name>.data`` first and then the model that points at it. Commit the result
    with convopt.writes.commit (the order is the order to rename in)."""
    out = Path(path)
    if fits_in_one_protobuf(model):
        return [stage(out, chunks(model))]  # one initializer at a time: no second copy of the weights
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data_name = out.name + ".data"
    data = stage(out.with_name(data_name), _external_chunks(m, data_name))
    try:
        return [data, stage(out, chunks(m))]
    except BaseException:
        discard([data])
        raise


def _external_chunks(m: onnx.ModelProto, location: str) -> Iterator[bytes]:
    """Yield the raw data of every initializer of at least 1 KiB (subgraphs included) and turn the tensor
    into a reference to ``location`` at that offset, as onnx's convert_model_to_external_data does."""
    offset = 0
    for t in external_data_helper._get_initializer_tensors(m):
        if not t.HasField("raw_data") or len(t.raw_data) < 1024:
            continue
        raw = t.raw_data
        t.ClearField("raw_data")
        point_at(t, location, offset, len(raw))
        offset += len(raw)
        yield raw


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Save atomically; refuse to overwrite the input model unless ``overwrite``. Returns the files written.

    Models too large for one protobuf are written with their tensors in ``<name>.data`` beside the output;
    both are renamed into place together (convopt.writes.commit)."""
    out = Path(path)
    if input_path is not None and same_file(out, input_path) and not overwrite:
        raise OutputError(f"refusing to overwrite the input model {safe(out)}; choose another -o or pass --overwrite")
    written = commit(stage_model(model, out))
    return [out] + [p for p in written if p != out]


def save_outputs(model: onnx.ModelProto, path: str | os.PathLike[str],
                 files: Sequence[tuple[Path, bytes]] = ()) -> list[Path]:
    """Save ``model`` (and its .data file) and ``files`` (path, bytes) together: all are staged first, then
    renamed in one commit with signals held (convopt.writes), so a report never describes a model that is not
    there and no model stands without its report. Returns the files written."""
    staged = stage_model(model, path)
    try:
        for p, data in files:
            staged.append(stage(p, [data]))
        return commit(staged)
    except BaseException:
        discard(staged)
        raise
