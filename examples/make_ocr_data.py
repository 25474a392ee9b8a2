"""Make OCR evaluation data for ddddocr-ocr.onnx and the labels for examples/metrics/ocr.py:string_match.

Renders random short strings (captcha-like: 4–6 letters and digits, jittered position, size and tilt, grey
background, noise lines) with Pillow's bundled font, runs the original model on each image and stores the index
sequence it reads as the label. The model's width is dynamic (T = W/8 time steps).

    python examples/make_ocr_data.py [--n 64] [--width 256] [--seed 0] [--out examples/data]
        [--model ../shared/models/ddddocr-ocr.onnx] [--charset-wheel ddddocr-1.6.1-py3-none-any.whl]
    python examples/make_ocr_data.py --ragged [--n 64] [--seed 0] [--out examples/data]

Fixed width (default): OUT/ocr_inputs.npz (``input1``: float32 [n, 1, 64, WIDTH], grey 0..1) and
OUT/ocr_labels.npz (``labels``: int64 [n, L], the index sequences read, padded with -1; ``text``: the strings
drawn).

``--ragged``: each image is as wide as its text (height 64, widths about 140 to 260), written twice: as a folder
OUT/ocr_ragged/ of PNGs (000.png, 001.png, ..., zero-padded so that they sort in sample order; convopt reads it with ``--preprocess unit --resize height=64``)
and as OUT/ocr_ragged.npz keyed per sample (``input1/0``, ``input1/1``, ...: float32 [1, 1, 64, W_i]), with
OUT/ocr_ragged_labels.npz (as above, in file order). The labels are what the model reads from the images as
convopt loads them.

With ``--charset-wheel`` (the ddddocr 1.6.1 wheel from PyPI: ``pip download ddddocr==1.6.1 --no-deps``) it also
decodes what the model reads (``read``) and prints how often that is the string drawn; ddddocr itself is
never imported.
"""
from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics.ocr import INPUT, OUTPUT, ctc_greedy  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parents[1] / "shared" / "models" / "ddddocr-ocr.onnx"
ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/l/I look-alikes
HEIGHT = 64


def render(text: str, width: int, rng: np.random.Generator) -> np.ndarray:
    """One captcha-like image, uint8 grey [HEIGHT, width]."""
    bg = int(rng.integers(200, 256))
    im = Image.new("L", (width, HEIGHT), bg)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):  # noise lines
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, HEIGHT))) for _ in range(2)]
        draw.line(pts, fill=int(rng.integers(120, 200)), width=1)
    font = ImageFont.load_default(size=int(rng.integers(34, 44)))
    x = int(rng.integers(4, 24))
    for ch in text:
        glyph = Image.new("L", (48, HEIGHT), 0)
        ImageDraw.Draw(glyph).text((6, int(rng.integers(4, 14))), ch, fill=255, font=font)
        glyph = glyph.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        ink = int(rng.integers(0, 90))
        im.paste(Image.new("L", glyph.size, ink), (x, 0), glyph)
        x += int(font.getlength(ch)) + int(rng.integers(0, 5))
        if x > width - 30:
            break
    return np.asarray(im, dtype=np.uint8)


def texts(n: int, rng: np.random.Generator) -> list[str]:
    return ["".join(rng.choice(list(ALPHABET), int(rng.integers(4, 7)))) for _ in range(n)]


def make_images(n: int, width: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n images uint8 [n, HEIGHT, width] and the strings drawn on them."""
    rng = np.random.default_rng(seed)
    drawn = texts(n, rng)
    return np.stack([render(t, width, rng) for t in drawn]), drawn


def fitted_width(text: str, rng: np.random.Generator) -> int:
    """A width that holds ``text`` at the largest font size render draws (44), with a random margin."""
    font = ImageFont.load_default(size=44)
    return int(28 + sum(font.getlength(ch) + 4 for ch in text) + rng.integers(0, 40))


def make_ragged_images(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n images uint8 [HEIGHT, W_i], each as wide as its text, and the strings drawn on them."""
    rng = np.random.default_rng(seed)
    drawn = texts(n, rng)
    return [render(t, fitted_width(t, rng), rng) for t in drawn], drawn


def read_sequences(model: Path, x: list[np.ndarray] | np.ndarray) -> list[list[int]]:
    """The index sequence the model reads from each image: float32 [1, HEIGHT, W] each (x[i] of an
    [n, 1, HEIGHT, W] array, or a list of images of different widths)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the model's declared output shape is wrong; ORT warns on every run
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return [ctc_greedy(sess.run([OUTPUT], {INPUT: np.asarray(xi)[None]})[0][:, 0, :]) for xi in x]


def pad(seqs: list[list[int]]) -> np.ndarray:
    """Sequences as int64 [n, max length] padded with -1."""
    out = np.full((len(seqs), max(1, max(map(len, seqs)))), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def load_ddddocr_charset(wheel: Path) -> list[str]:
    """The charset of ddddocr 1.6.1's common.onnx (CHARSET_BETA in ddddocr/charsets.py), read from the wheel
    without importing ddddocr."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read("ddddocr/charsets.py").decode("utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHARSET_BETA":
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{wheel} has no CHARSET_BETA in ddddocr/charsets.py")


def write_fixed(args: argparse.Namespace) -> tuple[list[list[int]], list[str]]:
    pixels, drawn = make_images(args.n, args.width, args.seed)
    x = (pixels.astype(np.float32) / 255.0)[:, None]
    seqs = read_sequences(args.model, x)
    np.savez_compressed(args.out / "ocr_inputs.npz", **{INPUT: x})
    print(f"wrote {args.n} samples of 64x{args.width} to {args.out}/ocr_inputs.npz")
    return seqs, drawn


def write_ragged(args: argparse.Namespace) -> tuple[list[list[int]], list[str]]:
    images, drawn = make_ragged_images(args.n, args.seed)
    folder = args.out / "ocr_ragged"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    xs = [(im.astype(np.float32) / 255.0)[None] for im in images]  # [1, HEIGHT, W]: what --preprocess unit gives
    digits = max(3, len(str(len(images) - 1)))  # names sort in sample order (convopt reads a folder sorted)
    for i, im in enumerate(images):
        Image.fromarray(im, "L").save(folder / f"{i:0{digits}d}.png")
    seqs = read_sequences(args.model, xs)
    np.savez_compressed(args.out / "ocr_ragged.npz", **{f"{INPUT}/{i}": x[None] for i, x in enumerate(xs)})
    widths = [im.shape[1] for im in images]
    print(f"wrote {args.n} samples of 64xW, W {min(widths)}..{max(widths)} ({len(set(widths))} widths), to "
          f"{folder}/ and {args.out}/ocr_ragged.npz")
    return seqs, drawn


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--ragged", action="store_true", help="images as wide as their text (see above)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--charset-wheel", type=Path)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seqs, drawn = (write_ragged if args.ragged else write_fixed)(args)
    labels = {"labels": pad(seqs), "text": np.array(drawn)}
    if args.charset_wheel:
        charset = load_ddddocr_charset(args.charset_wheel)
        labels["read"] = np.array(["".join(charset[k] for k in s) for s in seqs])
        exact = np.mean(labels["read"] == labels["text"])
        nocase = np.mean(np.char.lower(labels["read"]) == np.char.lower(labels["text"]))
        print(f"the original reads {100 * exact:.0f} % of the strings exactly, {100 * nocase:.0f} % ignoring case")
    name = "ocr_ragged_labels.npz" if args.ragged else "ocr_labels.npz"
    np.savez_compressed(args.out / name, **labels)
    print(f"wrote the index sequences the original reads to {args.out}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
