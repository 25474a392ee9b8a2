"""Labels for a task metric: whatever the metric compares each sample with, one row per sample (an OCR model's
index sequences padded with -1, [n, L]; a class index, [n]; a box per image, [n, 4]), passed to the metric as
read. Without a metric, labels are class indices (convopt.measure.labels).

From an ``.npy``, an ``.npz`` (member ``labels`` or ``y``, else its only member; other members, strings
included, are not read) or the data's own ``.npz``; headers are checked before any data is read, and only real
numbers are read (convopt.measure.npz). A CSV gives class indices, as without a metric.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from convopt.errors import DataError
from convopt.limits import check_data_memory
from convopt.measure.labels import LABEL_KEYS, resolve_labels
from convopt.measure.npz import NpzFile, check_real, npy_header, read_npy


def check_targets(arr: np.ndarray, n: int, where: str) -> np.ndarray:
    """``arr`` when it holds real numbers with ``n`` rows, else a DataError."""
    a = np.asarray(arr)
    check_real(a.dtype, f"labels from {where}")
    if a.ndim == 0 or a.shape[0] != n:
        raise DataError(f"labels from {where} have shape {tuple(a.shape)} for {n} samples; give one row per sample")
    return a


def _npz_key(z: NpzFile, path: Path) -> str:
    key = next((k for k in LABEL_KEYS if k in z.headers), None)
    if key is None and len(z.headers) == 1:
        key = next(iter(z.headers))
    if key is None:
        raise DataError(f"{path} has arrays {sorted(z.headers)}; name the labels array 'labels'")
    return key


def load_targets(labels: Path | str | np.ndarray, files: list[str] | None, n_total: int, n_used: int) -> np.ndarray:
    """The labels of the ``n_used`` samples kept (the first of ``n_total``) for a task metric."""
    if isinstance(labels, np.ndarray):
        return check_targets(labels, n_total, "the given array")[:n_used]
    path = Path(labels)
    if not path.exists():
        raise DataError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return resolve_labels(path, files, n_total, n_used)
    if suffix == ".npy":
        header = npy_header(path)
        rows = header.rows
        check_data_memory(n_used * max(header.row_bytes, 8), f"labels from {path}", "pass --limit")
        arr = read_npy(path, n_used) if rows == n_total else None
    elif suffix == ".npz":
        with NpzFile(path) as z:
            key = _npz_key(z, path)
            rows = z.headers[key].rows
            check_data_memory(n_used * max(z.headers[key].row_bytes, 8), f"labels from {path}", "pass --limit")
            arr = z.read(key, n_used) if rows == n_total else None
    else:
        raise DataError(f"labels file {path} must be .csv (file,label), .npy or .npz")
    if arr is None:
        raise DataError(f"labels from {path} have {rows} entries but the data has {n_total} samples")
    return check_targets(arr, n_used, str(path))
