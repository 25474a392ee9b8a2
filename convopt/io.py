"""Loading and saving models: validate on the way in, write atomically on the way out.

load: file → bytes → ModelProto → external data (confined to the model's folder) → checker → opset check.
save: ModelProto → temp file in the output's folder → fsync → os.replace (external data above 2 GB).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from convopt.errors import ModelLoadError, OutputError, UnsupportedModelError
from convopt.graph import fill_output_types, find_cycle, inferred_dims, model_problem, shape_skeleton

MIN_OPSET = 7
# protobuf cannot serialize a message of 2 GiB or more; stay clear of the limit.
PROTOBUF_LIMIT = 2**31 - 2**24
# above this size the checker runs on a weight-free skeleton and the weights' sizes are checked apart: the full
# checker serializes and re-parses the whole model (two transient copies), which sets the peak memory of a load
FULL_CHECK_LIMIT = 64 * 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports (0 when it imports none)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


def check_external_locations(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that are absolute or leave the model's folder, before reading."""
    base = base_dir.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        if not loc:
            raise ModelLoadError(f"tensor '{tensor.name}' uses external data without a location")
        p = Path(loc)
        if p.is_absolute() or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise ModelLoadError(
                f"tensor '{tensor.name}' has an absolute external-data location '{loc}'; "
                "convopt only reads external data stored beside the model"
            )
        target = (base / p).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"tensor '{tensor.name}' has external-data location '{loc}' outside the model's folder; refused"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external-data file '{loc}' for tensor '{tensor.name}' is missing (looked in {base})"
            )


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
    """A loaded, validated model and the warnings of its validation (one line each, for the user)."""

    model: onnx.ModelProto
    warnings: tuple[str, ...] = ()


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


def run_checker(model: onnx.ModelProto) -> None:
    """onnx.checker within bounded memory: on the whole model below FULL_CHECK_LIMIT; above it (and always
    above 2 GB, where the checker cannot take the model) on a weight-free skeleton, plus the per-tensor checks
    for the weights left out. Raises what the checker raises, or ModelLoadError for a malformed weight."""
    if approx_model_bytes(model) < min(FULL_CHECK_LIMIT, PROTOBUF_LIMIT):
        onnx.checker.check_model(model)
    else:
        _check_tensor_sizes(model)
        onnx.checker.check_model(shape_skeleton(model))


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


def load_model(path: str | os.PathLike[str], *, validate: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX model file; external data is read only from beside the model."""
    return load_model_report(path, validate=validate).model


def load_model_report(path: str | os.PathLike[str], *, validate: bool = True) -> LoadedModel:
    """load_model, with the warnings of validation (e.g. a graph output typed by shape inference)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelLoadError(f"{p} is a folder, not an ONNX model file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc.strerror or exc}") from exc
    model = parse_model(data, str(p))
    del data
    check_external_locations(model, p.parent)
    if any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(model)):
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{p}: cannot read external data: {_first_line(exc)}") from exc
    warnings = validate_model(model, str(p)) if validate else ()
    return LoadedModel(model, warnings)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def _file_mode(path: Path) -> int:
    """Mode for a new output file: the previous file's mode, else 0o666 minus the umask (mkstemp uses 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform or file system can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to path atomically: temp file in the same folder, fsync, rename."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _file_mode(p))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        _fsync_dir(folder)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
        raise


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Save atomically; refuse to overwrite the input model unless ``overwrite``. Returns the files written.

    Models too large for one protobuf are written with their tensors in ``<name>.data`` beside the output.
    """
    out = Path(path)
    if input_path is not None and same_file(out, input_path) and not overwrite:
        raise OutputError(f"refusing to overwrite the input model {out}; choose another -o or pass --overwrite")
    if fits_in_one_protobuf(model):
        atomic_write_bytes(out, model.SerializeToString(deterministic=True))
        return [out]
    return _save_with_external_data(model, out)


def _save_with_external_data(model: onnx.ModelProto, out: Path) -> list[Path]:
    """Write a >2 GB model: tensors into a temp folder beside the output, then rename both into place."""
    folder = out.parent if str(out.parent) else Path(".")
    data_name = out.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=folder))
    try:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        external_data_helper.convert_model_to_external_data(
            m, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
        )
        onnx.save_model(m, str(tmpdir / out.name))
        for name in (data_name, out.name):  # data first: a model file never points at missing data
            os.replace(tmpdir / name, folder / name)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        for f in tmpdir.glob("*"):
            f.unlink()
        tmpdir.rmdir()
    return [out, folder / data_name]
