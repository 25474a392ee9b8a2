"""A folder of images as evaluation data: a normalization preset (``--preprocess``) and either the model's fixed
size (resize, then center-crop) or a resize rule (``--resize height=64``: one side fixed, the other following
each image's aspect ratio), which gives samples of different shapes (convopt.measure.samples).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError, InputError
from convopt.graph.shapes import Dim, input_dtype
from convopt.limits import check_data_memory
from convopt.measure.samples import ragged

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
RESIZE_HELP = ("write --resize height=H (the width follows each image's aspect ratio) or --resize width=W "
               "(the height follows)")


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


def preset_help() -> str:
    return "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())


@dataclass(frozen=True)
class Resize:
    """Resize each image so that ``side`` ("height" or "width") is ``size`` pixels, the other side following
    its aspect ratio (rounded, at least 1); bilinear, no crop."""

    side: str
    size: int

    def __post_init__(self) -> None:
        if self.side not in ("height", "width") or self.size < 1:
            raise InputError(f"cannot use --resize {self.side}={self.size}; {RESIZE_HELP}")

    @classmethod
    def parse(cls, text: str) -> Resize:
        """``height=64`` or ``width=256``."""
        side, sep, value = text.strip().lower().partition("=")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not sep or side.strip() not in ("height", "width") or size < 1:
            raise InputError(f"cannot read --resize {text!r}; {RESIZE_HELP}")
        return cls(side.strip(), size)

    def target(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) of an image of ``w`` × ``h`` after the resize."""
        if self.side == "height":
            return max(1, round(w * self.size / h)), self.size
        return self.size, max(1, round(h * self.size / w))

    def __str__(self) -> str:
        return f"{self.side}={self.size}"


def image_layout(shape: Sequence[Dim]) -> str:
    """"NHWC" if the last dim is 1 or 3 and the second is not, else "NCHW" (shape is rank 4)."""
    return "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"


def _open(path: Path, channels: int):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove it or replace it with a valid image") from None


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove it or replace it with a valid image") from None


def _pixels(im) -> np.ndarray:  # noqa: ANN001 -- a PIL image
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def load_image(path: Path, height: int, width: int, channels: int, preset: Preprocess) -> np.ndarray:
    """One image as float32 (H, W, C), normalized by ``preset``.

    Resize (bilinear, aspect ratio kept) to the smallest size covering round(H·256/224) × round(W·256/224),
    so a 224×224 input gets its short side at 256; then center-crop H×W at offsets floor((w − W)/2),
    floor((h − H)/2) (Caffe/Keras convention; torchvision rounds instead, which moves the crop one pixel
    on odd margins).
    """
    from PIL import Image

    im = _open(path, channels)
    th, tw = round(height * 256 / 224), round(width * 256 / 224)
    w, h = im.size
    scale = max(th / h, tw / w)
    size = (max(tw, round(w * scale)), max(th, round(h * scale)))
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    w, h = im.size
    left, top = (w - width) // 2, (h - height) // 2
    im = im.crop((left, top, left + width, top + height))
    return preset.normalize(_pixels(im))


def load_resized(path: Path, rule: Resize, channels: int, preset: Preprocess) -> np.ndarray:
    """One image as float32 (H, W, C) resized by ``rule`` (bilinear), normalized by ``preset``."""
    from PIL import Image

    im = _open(path, channels)
    size = rule.target(*im.size)
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    return preset.normalize(_pixels(im))


def image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


@dataclass(frozen=True)
class FolderImages:
    """What a folder gave: one array (fixed size: (n, ...)) or a ragged array of per-sample arrays, the file
    names kept (in sample order), a description, and how many images the folder holds."""

    array: np.ndarray
    files: list[str]
    source: str
    total: int


def _preset(folder: Path, preprocess: str | None) -> Preprocess:
    if preprocess is None:
        raise DataError(
            f"{folder} is a folder of images: pass --preprocess with one of the presets ({preset_help()})"
        )
    preset = PRESETS.get(preprocess.lower())
    if preset is None:
        raise DataError(f"unknown --preprocess {preprocess!r}; use one of: {preset_help()}")
    return preset


