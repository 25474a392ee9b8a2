"""Evaluation data: the samples every pass is measured on, one array per model input (axis 0 = samples), or,
when samples differ in shape, one array per sample (ragged data: convopt.measure.samples).

Sources: an ``.npz``/``.npy`` file, an ``.npz`` keyed per sample (``NAME/0``, ``NAME/1``, …:
convopt.measure.keyed), a folder of images with a named preprocessing preset and either the model's fixed size
or a resize rule (convopt.measure.images), or (no data) seeded random inputs, which measure fidelity to the
original model rather than accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError, InputError, ShapeError
# model inputs and their shapes live in the graph layer (the one resolver); these names stay importable from here
from convopt.graph.shapes import (  # noqa: F401
    declared_dims, graph_inputs, input_dtype, parse_input_shape, resolve_input_shapes, resolve_inputs,
)
from convopt.limits import check_data_memory
# image folders live in convopt.measure.images; these names stay importable from here
from convopt.measure.images import (  # noqa: F401
    IMAGE_SUFFIXES, PRESETS, Preprocess, Resize, image_layout, load_folder, load_folder_ragged, load_image,
)
from convopt.measure.keyed import keyed_members, read_keyed
from convopt.measure.labels import LABEL_KEYS, as_labels, resolve_labels
from convopt.measure.npz import ArrayHeader, NpzFile, check_real, npy_header, read_npy
from convopt.measure.samples import RUN_NOTE, TimingSample, is_ragged, timing_sample
from convopt.measure.targets import check_targets, load_targets

RANDOM_DATA_WARNING = "no --data given: measuring fidelity to the original model on random inputs, not accuracy"
SINGLE_INPUT_KEYS = ("images", "x")


@dataclass(frozen=True)
class EvalData:
    """Samples to evaluate on. ``inputs[name]`` has shape (n, *per_sample_shape), or for ragged data (samples of
    different shapes) is a ragged array of n per-sample arrays (1, *shape_i) (convopt.measure.samples);
    ``labels`` has n rows: class indices (n,), or for a task metric whatever it compares with (n, ...).
    ``timing``: for ragged data, the sample latency is timed on (kept by every subset and shard)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    warning: str | None = None
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sample ids (default 0..n-1)
    timing: TimingSample | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError(f"evaluation data from {self.source} has no input arrays")
        counts = {name: (a.shape[0] if a.ndim else None) for name, a in self.inputs.items()}
        if len(set(counts.values())) != 1 or None in counts.values():
            raise DataError(
                f"evaluation data from {self.source}: every input needs the same number of samples on axis 0, "
                f"got {counts}"
            )
        self._check_ragged()
        if self.index.size == 0:
            object.__setattr__(self, "index", np.arange(self.n))
        if self.index.shape != (self.n,):
            raise DataError(f"evaluation data from {self.source}: {self.n} samples but {self.index.size} ids")
        if self.labels is not None and (self.labels.ndim == 0 or self.labels.shape[0] != self.n):
            raise DataError(
                f"evaluation data from {self.source}: {self.n} samples but labels have shape "
                f"{tuple(self.labels.shape)}; give one integer label per sample (for a task metric: one row)"
            )
        if self.ragged and self.timing is None and self.n:
            object.__setattr__(self, "timing", timing_sample(self.inputs, self.index))

    def _check_ragged(self) -> None:
        kinds = {is_ragged(a) for a in self.inputs.values()}
        if len(kinds) > 1:
            raise DataError(f"evaluation data from {self.source} mixes inputs of one shape per sample and ragged "
                            "inputs; give every input one array per sample")
        if kinds == {True} and not all(isinstance(x, np.ndarray) and x.ndim >= 1 and x.shape[0] == 1
                                       for a in self.inputs.values() for x in a):
            raise DataError(f"evaluation data from {self.source}: every ragged sample must be an array of shape "
                            "(1, ...)")

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def ragged(self) -> bool:
        """True when the samples are held one array each (they differ in shape): they run one at a time."""
        return is_ragged(next(iter(self.inputs.values())))

    def subset(self, index: np.ndarray, note: str) -> "EvalData":
        """The samples at ``index`` (labels too), described as this source with ``note``."""
        return replace(self, inputs={k: a[index] for k, a in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[index],
                       source=f"{self.source} [{note}]", index=self.index[index])

    def rows(self, start: int, stop: int) -> "EvalData":
        """Samples [start, stop) as views (inputs, labels and sample ids), same source and timing sample."""
        return replace(self, inputs={k: a[start:stop] for k, a in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[start:stop], index=self.index[start:stop])

    def ragged_settings(self) -> dict[str, object] | None:
        """For the report's settings: how ragged data run, how many shapes the data loaded have, and which
        sample latency is timed on (None when the samples share one shape)."""
        if not self.ragged or self.timing is None:
            return None
        return {"run": RUN_NOTE, "shapes": self.timing.shapes, "latency_sample": self.timing.describe()}


# ---------------------------------------------------------------------------------------------------------
# Arrays and labels


def _pick_keys(keys: Sequence[str], names: list[str], path: Path) -> tuple[dict[str, str], str | None]:
    """Map npz members to model inputs: by input name; for one input, also `images`/`x` or the only array.
    Returns ({input name: member}, labels member or None)."""
    label_key = next((k for k in LABEL_KEYS if k in keys and k not in names), None)
    picked = {name: name for name in names if name in keys}
    if len(names) == 1 and not picked:
        candidates = [k for k in SINGLE_INPUT_KEYS if k in keys]
        if not candidates:
            candidates = [k for k in keys if k not in LABEL_KEYS]
            if len(candidates) != 1:
                candidates = []
        if candidates:
            picked[names[0]] = candidates[0]
    missing = [n for n in names if n not in picked]
    if missing:
        raise DataError(
            f"{path} has arrays {sorted(keys)} but no array for model input(s) "
            f"{', '.join(repr(m) for m in missing)}; name each array after its input "
            f"(np.savez(path, {missing[0]}=..., labels=...))"
        )
    return picked, label_key


def _check_header(name: str, header: ArrayHeader, shape: tuple[int, ...], path: Path) -> None:
    """The declared shape of the array for input ``name`` fits the model's samples (before any data is read)."""
    per_sample = tuple(shape[1:])
    if not header.shape or tuple(header.shape[1:]) != per_sample:
        raise DataError(
            f"array for input '{name}' in {path} has shape {header.shape}, but the model takes samples of "
            f"shape {per_sample} (input shape {shape}); store it as (samples, {', '.join(map(str, per_sample))})"
        )
    if header.shape[0] == 0:
        raise DataError(f"array for input '{name}' in {path} has no samples")


def _read_arrays(
    path: Path, vis: list[onnx.ValueInfoProto], shapes: Mapping[str, tuple[int, ...]], limit: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
    """(inputs cast to the model's dtypes, labels or None, samples in the file) from an .npz or .npy, reading
    headers first, then only the first ``limit`` rows, within the memory limit."""
    names = [v.name for v in vis]
    npz = NpzFile(path) if path.suffix.lower() == ".npz" else None
    try:
        if npz is not None:
            keys, label_key = _pick_keys(list(npz.headers), names, path)
            headers = {name: npz.headers[k] for name, k in keys.items()}
        else:
            if len(vis) != 1:
                raise DataError(f"{path} is one array but the model has {len(vis)} inputs; use an .npz")
            keys, label_key, headers = {names[0]: names[0]}, None, {names[0]: npy_header(path)}
        for v in vis:
            check_real(headers[v.name].dtype, f"array '{keys[v.name]}' in {path}")  # an object array: the hint first
            _check_header(v.name, headers[v.name], shapes[v.name], path)
        counts = {k: h.shape[0] for k, h in headers.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"arrays in {path} have different sample counts {counts}; give the same number per input")
        n_total = next(iter(counts.values()))
        rows = min(n_total, limit or n_total)
        need = sum(rows * h.row_bytes + (0 if h.dtype == input_dtype(v) else
                                          rows * (h.row_bytes // max(h.dtype.itemsize, 1)) * input_dtype(v).itemsize)
                   for v, h in zip(vis, headers.values()))
        check_data_memory(need, f"{rows} samples from {path}", "pass --limit to use fewer samples")
        raw = {v.name: (npz.read(keys[v.name], rows) if npz is not None else read_npy(path, rows)) for v in vis}
        labels = None
        if npz is not None and label_key is not None:
            lh = npz.headers[label_key]
            if lh.rows != n_total:
                raise DataError(f"{path} has {lh.rows} labels for {n_total} samples; give one per sample")
            check_data_memory(rows * max(lh.row_bytes, 8), f"labels from {path}", "pass --limit")
            labels = npz.read(label_key, rows)
    finally:
        if npz is not None:
            npz.close()
    inputs = {v.name: _check_and_cast(v.name, raw.pop(v.name), shapes[v.name], input_dtype(v), path) for v in vis}
    return inputs, labels, n_total


def _check_and_cast(name: str, arr: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> np.ndarray:
    per_sample = tuple(shape[1:])
    if arr.ndim == 0 or tuple(arr.shape[1:]) != per_sample:
        raise DataError(
            f"array for input '{name}' in {path} has shape {tuple(arr.shape)}, but the model takes samples of "
            f"shape {per_sample} (input shape {shape}); store it as (samples, {', '.join(map(str, per_sample))})"
        )
    if arr.shape[0] == 0:
        raise DataError(f"array for input '{name}' in {path} has no samples")
    check_real(arr.dtype, f"the array for input '{name}' in {path}")
    if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(
                f"input '{name}' takes {dtype} but {path} holds non-integer floats; store integer values"
            )
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Random values made directly in ``dtype`` (float16 and other floats via float32)."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape, dtype=np.uint8).astype(bool)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape, dtype=dtype)
    if dtype in (np.float32, np.float64):
        return rng.random(size=shape, dtype=dtype)
    return rng.random(size=shape, dtype=np.float32).astype(dtype)


def random_eval_data(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *, seed: int = 0, samples: int = 8
) -> EvalData:
    """Seeded random inputs: float uniform in [0, 1); uint8 uniform 0..255; other integers 0..9; bool 0/1."""
    if samples < 1:
        raise InputError(f"random_samples must be at least 1, got {samples}")
    rng = np.random.default_rng(seed)
    plan = [(vi.name, (samples, *shapes[vi.name][1:]), input_dtype(vi)) for vi in graph_inputs(model)]
    need = sum(math.prod(shape) * max(dtype.itemsize, 4 if dtype.kind == "f" else 1) for _, shape, dtype in plan)
    check_data_memory(need, f"random evaluation data ({samples} samples of "
                      + ", ".join(f"{n} {'x'.join(map(str, s[1:]))} {d}" for n, s, d in plan) + ")",
                      "pass --no-eval to rewrite without measuring, or --input-shape for a smaller dynamic input")
    inputs = {name: _random_array(rng, shape, dtype) for name, shape, dtype in plan}
    return EvalData(inputs, None, f"random inputs ({samples} samples, seed {seed})", RANDOM_DATA_WARNING)


def _labels(labels: Path | str | np.ndarray | None, found: np.ndarray | None, files: list[str] | None,
            n_total: int, n_used: int, targets: bool, path: Path) -> np.ndarray | None:
    """The labels of the samples used: ``labels`` (a file or array) over ``found`` (the data's own); class
    indices, or for a task metric (``targets``) any real rows (convopt.measure.targets)."""
    if labels is not None:
        return load_targets(labels, files, n_total, n_used) if targets else resolve_labels(labels, files, n_total,
                                                                                           n_used)
    if found is None:
        return None
    return check_targets(found, n_used, str(path)) if targets else as_labels(found, str(path))[:n_used]


def _keyed(path: Path, names: Sequence[str]) -> bool:
    """True for an .npz whose members are keyed per sample (NAME/0, NAME/1, ...) for a model input NAME."""
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    with NpzFile(path) as npz:
        return bool(keyed_members(list(npz.headers), names))


def _load_ragged(model: onnx.ModelProto, vis: list[onnx.ValueInfoProto], path: Path, rule: Resize | None,
                 preprocess: str | None, labels: Path | str | np.ndarray | None,
                 hints: Mapping[str, tuple[int, ...]] | None, limit: int | None, targets: bool) -> EvalData:
    """Samples of different shapes: a folder of images resized by ``rule``, or an .npz keyed per sample. Each
    sample is checked against the inputs' declared dims (dynamic dims are free); ``hints`` (--input-shape)
    only choose the sample latency is timed on."""
    resolve_inputs(model, hints)  # a hint naming no input, of the wrong rank, ...: the usual ShapeError
    dims = {v.name: declared_dims(v) for v in vis}
    for name, d in dims.items():
        if d is not None and d and isinstance(d[0], int) and d[0] != 1:
            raise DataError(f"samples of different shapes run one at a time, but input '{name}' takes a fixed "
                            f"batch of {d[0]}; give samples of one shape in an .npz instead")
    found: np.ndarray | None = None
    files: list[str] | None = None
    if rule is not None:
        if len(vis) != 1:
            raise DataError(f"{path} is a folder of images but the model has {len(vis)} inputs; give an .npz keyed "
                            "per sample instead")
        got = load_folder_ragged(path, vis[0], dims[vis[0].name] or (), preprocess, rule, limit)
        inputs, files, source, n_total = {vis[0].name: got.array}, got.files, got.source, got.total
    else:
        if preprocess is not None:
            raise DataError("--preprocess applies to a folder of images; arrays in an .npz are fed as they are")
        with NpzFile(path) as npz:
            inputs, n_total = read_keyed(npz, path, vis, dims, limit)
            n_used = next(iter(inputs.values())).shape[0]
            key = next((k for k in LABEL_KEYS if k in npz.headers), None)
            if key is not None and labels is None:
                if npz.headers[key].rows != n_total:
                    raise DataError(f"{path} has {npz.headers[key].rows} labels for {n_total} samples; give one "
                                    "per sample")
                check_data_memory(n_used * max(npz.headers[key].row_bytes, 8), f"labels from {path}", "pass --limit")
                found = npz.read(key, n_used)
        source = f"{path} ({n_used} of {n_total} samples, one array each)"
    n_used = next(iter(inputs.values())).shape[0]
    data = EvalData(inputs, _labels(labels, found, files, n_total, n_used, targets, path), source, None)
    timing = timing_sample(data.inputs, data.index, hints)
    return replace(data, source=f"{source}: {timing.shapes} shapes", timing=timing)


def load_eval_data(
    model: onnx.ModelProto,
    data: Path | str | None,
    *,
    preprocess: str | None = None,
    labels: Path | str | np.ndarray | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    limit: int | None = None,
    seed: int = 0,
    random_samples: int = 8,
    resize: str | Resize | None = None,
    targets: bool = False,
) -> EvalData:
    """Load evaluation data for ``model``.

    ``data``: an ``.npz`` (arrays named after the inputs; for a single-input model also ``images``/``x``
    or the only non-label array; ``labels``/``y`` give labels), an ``.npz`` keyed per sample (``NAME/0``,
    ``NAME/1``, …: samples of different shapes, convopt.measure.keyed), an ``.npy`` (single-input models), a
    folder of images (needs ``preprocess``, one of :data:`PRESETS`; with ``resize``, e.g. ``height=64``, each
    image keeps its aspect ratio and the samples differ in shape), or None for seeded random inputs with a
    warning. Samples of different shapes are ragged data (:class:`EvalData`), run one sample at a time.
    ``labels`` (CSV with file,label; .npy; .npz; ndarray) overrides labels inside the npz: class indices, or
    with ``targets`` (a task metric judges the samples) any real array with one row per sample.
    ``limit`` keeps the first samples (sorted file names for a folder). Arrays are cast to each input's dtype.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    rule = Resize.parse(resize) if isinstance(resize, str) else resize
    path = None if data is None else Path(data)
    if rule is not None and (path is None or not path.is_dir()):
        raise DataError(f"--resize applies to a folder of images (with --preprocess), not {path or 'random inputs'}; "
                        "drop --resize")
    vis = graph_inputs(model)
    if path is not None and vis and (rule is not None or _keyed(path, [v.name for v in vis])):
        if any(declared_dims(v) == () for v in vis):
            raise ShapeError("a model input is a scalar; convopt feeds samples along a leading batch axis, so every "
                             "input needs rank ≥ 1")
        return _load_ragged(model, vis, path, rule, preprocess, labels, input_shapes, limit, targets)
    shapes = resolve_input_shapes(model, input_shapes)
    if not vis:
        raise InputError("the model has no inputs to feed")
    scalars = [name for name, shape in shapes.items() if not shape]
    if scalars:
        raise ShapeError(
            f"input(s) {scalars} are scalars; convopt feeds samples along a leading batch axis, so every input "
            "needs rank ≥ 1"
        )
    if path is None:
        if labels is not None:
            raise DataError("labels were given without --data; pass the data the labels belong to")
        return random_eval_data(model, shapes, seed=seed, samples=random_samples)
    if not path.exists():
        raise DataError(f"data not found: {path}; pass an .npz file or a folder of images")
    files: list[str] | None = None
    if path.is_dir():
        if len(vis) != 1:
            raise DataError(
                f"{path} is a folder of images but the model has {len(vis)} inputs; give an .npz with one array "
                "per input"
            )
        got = load_folder(path, vis[0], shapes[vis[0].name], preprocess, limit)
        inputs, files, source, n_total = {vis[0].name: got.array}, got.files, got.source, got.total
        found_labels = None
    else:
        if path.suffix.lower() not in (".npz", ".npy"):
            raise DataError(
                f"cannot read data {path}: use an .npz (arrays named after the inputs), .npy, or a folder of images"
            )
        if preprocess is not None:
            raise DataError("--preprocess applies to a folder of images; arrays in an .npz are fed as they are")
        inputs, found_labels, n_total = _read_arrays(path, vis, shapes, limit)
        source = f"{path} ({min(n_total, limit or n_total)} of {n_total} samples)"
    n_used = next(iter(inputs.values())).shape[0]
    return EvalData(inputs, _labels(labels, found_labels, files, n_total, n_used, targets, path), source, None)
