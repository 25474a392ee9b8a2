#!/usr/bin/env python
"""Train a benchmark model: a plain VGG-style CNN (six dense 3×3 convs) on scikit-learn's digits, exported to ONNX.

Why: random-weight models lack the decaying singular-value spectra of trained weights, so low-rank factorization
benchmarks need a trained plain conv stack. Development only; needs the CPU build of PyTorch and scikit-learn
(neither is a convopt dependency):

    pip install torch==2.13.0 scikit-learn
    python scripts/train_vgg_digits.py         # writes bench/models/vgg-digits.{onnx,json}, vgg-digits-eval.npz

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 grey images, 10 classes; it ships inside scikit-learn, no
download). Preprocessing: pixel / 16 → [0, 1]; bilinear resize 8×8 → 24×24 (half-pixel centres,
``align_corners=False``, no antialias); zero-pad 4 pixels each side → 32×32; float32, NCHW N×1×32×32. The
held-out set is a stratified ``train_test_split`` (``--heldout`` samples, ``random_state=--seed``), never used
for training; it is saved already preprocessed (``input``, ``labels``: the keys of the built-in example's
example_eval.npz), so the model's input needs nothing else. Training augments with random shifts of up to
±2 pixels. Accuracies in vgg-digits.json are measured by running the exported ONNX in ONNX Runtime.

Model (VGG-style, no branches): [conv 48, conv 48, maxpool] [conv 96, conv 96, maxpool] [conv 192, conv 192,
maxpool] → global average pool → flatten → fc 10; every conv is 3×3 pad 1 + BatchNorm + ReLU, and BatchNorm
folds into the convs on export. ONNX opset 13, input ``input`` (batch dimension dynamic) → ``logits``.

Reproducible: seeded split, ``torch.manual_seed``, deterministic algorithms, one torch thread (``--threads``);
the same versions give a byte-identical vgg-digits.onnx (its sha256 is recorded in vgg-digits.json). A few
minutes on one core.
"""
from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from digits_common import (AUGMENTATION, DATASET, PAD, ROOT, ConvBNReLU, accuracy, arg_parser, export_onnx,
                           load_split, optimizer_note, ort_logits, preprocessing_note, save_eval, seed_all,
                           split_info, summary, torch_logits, train, write_record)

DEFAULT_OUT = ROOT / "bench" / "models"
RESIZE = 24  # 8×8 → bilinear 24×24 → zero-padded 32×32
SIZE = RESIZE + 2 * PAD


# --------------------------------------------------------------------------- model
class DigitsVGG(nn.Module):
    """32×32 → [conv w1, conv w1, pool] → [conv w2, conv w2, pool] → [conv w3, conv w3, pool] → GAP → fc (10)."""

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 192)) -> None:
        super().__init__()
        cin = 1
        for stage, w in enumerate(widths, 1):
            self.add_module(f"conv{stage}_1", ConvBNReLU(cin, w))
            self.add_module(f"conv{stage}_2", ConvBNReLU(w, w))
            self.add_module(f"pool{stage}", nn.MaxPool2d(2))
            cin = w
        self.stages = len(widths)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(1, self.stages + 1):
            for name in (f"conv{stage}_1", f"conv{stage}_2", f"pool{stage}"):
                x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def architecture(widths: tuple[int, int, int]) -> str:
    size, cin, parts = SIZE, 1, []
    for stage, w in enumerate(widths, 1):
        parts.append(f"conv{stage}_1 3x3 {cin}->{w}, conv{stage}_2 3x3 {w}->{w} ({size}x{size}); maxpool 2x2")
        size, cin = size // 2, w
    return ("VGG-style, no branches; every conv is 3x3 pad 1 + BatchNorm + ReLU: " + "; ".join(parts)
            + f" -> {size}x{size}; global average pool; flatten; fc {cin}->10. BatchNorm is folded into the "
            "convs on export.")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__.splitlines()[0], epochs=30, batch_size=64, heldout=600, out=DEFAULT_OUT)
    ap.add_argument("--widths", type=int, nargs=3, default=[48, 96, 192], metavar=("W1", "W2", "W3"),
                    help="channels of the three conv stages")
    args = ap.parse_args(argv)
    w1, w2, w3 = args.widths
    widths = (w1, w2, w3)

    g = seed_all(args.seed, args.threads)
    x_tr, y_tr, x_te, y_te = load_split(args.seed, args.heldout, RESIZE)
    model = DigitsVGG(widths)
    train_seconds = train(model, x_tr, y_tr, g, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)

    args.out.mkdir(parents=True, exist_ok=True)
    data, n_params = export_onnx(model, args.out / "vgg-digits.onnx", SIZE, dynamic_batch=True,
                                 props={"convopt.bench": "vgg-digits", "dataset": "sklearn digits 8x8 -> 32x32"},
                                 doc="convopt benchmark model: " + architecture(widths))

    torch_out = torch_logits(model, x_te)
    train_logits = ort_logits(data, x_tr, 100)
    heldout_logits = ort_logits(data, x_te, 100)
    single = ort_logits(data, x_te[:20], 1)  # batch 1 agrees with batched runs
    train_acc = accuracy(train_logits, y_tr)
    heldout_acc = accuracy(heldout_logits, y_te)
    save_eval(args.out / "vgg-digits-eval.npz", x_te, y_te)

    info = {
        "name": "vgg-digits",
        "task": "handwritten digit classification, 10 classes",
        "architecture": architecture(widths),
        "parameters": n_params,
        "dataset": DATASET,
        "preprocessing": preprocessing_note(RESIZE) + " vgg-digits-eval.npz holds the held-out inputs already "
                         "preprocessed (keys input, labels).",
        "input": {"name": "input", "shape": ["batch", 1, SIZE, SIZE], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
        "opset": 13,
        "split": split_info(args.seed, y_tr, y_te),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "widths": list(widths),
        "optimizer": optimizer_note(args.lr),
        "augmentation": AUGMENTATION,
        "train_accuracy": round(train_acc, 6),
        "heldout_accuracy": round(heldout_acc, 6),
        "heldout_correct": int((heldout_logits.argmax(1) == y_te).sum()),
        "accuracy_note": "fractions of 1, top-1, measured by running vgg-digits.onnx in onnxruntime "
                         f"{ort.__version__} (CPUExecutionProvider, batches of 100) on the un-augmented train and "
                         "held-out sets",
        "onnx_vs_torch_max_abs_diff": float(np.abs(heldout_logits - torch_out).max()),
        "onnx_batch1_vs_batched_max_abs_diff": float(np.abs(single - heldout_logits[:20]).max()),
    }
    write_record(args.out / "vgg-digits.json", info, data=data, train_seconds=train_seconds, threads=args.threads,
                 files={"model": "vgg-digits.onnx", "eval": "vgg-digits-eval.npz"},
                 script="scripts/train_vgg_digits.py", argv=argv)
    print(summary(train_acc, heldout_acc, len(y_te), train_seconds, data, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
