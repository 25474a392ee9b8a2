"""Evaluation data: the samples every pass is measured on, one array per model input (axis 0 = samples).

Sources: an ``.npz``/``.npy`` file, a folder of images with a named preprocessing preset, or (no data)
seeded random inputs, which measure fidelity to the original model rather than accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError, InputError, ShapeError
# model inputs and their shapes live in the graph layer (the one resolver); these names stay importable from here
from convopt.graph.shapes import graph_inputs, input_dtype, parse_input_shape, resolve_input_shapes  # noqa: F401
from convopt.limits import check_data_memory
from convopt.measure.labels import LABEL_KEYS, as_labels, resolve_labels
from convopt.measure.npz import ArrayHeader, NpzFile, check_real, npy_header, read_npy

RANDOM_DATA_WARNING = "no --data given: measuring fidelity to the original model on random inputs, not accuracy"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SINGLE_INPUT_KEYS = ("images", "x")


@dataclass(frozen=True)
class EvalData:
    """Samples to evaluate on. ``inputs[name]`` has shape (n, *per_sample_shape); ``labels`` shape (n,)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    warning: str | None = None
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sample ids (default 0..n-1)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError(f"evaluation data from {self.source} has no input arrays")
        counts = {name: (a.shape[0] if a.ndim else None) for name, a in self.inputs.items()}
        if len(set(counts.values())) != 1 or None in counts.values():
            raise DataError(
                f"evaluation data from {self.source}: every input needs the same number of samples on axis 0, "
                f"got {counts}"
            )
        if self.index.size == 0:
            object.__setattr__(self, "index", np.arange(self.n))
        if self.index.shape != (self.n,):
            raise DataError(f"evaluation data from {self.source}: {self.n} samples but {self.index.size} ids")
        if self.labels is not None and self.labels.shape != (self.n,):
            raise DataError(
                f"evaluation data from {self.source}: {self.n} samples but labels have shape "
                f"{tuple(self.labels.shape)}; give one integer label per sample"
            )

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(next(iter(self.inputs.values())).shape[0])

    def subset(self, index: np.ndarray, note: str) -> "EvalData":
        """The samples at ``index`` (labels too), described as this source with ``note``."""
        return EvalData({k: a[index] for k, a in self.inputs.items()},
                        None if self.labels is None else self.labels[index], f"{self.source} [{note}]", self.warning,
                        self.index[index])


# ---------------------------------------------------------------------------------------------------------
# Image preprocessing


@dataclass(frozen=True)
class Preprocess:
    """x = (pixels[channel order] * scale - mean) / std, per channel; grayscale uses the channel means."""

    name: str
    order: str  # "RGB" | "BGR"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: (H, W, C) uint8 in RGB order (C = 3) or luminance (C = 1). Returns float32 (H, W, C)."""
        x = pixels.astype(np.float32)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if x.shape[-1] == 3:
            if self.order == "BGR":
                x = x[..., ::-1]
        else:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return ((x * np.float32(self.scale) - mean) / std).astype(np.float32)


PRESETS: dict[str, Preprocess] = {
    p.name: p
    for p in (
        Preprocess("imagenet", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                   "RGB /255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225) (torchvision)"),
        Preprocess("caffe", "BGR", 1.0, (103.94, 116.78, 123.68), (1.0, 1.0, 1.0),
                   "BGR 0..255 minus mean (103.94, 116.78, 123.68) in BGR order (Caffe)"),
        Preprocess("unit", "RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB 0..1"),
        Preprocess("raw", "RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB 0..255"),
    )
}


def _preset_help() -> str:
    return "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())


def image_layout(shape: Sequence[int]) -> str:
    """"NHWC" if the last dim is 1 or 3 and the second is not, else "NCHW" (shape is rank 4)."""
    return "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"


