"""Evaluation data: the samples every pass is measured on, one array per model input (axis 0 = samples).

Sources: an ``.npz``/``.npy`` file, a folder of images with a named preprocessing preset, or (no data)
seeded random inputs, which measure fidelity to the original model rather than accuracy.
"""
from __future__ import annotations

import csv
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError, InputError, ShapeError
# model inputs and their shapes live in the graph layer (the one resolver); these names stay importable from here
from convopt.graph.shapes import graph_inputs, input_dtype, parse_input_shape, resolve_input_shapes  # noqa: F401

RANDOM_DATA_WARNING = "no --data given: measuring fidelity to the original model on random inputs, not accuracy"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABEL_KEYS = ("labels", "y")
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
    batch = np.stack([load_image(f, h, w, c, preset) for f in files])  # (N, H, W, C)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    arr = np.ascontiguousarray(batch.astype(input_dtype(vi)))
    desc = f"{folder} ({len(files)} of {len(all_files)} images, --preprocess {preset.name}, {layout})"
    return arr, [f.name for f in files], desc, len(all_files)


# ---------------------------------------------------------------------------------------------------------
# Arrays and labels


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {path} as an .npz archive: {e}") from None


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as an .npy array: {e}") from None


def _pick_arrays(
    arrays: dict[str, np.ndarray], names: list[str], path: Path
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Map npz arrays to model inputs: by input name; for one input, also `images`/`x` or the only array."""
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays and k not in names), None)
    picked: dict[str, np.ndarray] = {}
    for name in names:
        if name in arrays:
            picked[name] = arrays[name]
    if len(names) == 1 and not picked:
        candidates = [k for k in SINGLE_INPUT_KEYS if k in arrays]
        if not candidates:
            candidates = [k for k in arrays if k not in LABEL_KEYS]
            if len(candidates) != 1:
                candidates = []
        if candidates:
            picked[names[0]] = arrays[candidates[0]]
    missing = [n for n in names if n not in picked]
    if missing:
        raise DataError(
            f"{path} has arrays {sorted(arrays)} but no array for model input(s) "
            f"{', '.join(repr(m) for m in missing)}; name each array after its input "
            f"(np.savez(path, {missing[0]}=..., labels=...))"
        )
    return picked, labels


def _check_and_cast(name: str, arr: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> np.ndarray:
    per_sample = tuple(shape[1:])
    if arr.ndim == 0 or tuple(arr.shape[1:]) != per_sample:
        raise DataError(
            f"array for input '{name}' in {path} has shape {tuple(arr.shape)}, but the model takes samples of "
            f"shape {per_sample} (input shape {shape}); store it as (samples, {', '.join(map(str, per_sample))})"
        )
    if arr.shape[0] == 0:
        raise DataError(f"array for input '{name}' in {path} has no samples")
    if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(
                f"input '{name}' takes {dtype} but {path} holds non-integer floats; store integer values"
            )
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _as_labels(arr: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"labels from {where} have shape {a.shape}; give one integer class index per sample")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise DataError(f"labels from {where} are not integers; give integer class indices")
    elif a.dtype.kind not in "iub":
        raise DataError(f"labels from {where} have dtype {a.dtype}; give integer class indices")
    return a.astype(np.int64)


def _read_label_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """(file names or None, labels in row order) from a CSV with a header containing a `label` column."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read labels CSV {path}: {e}") from None
    if not rows or "label" not in rows[0]:
        raise DataError(f"labels CSV {path} needs a header row with a 'label' column (and 'file' for images)")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"labels CSV {path}: the 'label' column must hold integer class indices") from None
    files = [str(r.get("file") or "") for r in rows] if "file" in rows[0] else None
    return files, labels


