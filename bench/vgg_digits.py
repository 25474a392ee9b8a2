"""The trained VGG-style benchmark model on scikit-learn's digits (six dense 3×3 convs, 48/96/192 channels).

``models/vgg-digits.onnx`` (input ``input`` N×1×32×32 float32 in [0, 1], batch dimension dynamic; output
``logits`` N×10), ``models/vgg-digits-eval.npz`` (the 600 held-out samples, never trained on: ``input``
N×1×32×32 float32 already preprocessed, ``labels`` N int64) and ``models/vgg-digits.json`` (training record,
ONNX Runtime held-out accuracy, sha256). Made by ``scripts/train_vgg_digits.py``.

    from vgg_digits import load      # from bench/ scripts (bench/ is on sys.path)
    model, x, y = load()
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

MODELS = Path(__file__).resolve().parent / "models"
MODEL_PATH = MODELS / "vgg-digits.onnx"
EVAL_PATH = MODELS / "vgg-digits-eval.npz"
INFO_PATH = MODELS / "vgg-digits.json"
REGENERATE = "python scripts/train_vgg_digits.py"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate the VGG digits benchmark model with "
                                f"`{REGENERATE}` from the repository root (needs torch and scikit-learn)")
    return path


def load() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """(model, held-out inputs N×1×32×32 float32, held-out labels N int64)."""
    model = onnx.load(str(_require(MODEL_PATH)))
    with np.load(_require(EVAL_PATH)) as z:
        x = np.asarray(z["input"], dtype=np.float32)
        y = np.asarray(z["labels"], dtype=np.int64)
    return model, x, y


def info() -> dict[str, Any]:
    """The training record written next to the model (accuracy, split, versions, sha256, command)."""
    return dict(json.loads(_require(INFO_PATH).read_text(encoding="utf-8")))
