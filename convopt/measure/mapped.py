"""Evaluation data kept in a file and mapped, its pages dropped from this process between uses.

Auto mode reads its fit data again and again (the layers' moments, the refit targets, the sensitivities, each
step's refits), but between those reads it times, solves and checks for minutes. Mapped read-only from an
anonymous temporary file, the data cost memory only while a read touches them: :func:`evict` drops their pages
from the process (the page cache keeps them, so reading again costs no disk access while memory is free), and
the file disappears with the last mapping. ddddocr-det's 16 calibration and 8 report samples at 416×416 are
50 MiB. Only where the temporary folder is on a disk: on a tmpfs (or ramfs) the file itself would be memory,
so the data stay in memory as they are (set TMPDIR to a folder on a disk to have them mapped).
"""
from __future__ import annotations

import mmap
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from convopt.measure.data import EvalData


def on_disk(data: EvalData) -> EvalData:
    """``data`` with each input array moved to an anonymous temporary file and mapped read-only (the same
    values; writing to them raises). Ragged data (per-sample arrays) are returned as they are."""
    if data.ragged or not disk_backed(Path(tempfile.gettempdir())):
        return data
    return replace(data, inputs={name: _mapped(a) for name, a in data.inputs.items()})


def _mapped(array: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(array)
    if a.nbytes == 0:
        return a
    with tempfile.TemporaryFile(prefix="convopt-data-") as f:  # unlinked already: gone with its last mapping
        a.tofile(f)
        f.flush()
        return np.memmap(f, dtype=a.dtype, mode="r", shape=a.shape)  # the mapping keeps its own descriptor


MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def disk_backed(folder: Path, mounts: Path = Path("/proc/self/mounts")) -> bool:
    """False when ``folder`` lies on a filesystem held in memory (the longest mount point containing it, in
    ``mounts``, is a tmpfs or ramfs); True otherwise, and where there is no such table (not Linux)."""
    try:
        table = [line.split()[1:3] for line in mounts.read_text().splitlines() if len(line.split()) >= 3]
    except OSError:
        return True
    target = folder.resolve()
    best, kind = "", ""
    for point, fstype in table:
        point = point.replace("\\040", " ")
        if (target == Path(point) or Path(point) in target.parents) and len(point) > len(best):
            best, kind = point, fstype
    return kind not in MEMORY_FILESYSTEMS


def evict(data: EvalData) -> None:
    """Drop the pages of ``data``'s mapped inputs from this process (``madvise(MADV_DONTNEED)``: a later read
    maps them again from the file). A no-op for inputs held in memory, and where the platform has no madvise."""
    for a in data.inputs.values():
        mapping = getattr(a, "_mmap", None)  # numpy.memmap's mmap object (views share it)
        if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)


__all__ = ["MEMORY_FILESYSTEMS", "disk_backed", "evict", "on_disk"]
