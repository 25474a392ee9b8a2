"""Labels: one integer class index per sample, from a CSV (file,label), an .npy, an .npz, or the data's own
.npz. Every file is checked before it is read (a regular file; a CSV of at most LABELS_CSV_MAX_BYTES; an
.npy/.npz on its header, read only for the samples used) and every label must fit a 64-bit integer.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from convopt.errors import DataError
from convopt.limits import LABELS_CSV_MAX_BYTES, check_data_memory
from convopt.measure.npz import NpzFile, npy_header, read_npy

LABEL_KEYS = ("labels", "y")


def as_labels(arr: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"labels from {where} have shape {a.shape}; give one integer class index per sample")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise DataError(f"labels from {where} are not integers; give integer class indices")
        if a.size and not (-(2.0**63) <= float(a.min()) and float(a.max()) < 2.0**63):
            raise DataError(f"labels from {where} do not fit a 64-bit integer; give class indices")
    elif a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise DataError(f"labels from {where} do not fit a 64-bit integer; give class indices")
    elif a.dtype.kind not in "iub":
        raise DataError(f"labels from {where} have dtype {a.dtype}; give integer class indices")
    return a.astype(np.int64)


def _read_label_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """(file names or None, labels in row order) from a CSV with a header containing a `label` column.
    The file must be a regular file of at most LABELS_CSV_MAX_BYTES."""
    from convopt.io import read_regular_file

    raw = read_regular_file(path, LABELS_CSV_MAX_BYTES, "a labels CSV", DataError)
    try:
        with io.StringIO(raw.decode("utf-8"), newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read labels CSV {path}: {e}") from None
    if not rows or "label" not in rows[0]:
        raise DataError(f"labels CSV {path} needs a header row with a 'label' column (and 'file' for images)")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"labels CSV {path}: the 'label' column must hold integer class indices") from None
    except OverflowError:
        raise DataError(f"labels CSV {path}: a label does not fit a 64-bit integer; give class indices") from None
    files = [str(r.get("file") or "") for r in rows] if "file" in rows[0] else None
    return files, labels


def resolve_labels(
    labels: Path | str | np.ndarray, files: list[str] | None, n_total: int, n_used: int
) -> np.ndarray:
    """Labels of the ``n_used`` samples kept (the first ones of ``n_total``). ``files``: the kept image file
    names when the data is a folder; a CSV with a `file` column is then matched by name, anything else
    by order."""
    if isinstance(labels, np.ndarray):
        out = as_labels(labels, "the given array")
        where = "the given array"
    else:
        path = Path(labels)
        where = str(path)
        if not path.exists():
            raise DataError(f"labels file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            csv_files, csv_labels = _read_label_csv(path)
            if files is not None:
                if csv_files is None:
                    raise DataError(f"labels CSV {path} needs a 'file' column to match the image file names")
                by_name = {Path(f).name: int(lab) for f, lab in zip(csv_files, csv_labels)}
                missing = [f for f in files if f not in by_name]
                if missing:
                    raise DataError(
                        f"labels CSV {path} has no row for {len(missing)} image(s), e.g. {missing[:3]}; "
                        "add a row per image (file,label)"
                    )
                return np.array([by_name[f] for f in files], dtype=np.int64)
            out = csv_labels
        elif suffix in (".npy", ".npz"):
            return as_labels(_label_rows(path, n_total, n_used), where)
        else:
            raise DataError(f"labels file {path} must be .csv (file,label), .npy or .npz")
    if out.shape[0] != n_total:
        hint = "; use a CSV with file,label columns to match images by name" if files is not None else ""
        raise DataError(f"labels from {where} have {out.shape[0]} entries but the data has {n_total} samples{hint}")
    return out[:n_used]


def _label_rows(path: Path, n_total: int, n_used: int) -> np.ndarray:
    """The first ``n_used`` labels of an .npy/.npz labels file that must hold ``n_total``, headers checked first."""
    if path.suffix.lower() == ".npy":
        header = npy_header(path)
        if header.rows != n_total:
            raise DataError(f"labels from {path} have {header.rows} entries but the data has {n_total} samples")
        check_data_memory(n_used * max(header.row_bytes, 8), f"labels from {path}", "pass --limit")
        return read_npy(path, n_used)
    with NpzFile(path) as z:
        key = next((k for k in LABEL_KEYS if k in z.headers), None)
        if key is None and len(z.headers) == 1:
            key = next(iter(z.headers))
        if key is None:
            raise DataError(f"{path} has arrays {sorted(z.headers)}; name the labels array 'labels'")
        if z.headers[key].rows != n_total:
            raise DataError(f"labels from {path} have {z.headers[key].rows} entries but the data has "
                            f"{n_total} samples")
        check_data_memory(n_used * max(z.headers[key].row_bytes, 8), f"labels from {path}", "pass --limit")
        return z.read(key, n_used)