def load_image(path: Path, height: int, width: int, channels: int, preset: Preprocess) -> np.ndarray:
    """One image as float32 (H, W, C), normalized by ``preset``.

    Resize (bilinear, aspect ratio kept) to the smallest size covering round(H·256/224) × round(W·256/224),
    so a 224×224 input gets its short side at 256; then center-crop H×W at offsets floor((w − W)/2),
    floor((h − H)/2) (Caffe/Keras convention; torchvision rounds instead, which moves the crop one pixel
    on odd margins).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove it or replace it with a valid image") from None
    th, tw = round(height * 256 / 224), round(width * 256 / 224)
    w, h = im.size
    scale = max(th / h, tw / w)
    size = (max(tw, round(w * scale)), max(th, round(h * scale)))
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    w, h = im.size
    left, top = (w - width) // 2, (h - height) // 2
    im = im.crop((left, top, left + width, top + height))
    pixels = np.asarray(im, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return preset.normalize(pixels)


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def _load_image_folder(
    folder: Path, vi: onnx.ValueInfoProto, shape: tuple[int, ...], preprocess: str | None, limit: int | None
) -> tuple[np.ndarray, list[str], str, int]:
    if preprocess is None:
        raise DataError(
            f"{folder} is a folder of images: pass --preprocess with one of the presets ({_preset_help()})"
        )
    preset = PRESETS.get(preprocess.lower())
    if preset is None:
        raise DataError(f"unknown --preprocess {preprocess!r}; use one of: {_preset_help()}")
    if len(shape) != 4:
        raise DataError(
            f"{folder} is a folder of images but input '{vi.name}' has shape {list(shape)}, not a 4-D image "
            "batch (NCHW or NHWC); give the data as an .npz instead"
        )
    layout = image_layout(shape)
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if c not in (1, 3):
        raise DataError(
            f"input '{vi.name}' (shape {list(shape)}, {layout}) has {c} channels; images give 1 (L) or 3 (RGB), "
            "so give the data as an .npz instead"
        )
    all_files = _image_files(folder)
    if not all_files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    files = all_files[:limit] if limit is not None else all_files
    check_data_memory(2 * len(files) * h * w * c * 4 + len(files) * h * w * c * input_dtype(vi).itemsize,
                      f"{len(files)} images of {h}x{w}x{c}", "pass --limit to use fewer images")
    batch = np.stack([load_image(f, h, w, c, preset) for f in files])  # (N, H, W, C)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    arr = np.ascontiguousarray(batch.astype(input_dtype(vi)))
    desc = f"{folder} ({len(files)} of {len(all_files)} images, --preprocess {preset.name}, {layout})"
    return arr, [f.name for f in files], desc, len(all_files)


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
) -> EvalData:
    """Load evaluation data for ``model``.

    ``data``: an ``.npz`` (arrays named after the inputs; for a single-input model also ``images``/``x``
    or the only non-label array; ``labels``/``y`` give labels), an ``.npy`` (single-input models), a folder
    of images (needs ``preprocess``, one of :data:`PRESETS`), or None for seeded random inputs with a
    warning. ``labels`` (CSV with file,label; .npy; .npz; ndarray) overrides labels inside the npz.
    ``limit`` keeps the first samples (sorted file names for a folder). Arrays are cast to each input's dtype.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    shapes = resolve_input_shapes(model, input_shapes)
    vis = graph_inputs(model)
    if not vis:
        raise InputError("the model has no inputs to feed")
    scalars = [name for name, shape in shapes.items() if not shape]
    if scalars:
        raise ShapeError(
            f"input(s) {scalars} are scalars; convopt feeds samples along a leading batch axis, so every input "
            "needs rank ≥ 1"
        )
    if data is None:
        if labels is not None:
            raise DataError("labels were given without --data; pass the data the labels belong to")
        return random_eval_data(model, shapes, seed=seed, samples=random_samples)
    path = Path(data)
    if not path.exists():
        raise DataError(f"data not found: {path}; pass an .npz file or a folder of images")
    files: list[str] | None = None
    if path.is_dir():
        if len(vis) != 1:
            raise DataError(
                f"{path} is a folder of images but the model has {len(vis)} inputs; give an .npz with one array "
                "per input"
            )
        arr, files, source, n_total = _load_image_folder(path, vis[0], shapes[vis[0].name], preprocess, limit)
        inputs = {vis[0].name: arr}
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
    label_arr: np.ndarray | None = None
    if labels is not None:
        label_arr = resolve_labels(labels, files, n_total, n_used)
    elif found_labels is not None:
        label_arr = as_labels(found_labels, str(path))[:n_used]  # its count was checked on the header
    return EvalData(inputs, label_arr, source, None)