def _resolve_labels(
    labels: Path | str | np.ndarray, files: list[str] | None, n_total: int, n_used: int
) -> np.ndarray:
    """Labels of the ``n_used`` samples kept (the first ones of ``n_total``). ``files``: the kept image file
    names when the data is a folder; a CSV with a `file` column is then matched by name, anything else
    by order."""
    if isinstance(labels, np.ndarray):
        out = _as_labels(labels, "the given array")
        where = "the given array"
    else:
        path = Path(labels)
        where = str(path)
        if not path.is_file():
            raise DataError(f"labels file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            csv_files, csv_labels = _read_label_csv(path)
            if files is not None:
                if csv_files is None:
                    raise DataError(f"labels CSV {path} needs a 'file' column to match the image file names")
                by_name = {Path(f).name: int(lab) for f, lab in zip(csv_files, csv_labels)}
                missing = [f for f in files if f not in by_name]
                if missing:
                    raise DataError(
                        f"labels CSV {path} has no row for {len(missing)} image(s), e.g. {missing[:3]}; "
                        "add a row per image (file,label)"
                    )
                return np.array([by_name[f] for f in files], dtype=np.int64)
            out = csv_labels
        elif suffix == ".npy":
            out = _as_labels(_open_npy(path), where)
        elif suffix == ".npz":
            arrays = _open_npz(path)
            key = next((k for k in LABEL_KEYS if k in arrays), None)
            if key is None and len(arrays) == 1:
                key = next(iter(arrays))
            if key is None:
                raise DataError(f"{path} has arrays {sorted(arrays)}; name the labels array 'labels'")
            out = _as_labels(arrays[key], where)
        else:
            raise DataError(f"labels file {path} must be .csv (file,label), .npy or .npz")
    if out.shape[0] != n_total:
        hint = "; use a CSV with file,label columns to match images by name" if files is not None else ""
        raise DataError(f"labels from {where} have {out.shape[0]} entries but the data has {n_total} samples{hint}")
    return out[:n_used]


def random_eval_data(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *, seed: int = 0, samples: int = 8
) -> EvalData:
    """Seeded random inputs: float uniform in [0, 1); uint8 uniform 0..255; other integers 0..9; bool 0/1."""
    if samples < 1:
        raise InputError(f"random_samples must be at least 1, got {samples}")
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for vi in graph_inputs(model):
        dtype = input_dtype(vi)
        shape = (samples, *shapes[vi.name][1:])
        if dtype == np.bool_:
            arr = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype == np.uint8:
            arr = rng.integers(0, 256, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            arr = rng.random(size=shape, dtype=np.float64).astype(dtype)
        inputs[vi.name] = arr
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
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays, found_labels = _pick_arrays(_open_npz(path), [v.name for v in vis], path)
        elif suffix == ".npy":
            if len(vis) != 1:
                raise DataError(f"{path} is one array but the model has {len(vis)} inputs; use an .npz")
            arrays, found_labels = {vis[0].name: _open_npy(path)}, None
        else:
            raise DataError(
                f"cannot read data {path}: use an .npz (arrays named after the inputs), .npy, or a folder of images"
            )
        if preprocess is not None:
            raise DataError("--preprocess applies to a folder of images; arrays in an .npz are fed as they are")
        inputs = {v.name: _check_and_cast(v.name, arrays[v.name], shapes[v.name], input_dtype(v), path) for v in vis}
        counts = {k: a.shape[0] for k, a in inputs.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"arrays in {path} have different sample counts {counts}; give the same number per input")
        n_total = next(iter(counts.values()))
        if limit is not None:
            inputs = {k: a[:limit] for k, a in inputs.items()}
        source = f"{path} ({min(n_total, limit or n_total)} of {n_total} samples)"
    n_used = next(iter(inputs.values())).shape[0]
    label_arr: np.ndarray | None = None
    if labels is not None:
        label_arr = _resolve_labels(labels, files, n_total, n_used)
    elif found_labels is not None:
        label_arr = _as_labels(found_labels, str(path))
        if label_arr.shape[0] != n_total:
            raise DataError(f"{path} has {label_arr.shape[0]} labels for {n_total} samples; give one per sample")
        label_arr = label_arr[:n_used]
    return EvalData(inputs, label_arr, source, None)
