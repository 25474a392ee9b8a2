"""The bounds convopt puts on what it reads and allocates, in one place.

- A model file plus its external data: at most ``DEFAULT_MAX_MODEL_BYTES`` (4 GiB), ``--max-model-bytes``
  to raise it. A JSON report: ``REPORT_MAX_BYTES`` (64 MiB); a latency cache: ``CACHE_MAX_BYTES``
  (16 MiB); a labels CSV: ``LABELS_CSV_MAX_BYTES`` (256 MiB). Only regular files are read (no FIFO, device
  or folder); .npy/.npz files are judged on their headers (convopt.measure.npz).
- Evaluation data (random or loaded, before ORT sees it): at most a quarter of the machine's memory
  (:func:`data_memory_limit`: physical memory, or the cgroup's limit when lower), estimated before anything
  is allocated.
- ``--threads``: at most the cores this process may run on (:func:`cap_threads`).
- Freed memory goes back to the system: the CLI serves every allocation of 128 KiB or more by mmap
  (:func:`return_freed_memory`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path

DEFAULT_MAX_MODEL_BYTES = 4 * 2**30
REPORT_MAX_BYTES = 64 * 2**20
CACHE_MAX_BYTES = 16 * 2**20
LABELS_CSV_MAX_BYTES = 256 * 2**20
DATA_MEMORY_FRACTION = 0.25
MAX_SEED = 2**32 - 1


def fmt_bytes(n: float) -> str:
    """1.68 TiB, 512 MiB, 3 KiB, 12 B."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup v2/v1 memory limit when it is lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 8 * 2**30
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


def data_memory_limit() -> int:
    """How many bytes of evaluation data convopt allocates at most: a quarter of :func:`machine_memory_bytes`."""
    return int(machine_memory_bytes() * DATA_MEMORY_FRACTION)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int) -> tuple[int, str | None]:
    """(threads to use, warning or None): a request above the available cores is capped to them."""
    cores = available_cores()
    if threads > cores:
        return cores, f"--threads {threads} is more than the {cores} core(s) available; using {cores}"
    return threads, None


def check_data_memory(need: int, what: str, hint: str) -> None:
    """DataError (exit 2) with the figures when ``need`` bytes of evaluation data exceed the limit."""
    from convopt.errors import DataError

    limit = data_memory_limit()
    if need > limit:
        raise DataError(f"{what} needs {fmt_bytes(need)} of memory, more than the {fmt_bytes(limit)} convopt "
                        f"allows for evaluation data here (a quarter of {fmt_bytes(machine_memory_bytes())}); {hint}")


MMAP_THRESHOLD = 128 << 10
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory() -> bool:
    """glibc only: serve every allocation of ``MMAP_THRESHOLD`` (128 KiB, glibc's own starting value) or more by
    mmap, so that freeing it gives the memory back at once. By default glibc raises that threshold to the
    largest block freed (up to 32 MiB) and keeps later blocks of up to that size in its heap, which it rarely
    returns; convopt allocates and frees weights, activations and LAPACK workspaces of many MiB in turn, and
    that heap grew by 35-70 MiB on ResNet-50 --no-eval and ddddocr-det auto (bench/results/memory.md). With a
    threshold of 1 MiB, ddddocr-det auto on one search path held 4.6 MiB more than at 128 KiB (145.1 against
    140.5 MiB of work). Called by the CLI (the process is convopt's), not by the library. No-op (False)
    elsewhere, or when MALLOC_MMAP_THRESHOLD_ is set."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except AttributeError:
        return False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it (None elsewhere: musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl has no malloc_trim: AttributeError)
    except (OSError, AttributeError):
        return None
    return libc


def trim_freed_memory() -> bool:
    """glibc only: give the free pages inside the heap back to the system (``malloc_trim``). Allocations under
    the mmap threshold (protobuf tensors, most of ORT's weights, numpy's small arrays) come from the heap, and
    glibc returns freed heap memory only from its top: on ddddocr-det auto, 40-50 MiB of the heap's resident
    pages were free at the refits' peak. Called by auto mode after each step that frees a model's worth (a
    layer's timing, a refit, a check) and after making each ORT session (whose transient copies leave the
    model's size again free in the heap); a millisecond or so each. False where it does nothing."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)
