"""Make OCR evaluation data for ddddocr-ocr.onnx and the labels for examples/metrics/ocr.py:string_match.

Renders random short strings (captcha-like: 4–6 letters and digits, jittered position, size and tilt, grey
background, noise lines) with Pillow's bundled font, at one fixed size of 64×WIDTH (the model's width is
dynamic; convopt's .npz data holds one shape per input for now), runs the original model on each image and
stores the index sequence it reads as the label.

    python examples/make_ocr_data.py [--n 64] [--width 256] [--seed 0] [--out examples/data]
        [--model ../shared/models/ddddocr-ocr.onnx] [--charset-wheel ddddocr-1.6.1-py3-none-any.whl]

Writes OUT/ocr_inputs.npz (``input1``: float32 [n, 1, 64, WIDTH], grey 0..1) and OUT/ocr_labels.npz
(``labels``: int64 [n, L], the index sequences read, padded with -1; ``text``: the strings drawn). With
``--charset-wheel`` (the ddddocr 1.6.1 wheel from PyPI: ``pip download ddddocr==1.6.1 --no-deps``) it also
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


def make_images(n: int, width: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n images uint8 [n, HEIGHT, width] and the strings drawn on them."""
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(ALPHABET), int(rng.integers(4, 7)))) for _ in range(n)]
    return np.stack([render(t, width, rng) for t in texts]), texts


def read_sequences(model: Path, x: np.ndarray) -> list[list[int]]:
    """The index sequence the model reads from each image of x: float32 [n, 1, HEIGHT, W]."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the model's declared output shape is wrong; ORT warns on every run
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return [ctc_greedy(sess.run([OUTPUT], {INPUT: x[i:i + 1]})[0][:, 0, :]) for i in range(x.shape[0])]


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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--charset-wheel", type=Path)
    args = ap.parse_args(argv)
    pixels, texts = make_images(args.n, args.width, args.seed)
    x = (pixels.astype(np.float32) / 255.0)[:, None]
    seqs = read_sequences(args.model, x)
    labels = {"labels": pad(seqs), "text": np.array(texts)}
    if args.charset_wheel:
        charset = load_ddddocr_charset(args.charset_wheel)
        labels["read"] = np.array(["".join(charset[k] for k in s) for s in seqs])
        exact = np.mean(labels["read"] == labels["text"])
        nocase = np.mean(np.char.lower(labels["read"]) == np.char.lower(labels["text"]))
        print(f"the original reads {100 * exact:.0f} % of the strings exactly, {100 * nocase:.0f} % ignoring case")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "ocr_inputs.npz", **{INPUT: x})
    np.savez_compressed(args.out / "ocr_labels.npz", **labels)
    print(f"wrote {args.n} samples of 64x{args.width} to {args.out}/ocr_inputs.npz and ocr_labels.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
