"""Make detection data for ddddocr-det.onnx and the labels for examples/metrics/detect.py:box_agreement.

Images: generated captcha-like pictures (scattered letters and digits on a coloured background, the kind the
detector was trained for) or, with ``--images FOLDER``, the pictures of a folder (e.g.
../shared/data/imagenet-sample). Each is letterboxed the way ddddocr feeds the model: scaled to fit 416×416,
placed top-left, the rest filled with 114, BGR channels first. The original model runs on each and its
decoded boxes become the labels.

    python examples/make_det_labels.py [--n 24] [--seed 0] [--images FOLDER] [--out examples/data]
        [--model ../shared/models/ddddocr-det.onnx]

Writes OUT/det_inputs.npz (``images``: uint8 [n, 3, 416, 416], which convopt casts to the model's float input)
and OUT/det_labels.npz (``labels``: float32 [n, K, 4] boxes (x1, y1, x2, y2) per image padded with NaN rows, one
row per sample as ``convopt optimize --labels`` wants them; ``rows``: float32 [M, 5] rows (image, x1, y1, x2,
y2); ``counts``: boxes per image).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics.detect import INPUT, OUTPUT, SIZE, decode  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parents[1] / "shared" / "models" / "ddddocr-det.onnx"
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789abdefghkmnpqrt"
PAD = 114


def letterbox(im: Image.Image) -> np.ndarray:
    """An RGB picture as the model's input: uint8 [3, 416, 416] BGR, scaled to fit, top-left, padded with 114."""
    r = min(SIZE / im.width, SIZE / im.height)
    w, h = max(1, int(im.width * r)), max(1, int(im.height * r))
    canvas = np.full((SIZE, SIZE, 3), PAD, dtype=np.uint8)
    canvas[:h, :w] = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR))
    return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1))


def scattered_text(rng: np.random.Generator) -> Image.Image:
    """A captcha-like picture: 4–7 characters at random places, sizes, tilts and colours."""
    w, h = int(rng.integers(240, 400)), int(rng.integers(100, 180))
    bg = tuple(int(c) for c in rng.integers(150, 256, 3))
    im = Image.new("RGB", (w, h), bg)
    for _ in range(int(rng.integers(4, 8))):
        size = int(rng.integers(26, 48))
        glyph = Image.new("L", (size + 16, size + 16), 0)
        ImageDraw.Draw(glyph).text((8, 4), str(rng.choice(list(ALPHABET))), fill=255,
                                   font=ImageFont.load_default(size=size))
        glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR)
        colour = tuple(int(c) for c in rng.integers(0, 120, 3))
        x, y = int(rng.integers(0, max(1, w - glyph.width))), int(rng.integers(0, max(1, h - glyph.height)))
        im.paste(Image.new("RGB", glyph.size, colour), (x, y), glyph)
    return im


def make_images(n: int, seed: int, folder: Path | None = None) -> np.ndarray:
    """uint8 [n, 3, 416, 416]: generated pictures, or the first n pictures of ``folder`` (sorted by name)."""
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
        return np.stack([letterbox(Image.open(p)) for p in files])
    rng = np.random.default_rng(seed)
    return np.stack([letterbox(scattered_text(rng)) for _ in range(n)])


def detect_all(model: Path, images: np.ndarray) -> list[np.ndarray]:
    """The original model's decoded boxes [K, 4] for each image."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return [decode(sess.run([OUTPUT], {INPUT: images[i:i + 1].astype(np.float32)})[0][0])
            for i in range(images.shape[0])]


def label_table(boxes: list[np.ndarray]) -> np.ndarray:
    """Rows (image, x1, y1, x2, y2), float32 [M, 5]."""
    rows = [np.concatenate([np.full((len(b), 1), i), b], axis=1) for i, b in enumerate(boxes)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 5), np.float32)


def per_image(boxes: list[np.ndarray]) -> np.ndarray:
    """Boxes per image, float32 [n, K, 4], K the most boxes of an image, padded with NaN rows."""
    out = np.full((len(boxes), max([1, *map(len, boxes)]), 4), np.nan, np.float32)
    for i, b in enumerate(boxes):
        out[i, :len(b)] = b
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    images = make_images(args.n, args.seed, args.images)
    boxes = detect_all(args.model, images)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "det_inputs.npz", **{INPUT: images})
    np.savez_compressed(args.out / "det_labels.npz", labels=per_image(boxes), rows=label_table(boxes),
                        counts=np.array([len(b) for b in boxes], dtype=np.int64))
    counts = [len(b) for b in boxes]
    print(f"wrote {len(images)} images to {args.out}/det_inputs.npz and det_labels.npz; boxes per image: "
          f"{min(counts)}..{max(counts)}, {sum(counts)} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
