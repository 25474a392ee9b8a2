"""convopt.measure.mapped: evaluation data kept in a file, mapped, their pages dropped between uses."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from convopt.measure import mapped
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.mapped import evict, on_disk
from convopt.measure.ort import OrtSettings
from convopt.pages import disk_backed, mapping_of
from tests.helpers import rss_mib
from tests.test_measure_helpers import tiny_classifier

ON_DISK = disk_backed(Path(tempfile.gettempdir()))
TMP_IN_MEMORY = "the temporary folder is on a tmpfs here: on_disk keeps the data in memory, by design"


def data(n: int, seed: int = 0, size: int = 8) -> EvalData:
    x = np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)
    return EvalData({"X": x}, np.arange(n) % 4, "test")


@pytest.mark.skipif(not ON_DISK, reason=TMP_IN_MEMORY)
def test_on_disk_maps_the_same_values_read_only() -> None:
    d = data(6)
    m = on_disk(d)
    assert mapping_of(m.inputs["X"]) is not None
    np.testing.assert_array_equal(m.inputs["X"], d.inputs["X"])
    np.testing.assert_array_equal(m.labels, d.labels)
    assert (m.n, m.source, list(m.index)) == (d.n, d.source, list(d.index))
    with pytest.raises(ValueError):
        m.inputs["X"][0, 0, 0, 0] = 1.0  # read-only: nothing writes the user's data
    evict(m)
    np.testing.assert_array_equal(m.inputs["X"], d.inputs["X"])  # read again from the file after eviction
    evict(d)  # in memory: nothing to do


def test_on_disk_keeps_data_in_memory_where_the_file_would_be_memory(monkeypatch) -> None:
    monkeypatch.setattr(mapped, "tmp_on_disk", lambda: False)
    d = data(4)
    assert on_disk(d) is d


def test_disk_backed_reads_the_mount_table(tmp_path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\nnone /mnt/my\\040disk xfs rw 0 0\n")
    assert not disk_backed(Path("/tmp/x/y"), table)
    assert disk_backed(Path("/tmpx"), table) and disk_backed(Path("/home/u"), table)
    assert disk_backed(Path("/mnt/my disk/a"), table)
    assert disk_backed(Path("/tmp"), tmp_path / "absent")  # no table (not Linux): assumed on a disk


@pytest.mark.skipif(not ON_DISK, reason=TMP_IN_MEMORY)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux)")
def test_evict_drops_the_pages_from_this_process() -> None:
    """64 MiB of mapped data, all read: resident; evicted: more than half of it leaves the process."""
    m = on_disk(data(64, size=256))  # 64 × 3 × 256 × 256 float32 = 64 MiB
    before = rss_mib()
    assert float(np.sum(m.inputs["X"], dtype=np.float64)) > 0
    read = rss_mib()
    evict(m)
    after = rss_mib()
    assert read - before > 32 and read - after > 32


@pytest.mark.skipif(not ON_DISK, reason=TMP_IN_MEMORY)
def test_an_evaluator_on_mapped_data_measures_as_on_data_in_memory(monkeypatch) -> None:
    """The same reference outputs and candidate figures; the data's pages are dropped after each run over
    them, batch by batch (``run_model``, which every comparison and sensitivity run goes through: a run holds
    one batch of them)."""
    import convopt.measure.ort as ort_mod

    model, settings = tiny_classifier("N"), OrtSettings(threads=1, batch_size=4)
    d = EvalData({"X": data(10).inputs["X"]}, None, "test")
    m = on_disk(d)
    calls: list[int] = []
    real = mapped.evict

    a, b = Evaluator(model, d, settings, measure_latency=False), Evaluator(model, m, settings, measure_latency=False)
    for x, y in zip(a.reference, b.reference):
        np.testing.assert_array_equal(x, y)
    monkeypatch.setattr(ort_mod, "evict", lambda data: (calls.append(data.n), real(data))[1])
    assert a.measure(model, "same").accuracy == b.measure(model, "same").accuracy
    assert calls == [10] * 6  # 3 batches of at most 4 samples, for each of the two evaluators
