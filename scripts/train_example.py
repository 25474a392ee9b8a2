#!/usr/bin/env python
"""Train convopt's built-in example: an Inception-style CNN on scikit-learn's digits, exported to ONNX.

Development only; needs the CPU build of PyTorch and scikit-learn (neither is a convopt dependency):

    pip install torch==2.13.0 scikit-learn
    python scripts/train_example.py            # writes convopt/models/data/example.{onnx,json}, example_eval.npz

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 grey images, 10 classes; it ships inside scikit-learn, no
download). Preprocessing, MNIST-style: pixel / 16 → [0, 1]; bilinear resize 8×8 → 20×20 (half-pixel centres,
``align_corners=False``, no antialias); zero-pad 4 pixels each side → 28×28; float32, NCHW 1×1×28×28. The
held-out set is a stratified ``train_test_split`` (``--heldout`` samples, ``random_state=--seed``); it is saved
already preprocessed, so the model's input needs nothing else. Training augments with random shifts of up to
±2 pixels. Accuracies in example.json are measured by running the exported ONNX in ONNX Runtime.

Reproducible: seeded split, ``torch.manual_seed``, deterministic algorithms, one torch thread (``--threads``);
the same versions give a byte-identical example.onnx (its sha256 is recorded in example.json). About a minute
on one core.
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

DEFAULT_OUT = ROOT / "convopt" / "models" / "data"
RESIZE = 20  # 8×8 → bilinear 20×20 → zero-padded 28×28
SIZE = RESIZE + 2 * PAD


# --------------------------------------------------------------------------- model
class Inception(nn.Module):
    """Concat(1×1, 1×1→3×3, [1×1→]5×5, 3×3 max-pool→1×1), GoogLeNet-style; r5 = 0 means no 5×5 reduction."""

    def __init__(self, cin: int, n1: int, r3: int, n3: int, r5: int, n5: int, pp: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBNReLU(cin, n1, 1)
        self.branch3x3_reduce = ConvBNReLU(cin, r3, 1)
        self.branch3x3 = ConvBNReLU(r3, n3, 3)
        self.branch5x5_reduce = ConvBNReLU(cin, r5, 1) if r5 else nn.Identity()
        self.branch5x5 = ConvBNReLU(r5 or cin, n5, 5)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.pool_proj = ConvBNReLU(cin, pp, 1)
        self.out_channels = n1 + n3 + n5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(self.branch3x3_reduce(x)),
                          self.branch5x5(self.branch5x5_reduce(x)), self.pool_proj(self.pool(x))], 1)


class DigitsInception(nn.Module):
    """28×28 → stem 3×3 (1→32) → pool → inception_a (14×14) → pool → inception_b (7×7) → GAP → fc (10)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNReLU(1, 32, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.inception_a = Inception(32, 16, 32, 48, 0, 32, 16)  # 5×5 32→32 with no reduction; 112 out
        self.pool2 = nn.MaxPool2d(2)
        self.inception_b = Inception(112, 32, 48, 64, 32, 48, 32)  # 176 out
        self.fc = nn.Linear(176, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stem(x))
        x = self.pool2(self.inception_a(x))
        x = self.inception_b(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


ARCHITECTURE = (
    "stem conv3x3 1->32 +ReLU (28x28); maxpool 2x2; inception_a (14x14, 32 in): 1x1 16 | 1x1 32 -> 3x3 48 | "
    "5x5 32 | maxpool3x3 -> 1x1 16 = 112; maxpool 2x2; inception_b (7x7, 112 in): 1x1 32 | 1x1 48 -> 3x3 64 | "
    "1x1 32 -> 5x5 48 | maxpool3x3 -> 1x1 32 = 176; global average pool; fc 176->10. BatchNorm is folded into "
    "the convs on export."
)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__.splitlines()[0], epochs=20, batch_size=32, heldout=360, out=DEFAULT_OUT)
    args = ap.parse_args(argv)

    g = seed_all(args.seed, args.threads)
    x_tr, y_tr, x_te, y_te = load_split(args.seed, args.heldout, RESIZE)
    model = DigitsInception()
    train_seconds = train(model, x_tr, y_tr, g, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)

    args.out.mkdir(parents=True, exist_ok=True)
    data, n_params = export_onnx(model, args.out / "example.onnx", SIZE, dynamic_batch=False,
                                 props={"convopt.example": "digits-inception",
                                        "dataset": "sklearn digits 8x8 -> 28x28"},
                                 doc="convopt built-in example: " + ARCHITECTURE)

    torch_out = torch_logits(model, x_te)
    train_acc = accuracy(ort_logits(data, x_tr, 1), y_tr)  # the model's batch dimension is static 1
    heldout_logits = ort_logits(data, x_te, 1)
    heldout_acc = accuracy(heldout_logits, y_te)
    save_eval(args.out / "example_eval.npz", x_te, y_te)

    info = {
        "name": "example",
        "task": "handwritten digit classification, 10 classes",
        "architecture": ARCHITECTURE,
        "parameters": n_params,
        "dataset": DATASET,
        "preprocessing": preprocessing_note(RESIZE) + " example_eval.npz holds inputs already preprocessed.",
        "input": {"name": "input", "shape": [1, 1, SIZE, SIZE], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"},
        "split": split_info(args.seed, y_tr, y_te),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": optimizer_note(args.lr),
        "augmentation": AUGMENTATION,
        "train_accuracy": round(train_acc, 6),
        "heldout_accuracy": round(heldout_acc, 6),
        "accuracy_note": "fractions of 1, top-1, measured by running example.onnx in onnxruntime "
                         f"{ort.__version__} (CPUExecutionProvider) on the un-augmented train and held-out sets",
        "onnx_vs_torch_max_abs_diff": float(np.abs(heldout_logits - torch_out).max()),
    }
    write_record(args.out / "example.json", info, data=data, train_seconds=train_seconds, threads=args.threads,
                 files={"model": "example.onnx", "eval": "example_eval.npz"}, script="scripts/train_example.py",
                 argv=argv)
    print(summary(train_acc, heldout_acc, len(y_te), train_seconds, data, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
