"""Arrays moved to an anonymous temporary file and mapped read-only, their pages dropped from this process
between uses: what a long run keeps for later costs memory only while a use touches it.

``to_file`` writes arrays into one file (each at a page-aligned offset) and maps it once: the arrays become
read-only views of that mapping (one file descriptor per call, whatever the number of arrays). Reading them
maps their pages in; ``drop_pages`` drops them again (``madvise(MADV_DONTNEED)``: the page cache keeps them,
so a later read costs no disk access while memory is free). The file has no name and goes with the last view.
Only worth it where the temporary folder is on a disk (``tmp_on_disk``): on a tmpfs or ramfs the file itself
is memory.
"""
from __future__ import annotations

import mmap
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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


def tmp_on_disk() -> bool:
    """True when the temporary folder (``TMPDIR``) is on a disk, where ``to_file`` saves memory."""
    return disk_backed(Path(tempfile.gettempdir()))


_LIVE: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()  # every mapping to_file made that is still alive


def to_file(arrays: Sequence[np.ndarray], prefix: str = "convopt-") -> list[np.ndarray]:
    """``arrays`` (any shapes and dtypes) written to one anonymous temporary file, returned as read-only views
    of one mapping of it, in order: the same values, and writing to them raises. Empty arrays stay as they are."""
    parts = [np.ascontiguousarray(a) for a in arrays]
    offsets, end = [], 0
    for a in parts:
        offsets.append(end)
        end += -(-a.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE  # page-aligned: each array's pages its own
    if end == 0:
        return parts
    with tempfile.TemporaryFile(prefix=prefix) as f:  # unlinked already: gone with its last mapping
        for a, at in zip(parts, offsets):
            f.seek(at)
            a.tofile(f)
        f.truncate(end)
        f.flush()
        mapping = mmap.mmap(f.fileno(), end, access=mmap.ACCESS_READ)  # holds its own descriptor
    _LIVE.add(mapping)
    return [a if a.nbytes == 0 else np.frombuffer(mapping, a.dtype, a.size, at).reshape(a.shape)
            for a, at in zip(parts, offsets)]


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The mmap ``array`` is a view of (``to_file``'s, or a numpy.memmap's), else None: the end of its chain of
    bases (a numpy.memmap's is the mmap itself; ``to_file``'s views end in a memoryview of it)."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    obj = base.obj if isinstance(base, memoryview) else base
    return obj if isinstance(obj, mmap.mmap) else None


def drop_pages(arrays: Iterable[np.ndarray]) -> None:
    """Drop the pages of the mappings ``arrays`` view from this process (a later read maps them again from the
    file). A no-op for arrays held in memory, and where the platform has no madvise."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    done: set[int] = set()
    for a in arrays:
        mapping = mapping_of(a)
        if mapping is not None and id(mapping) not in done:
            done.add(id(mapping))
            mapping.madvise(mmap.MADV_DONTNEED)


def drop_all_pages() -> None:
    """``drop_pages`` for every live mapping ``to_file`` made: whatever was read of them since (a layer's
    candidates priced, a plan's factors, a batch of data) leaves memory, wherever the reader forgot to."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for mapping in list(_LIVE):
        if not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)


__all__ = ["MEMORY_FILESYSTEMS", "disk_backed", "drop_all_pages", "drop_pages", "mapping_of", "tmp_on_disk",
           "to_file"]