def _geometry(folder: Path, vi: onnx.ValueInfoProto, dims: Sequence[Dim]) -> tuple[str, Dim, Dim, Dim]:
    """(layout, channels, height, width) of an image input of ``dims`` (rank 4; a DataError otherwise)."""
    if len(dims) != 4:
        raise DataError(
            f"{folder} is a folder of images but input '{vi.name}' has shape {list(dims)}, not a 4-D image "
            "batch (NCHW or NHWC); give the data as an .npz instead"
        )
    layout = image_layout(dims)
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if c not in (1, 3):
        raise DataError(
            f"input '{vi.name}' (shape {list(dims)}, {layout}) has {c} channels; images give 1 (L) or 3 (RGB), "
            "so give the data as an .npz instead"
        )
    return layout, c, h, w


def _files(folder: Path, limit: int | None) -> tuple[list[Path], int]:
    all_files = image_files(folder)
    if not all_files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return (all_files[:limit] if limit is not None else all_files), len(all_files)


def load_folder(folder: Path, vi: onnx.ValueInfoProto, shape: tuple[int, ...], preprocess: str | None,
                limit: int | None) -> FolderImages:
    """Images resized and center-cropped to the model's input ``shape`` (rank 4), as one (n, ...) array."""
    preset = _preset(folder, preprocess)
    layout, c, h, w = _geometry(folder, vi, shape)
    assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
    files, total = _files(folder, limit)
    check_data_memory(2 * len(files) * h * w * c * 4 + len(files) * h * w * c * input_dtype(vi).itemsize,
                      f"{len(files)} images of {h}x{w}x{c}", "pass --limit to use fewer images")
    batch = np.stack([load_image(f, h, w, c, preset) for f in files])  # (N, H, W, C)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    arr = np.ascontiguousarray(batch.astype(input_dtype(vi)))
    desc = f"{folder} ({len(files)} of {total} images, --preprocess {preset.name}, {layout})"
    return FolderImages(arr, [f.name for f in files], desc, total)


def _check_rule(folder: Path, vi: onnx.ValueInfoProto, dims: Sequence[Dim], rule: Resize) -> None:
    """The rule fixes a side the model takes at that size (or leaves dynamic), and frees a dynamic side."""
    _, _, h, w = _geometry(folder, vi, dims)
    fixed, free = (h, w) if rule.side == "height" else (w, h)
    other = "width" if rule.side == "height" else "height"
    if isinstance(fixed, int) and fixed != rule.size:
        raise DataError(f"--resize {rule} contradicts input '{vi.name}' (shape {list(dims)}), whose {rule.side} "
                        f"is {fixed}; write --resize {rule.side}={fixed}")
    if isinstance(free, int):
        raise DataError(f"--resize {rule} lets the {other} follow each image, but input '{vi.name}' (shape "
                        f"{list(dims)}) takes a fixed {other} of {free}; drop --resize (images are then resized "
                        "and center-cropped to the model's size)")


def load_folder_ragged(folder: Path, vi: onnx.ValueInfoProto, dims: Sequence[Dim], preprocess: str | None,
                       rule: Resize, limit: int | None) -> FolderImages:
    """Images resized by ``rule`` (samples of different shapes), each as the model takes it: (1, C, H, W) or
    (1, H, W, C), cast to the input's dtype."""
    preset = _preset(folder, preprocess)
    _check_rule(folder, vi, dims, rule)
    layout, c, _, _ = _geometry(folder, vi, dims)
    assert isinstance(c, int)
    files, total = _files(folder, limit)
    dtype = input_dtype(vi)
    pixels = sum(int(np.prod(rule.target(*_size(f)))) for f in files)  # from the headers, before decoding
    check_data_memory(pixels * c * (4 + dtype.itemsize), f"{len(files)} images resized to {rule}",
                      "pass --limit to use fewer images")
    out = []
    for f in files:
        x = load_resized(f, rule, c, preset)  # (H, W, C)
        x = x.transpose(2, 0, 1) if layout == "NCHW" else x
        out.append(np.ascontiguousarray(x[None].astype(dtype)))
    desc = f"{folder} ({len(files)} of {total} images, --preprocess {preset.name}, --resize {rule}, {layout})"
    return FolderImages(ragged(out), [f.name for f in files], desc, total)
