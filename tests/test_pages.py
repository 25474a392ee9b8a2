"""convopt.pages: arrays moved to one anonymous file, mapped read-only, their pages dropped between uses."""
from __future__ import annotations

import mmap
import sys
import tempfile

import numpy as np
import pytest

from convopt.limits import trim_freed_memory
from convopt.pages import drop_all_pages, drop_pages, mapping_of, to_file
from tests.helpers import rss_mib


def test_to_file_gives_read_only_views_of_one_mapping_with_the_same_values() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((7, 5, 3)).astype(np.float32), np.arange(9, dtype=np.int64).reshape(3, 3),
              np.zeros((0, 4), np.float32), rng.standard_normal(1000)[::2]]  # the last not contiguous
    mapped = to_file(arrays)
    assert len(mapped) == len(arrays)
    for a, m in zip(arrays, mapped):
        assert (m.shape, m.dtype) == (a.shape, a.dtype)
        np.testing.assert_array_equal(m, a)
    maps = {id(mapping_of(m)) for m in mapped if m.size}
    assert len(maps) == 1 and None not in {mapping_of(m) for m in mapped if m.size}  # one file, one mapping
    assert mapping_of(mapped[2]) is None  # an empty array stays as it is
    with pytest.raises(ValueError):
        mapped[0][0, 0, 0] = 1.0  # read-only
    drop_pages(mapped)
    for a, m in zip(arrays, mapped):
        np.testing.assert_array_equal(m, a)  # read again from the file
    assert to_file([]) == []


def test_mapping_of_arrays_in_memory_and_their_views_is_none() -> None:
    a = np.ones((4, 4))
    assert mapping_of(a) is None and mapping_of(a[1:]) is None
    (m,) = to_file([a])
    assert mapping_of(m[1:].T) is mapping_of(m)  # views of a view find the mapping
    drop_pages([a, a[1:]])  # in memory: nothing to do
    with tempfile.TemporaryFile() as f:
        a.tofile(f)
        f.flush()
        mm = np.memmap(f, dtype=a.dtype, mode="r", shape=a.shape)
        assert mapping_of(mm) is not None and mapping_of(mm[1:].T) is mapping_of(mm)  # a numpy.memmap too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux)")
def test_drop_pages_drops_the_read_pages_from_this_process() -> None:
    """48 MiB in three arrays, all read: resident; dropped: more than half leave the process."""
    arrays = to_file([np.full((4 << 20,), i, np.float32) for i in range(3)])
    before = rss_mib()
    assert sum(float(a.sum(dtype=np.float64)) for a in arrays) == float(3 * (4 << 20))
    read = rss_mib()
    drop_pages(arrays)
    after = rss_mib()
    assert read - before > 24 and read - after > 24


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="no madvise on this platform")
def test_drop_all_pages_drops_every_live_mapping_read_since() -> None:
    """What a reader forgot to drop (two separate files, both read whole) leaves memory in one call."""
    a, b = (np.random.default_rng(i).standard_normal(3 << 20) for i in (0, 1))  # 24 MiB each
    (ma,), (mb,) = to_file([a]), to_file([b])
    del a, b
    trim_freed_memory()
    before = rss_mib()
    assert float(ma.sum()) != 0.0 and float(mb.sum()) != 0.0  # every page read
    assert rss_mib() - before > 40
    drop_all_pages()
    assert rss_mib() - before < 10
    np.testing.assert_array_equal(ma[:4], np.random.default_rng(0).standard_normal(3 << 20)[:4])  # read again
