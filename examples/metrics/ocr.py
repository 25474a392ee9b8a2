"""OCR string agreement for ddddocr-ocr.onnx: 1.0 when a sample decodes to its label sequence, else 0.0.

The model (input ``input1``: 1×1×64×W grayscale 0..1) writes logits ``387`` of shape [T, 1, 8210], T = W/8: one
row of class scores per time step, batch on axis 1. Decoding is CTC greedy: argmax per step, collapse repeats,
drop the blank (index 0). The charset that maps indices to characters is not needed: the metric compares index
sequences, so labels are the sequences the original model reads (``examples/make_ocr_data.py``).

Layouts of the output accepted (n samples): the per-sample runs concatenated on axis 0, [n·T, 1, C] (what
convopt gives for a batch-1 model); the runs stacked, [n, T, 1, C]; one batched run, [T, n, C]; or, for samples
of different widths (convopt's ragged data: an image folder with ``--resize height=64``, or an .npz keyed
``input1/0``, ``input1/1``, ...), a list of n per-sample outputs [T_i, 1, C], inputs a list of n arrays too.
Labels: an int array [n, L] padded with -1, a dict/npz with such an array under ``labels``, or a list of n
index sequences.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OUTPUT = "387"
INPUT = "input1"


def per_sample_logits(logits: np.ndarray, n: int) -> np.ndarray:
    """Logits as [n, T, C] from any layout listed in the module docstring."""
    a = np.asarray(logits)
    if a.ndim == 4 and a.shape[0] == n and a.shape[2] == 1:
        return a[:, :, 0, :]
    if a.ndim == 3 and a.shape[1] == 1 and a.shape[0] % n == 0:
        return a.reshape(n, a.shape[0] // n, a.shape[2])
    if a.ndim == 3 and a.shape[1] == n:
        return a.transpose(1, 0, 2)
    raise ValueError(f"OCR logits of shape {a.shape} do not fit {n} samples; expected [n*T, 1, C], [n, T, 1, C] "
                     "or [T, n, C]")


def ctc_greedy(logits: np.ndarray) -> list[int]:
    """[T, C] logits → the decoded index sequence: argmax per step, repeats collapsed, blanks (0) dropped."""
    best = np.asarray(logits).argmax(axis=-1)
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(k) for k in best[keep] if k != 0]


def decode_all(outputs: Mapping[str, np.ndarray | list[np.ndarray]], n: int) -> list[list[int]]:
    """The decoded index sequence of every sample."""
    logits = outputs[OUTPUT]
    if isinstance(logits, list):  # one [T_i, 1, C] per sample
        return [ctc_greedy(np.asarray(t)[:, 0, :]) for t in logits]
    return [ctc_greedy(t) for t in per_sample_logits(logits, n)]


def label_sequences(labels: object, n: int) -> list[list[int]]:
    """Labels as n index sequences (see the module docstring for the forms accepted)."""
    if isinstance(labels, Mapping):
        labels = labels["labels"]
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        rows = [[int(v) for v in row if v >= 0] for row in labels]
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        rows = [[int(v) for v in row] for row in labels]
    else:
        raise ValueError(f"OCR labels must be an [n, L] int array padded with -1 or n sequences, got {type(labels)}")
    if len(rows) != n:
        raise ValueError(f"{len(rows)} OCR labels for {n} samples")
    return rows


def string_match(outputs, labels, inputs):
    """Per sample: 1.0 if the decoded sequence equals the label sequence, else 0.0."""
    n = len(inputs[INPUT])  # an array's rows, or a list of per-sample arrays
    if labels is None:
        raise ValueError("string_match needs labels: the index sequences the original model reads")
    read = decode_all(outputs, n)
    want = label_sequences(labels, n)
    return np.array([float(r == w) for r, w in zip(read, want)])
