"""Detection agreement for ddddocr-det.onnx: per image, the F1 of the boxes found against the label boxes, a
box matching when IoU ≥ 0.5 (one-to-one, greedy by IoU). 1.0 when the boxes are the same; images where
neither has a box score 1.0.

The model (input ``images``: 1×3×416×416 BGR 0..255 float, the picture scaled to fit and padded with 114 at the
right and bottom) is a YOLOX head: output ``output`` [1, 3549, 6] holds per anchor (cx, cy, log w, log h,
objectness, class score) on three grids of strides 8, 16 and 32 (52², 26², 13² = 3549 anchors). Decoding:
centre = (offset + grid cell) × stride, size = exp(log size) × stride, score = objectness × class score, kept
above SCORE_THRESHOLD, then non-maximum suppression at NMS_IOU.

Labels, in input pixels (what ``examples/make_det_labels.py`` writes from the original model): boxes per image,
a float array [n, K, 4] (x1, y1, x2, y2) padded with NaN rows (one row of labels per sample, as convopt's
``--labels`` wants them for a ``--metric``: it hands each shard its rows); or rows [M, 5] (image index, x1,
y1, x2, y2) of all images; or a dict/npz holding either under ``labels``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OUTPUT = "output"
INPUT = "images"
SIZE = 416
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.1  # ddddocr's own thresholds
NMS_IOU = 0.45
MATCH_IOU = 0.5


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets [A, 2] (x, y) and strides [A, 1] of the A = 3549 anchors, in the head's order."""
    cells, strides = [], []
    for s in STRIDES:
        n = SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(cells).astype(np.float64), np.concatenate(strides).astype(np.float64)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] (x1, y1, x2, y2) with each of boxes [K, 4]."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU) -> np.ndarray:
    """Indices of the boxes kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[iou(boxes[best], boxes[rest]) <= threshold]
    return np.array(keep, dtype=np.int64)


def decode(pred: np.ndarray) -> np.ndarray:
    """One image's head output [3549, 6] → boxes [K, 4] (x1, y1, x2, y2) after threshold and NMS."""
    cells, strides = _grid()
    p = np.asarray(pred, dtype=np.float64)
    centre = (p[:, :2] + cells) * strides
    size = np.exp(np.clip(p[:, 2:4], -20, 20)) * strides
    score = p[:, 4] * p[:, 5]
    sel = score > SCORE_THRESHOLD
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)[sel]
    return boxes[nms(boxes, score[sel])] if boxes.size else boxes.reshape(0, 4)


def detections(outputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Decoded boxes of every image; the output is [n, 3549, 6] (per-image runs concatenated on axis 0)."""
    out = np.asarray(outputs[OUTPUT])
    return [decode(o) for o in out.reshape(-1, *out.shape[-2:])]


def f1(found: np.ndarray, wanted: np.ndarray, threshold: float = MATCH_IOU) -> float:
    """F1 of boxes ``found`` [K, 4] against ``wanted`` [L, 4], matched one-to-one greedily by IoU."""
    if len(found) == 0 and len(wanted) == 0:
        return 1.0
    if len(found) == 0 or len(wanted) == 0:
        return 0.0
    ious = np.stack([iou(b, wanted) for b in found])  # [K, L]
    matched = 0
    while ious.size and ious.max() >= threshold:
        k, l = np.unravel_index(np.argmax(ious), ious.shape)
        matched += 1
        ious[k, :] = -1
        ious[:, l] = -1
    return 2 * matched / (len(found) + len(wanted))


def label_boxes(labels: object, n: int) -> list[np.ndarray]:
    """Label boxes per image: n arrays [L_i, 4], from boxes per image [n, K, 4] (NaN rows: no box) or rows
    (image, x1, y1, x2, y2) [M, 5]."""
    table = np.asarray(labels["labels"] if isinstance(labels, Mapping) else labels, dtype=np.float64)
    if table.ndim == 3 and table.shape[0] == n and table.shape[2] == 4:
        return [b[~np.isnan(b).any(axis=1)] for b in table]
    if table.ndim != 2 or table.shape[1] != 5:
        raise ValueError(f"detection labels must be boxes per image [n, K, 4] or rows (image, x1, y1, x2, y2), "
                         f"got shape {table.shape}")
    image = table[:, 0].astype(np.int64)
    if table.size and (image.min() < 0 or image.max() >= n):
        raise ValueError(f"detection labels name images {image.min()}..{image.max()} but there are {n}")
    return [table[image == i, 1:] for i in range(n)]


def box_agreement(outputs, labels, inputs):
    """Per image: F1 of the decoded boxes against the label boxes at IoU ≥ 0.5."""
    n = len(inputs[INPUT])  # an array's rows, or a list of per-sample arrays
    if labels is None:
        raise ValueError("box_agreement needs labels: the original model's boxes (examples/make_det_labels.py)")
    found = detections(outputs)
    if len(found) != n:
        raise ValueError(f"{len(found)} detection outputs for {n} images")
    return np.array([f1(f, w) for f, w in zip(found, label_boxes(labels, n))])
