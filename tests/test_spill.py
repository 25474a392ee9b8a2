"""convopt.auto.spill: arrays set aside on disk and read back unchanged."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from convopt.auto.spill import Spill


def test_spill_reads_back_each_array_unchanged_as_a_fresh_copy() -> None:
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((7, 5)).astype(np.float32), "b": np.arange(6, dtype=np.int64).reshape(2, 3)}
    store = Spill()
    for k, v in arrays.items():
        store.put(k, v)
    assert list(store) == ["a", "b"] and len(store) == 2
    for k, v in arrays.items():
        got = store[k]
        np.testing.assert_array_equal(got, v)
        assert got.dtype == v.dtype and got.shape == v.shape
        got[...] = 0  # a fresh array: changing it changes nothing stored
        np.testing.assert_array_equal(store[k], v)
    store.close()
    assert len(store) == 0


def test_spill_files_are_removed_with_the_store() -> None:
    store = Spill()
    store.put("x", np.ones(3))
    where = Path(store._dir.name)
    assert any(where.iterdir())
    del store
    gc.collect()
    assert not where.exists()


def test_targets_close_removes_their_files() -> None:
    from convopt.auto.refit import Targets

    store = Spill()
    store.put("conv", np.ones((4, 2), np.float32))
    where = Path(store._dir.name)
    t = Targets({"conv": np.zeros((4, 3), np.int64)}, store)
    np.testing.assert_array_equal(t.y["conv"], np.ones((4, 2)))
    t.close()
    assert not where.exists() and len(t.y) == 0
