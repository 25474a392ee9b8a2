"""convopt.limits: giving freed heap memory back to the system (glibc)."""
from __future__ import annotations

import pytest

from convopt import limits
from tests.helpers import rss_mib


@pytest.mark.skipif(limits._glibc() is None, reason="malloc_trim is glibc's: this platform's C library has none")
def test_trim_gives_freed_heap_pages_back() -> None:
    """Small blocks freed in the middle of the heap stay resident until trimmed: allocate 64 MiB of 64 KiB
    blocks (heap, below the mmap threshold), keep the last one (the heap's top cannot shrink), free the rest."""
    import ctypes

    libc = limits._glibc()
    assert libc is not None
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size, count = 64 << 10, 1024
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        libc.memset(b, 1, size)  # resident
    for b in blocks[:-1]:
        libc.free(b)
    before = rss_mib()
    assert limits.trim_freed_memory()
    after = rss_mib()
    libc.free(blocks[-1])
    assert before - after > 32  # more than half of the 64 MiB went back


def test_trim_is_a_no_op_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(limits, "_glibc", lambda: None)
    assert limits.trim_freed_memory() is False
    assert limits.return_freed_memory() is False

