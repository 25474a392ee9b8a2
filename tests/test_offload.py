"""convopt.graph.offload: a model's large weights in a private file, read back on demand, the same bytes."""
from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convopt
from convopt.graph import offload as off
from convopt.graph import ConstantTable
from convopt.graph.infer import SKELETON_MAX_ELEMENTS
from convopt.limits import trim_freed_memory
from convopt.measure.model_file import model_file
from convopt.models.example import example_data_path, example_model_path
from convopt.pages import tmp_on_disk
from tests.helpers import NO_SHARED, SHARED_MODELS, conv_model, random_feeds, rss_mib, run

ON_DISK = pytest.mark.skipif(not tmp_on_disk(), reason="the temporary folder is a tmpfs: offload moves nothing there")


def _mixed_model() -> onnx.ModelProto:
    """conv_model (a 16×8×7×7 weight: 6272 elements, moved; its bias stays) plus a large int64 and a large
    float16 initializer (its ``data_location`` set to DEFAULT)."""
    m = conv_model(8, 16, (7, 7), hw=(15, 15))
    rng = np.random.default_rng(3)
    m.graph.initializer.append(numpy_helper.from_array(rng.integers(0, 9, 5000).astype(np.int64), "ints"))
    m.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(4100).astype(np.float16), "halves"))
    m.graph.initializer[-1].data_location = TensorProto.DEFAULT  # set, as onnx's loader of external data does
    return m


def _moved_names(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in m.graph.initializer if off.offloaded(t)}


@ON_DISK
def test_offload_copies_the_model_without_its_large_weights_and_inline_gives_the_same_bytes() -> None:
    m = _mixed_model()
    before = m.SerializeToString(deterministic=True)
    with off.WeightFile() as wf:
        light = off.offload(m, wf)
        assert light is not m and m.SerializeToString(deterministic=True) == before  # the input is untouched
        assert _moved_names(light) == {t.name for t in m.graph.initializer if math.prod(t.dims) > SKELETON_MAX_ELEMENTS}
        assert _moved_names(light) == {"W", "ints", "halves"}
        assert all(not t.raw_data for t in light.graph.initializer if off.offloaded(t))
        assert light.ByteSize() < 2000 < m.ByteSize()
        assert wf.size == sum(len(t.raw_data) for t in m.graph.initializer if t.name in {"W", "ints", "halves"})
        for t0, t1 in zip(m.graph.initializer, light.graph.initializer):
            a = off.array(t1)
            assert a.dtype == numpy_helper.to_array(t0).dtype and a.shape == tuple(t0.dims)
            np.testing.assert_array_equal(a, numpy_helper.to_array(t0))
        assert ConstantTable(light.graph).value("W") is not None
        copy = off.inlined(light)
        assert copy is not light and _moved_names(light) == {"W", "ints", "halves"}
        assert copy.SerializeToString(deterministic=True) == before
        assert off.inline(light) is light and light.SerializeToString(deterministic=True) == before
        assert off.inlined(light) is light  # nothing left to read

@ON_DISK
def test_a_closed_weight_file_is_no_longer_read() -> None:
    with off.WeightFile() as wf:
        light = off.offload(_mixed_model(), wf)
        (w,) = [t for t in light.graph.initializer if t.name == "W"]
        assert off.offloaded(w)
    assert not off.offloaded(w)


def test_where_the_temporary_folder_is_memory_nothing_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(off, "tmp_on_disk", lambda: False)
    m = _mixed_model()
    with off.WeightFile() as wf:
        assert off.offload(m, wf) is m and wf.size == 0


@ON_DISK
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_session_of_an_offloaded_model_computes_what_the_model_computes(
        monkeypatch: pytest.MonkeyPatch, kernel_copy: bool) -> None:
    """model_file copies offloaded bytes file to file (or, where copy_file_range fails, reads them)."""
    import onnxruntime as ort

    if not kernel_copy:
        def refuse(*_a: object) -> int:
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    m = conv_model(8, 16, (7, 7), hw=(15, 15))
    feeds = random_feeds(m)
    with off.WeightFile() as wf:
        light = off.offload(m, wf)
        with model_file(light) as path:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            stub = onnx.load(str(path), load_external_data=False).graph.initializer[0]
            assert stub.external_data[0].value == "weights.bin"  # its own file, not the WeightFile
    (got,) = session.run(None, feeds)
    np.testing.assert_array_equal(got, run(m, feeds)[0])


@ON_DISK
def test_a_dropped_original_gives_its_weights_back() -> None:
    """The reason for the copy: a protobuf message frees a field's bytes only with the whole message."""
    w = np.random.default_rng(0).standard_normal((1024, 1024, 3, 3)).astype(np.float32)  # 36 MiB
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024, 1, 1])],
                          [numpy_helper.from_array(w, "w")])
    m = onnx.ModelProto()
    m.ParseFromString(helper.make_model(g).SerializeToString())
    del g, w
    gc.collect()
    trim_freed_memory()
    held = rss_mib()
    with off.WeightFile() as wf:
        m = off.offload(m, wf)
        gc.collect()
        trim_freed_memory()
        assert held - rss_mib() > 24
        assert off.array(m.graph.initializer[0]).shape == (1024, 1024, 3, 3)


@ON_DISK
def test_an_optimize_run_reads_the_offloaded_weights_and_writes_the_same_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same uniform run with the weights offloaded and without: the same output, byte for byte; the
    run's evaluators hold the offloaded copy, and the written model holds every weight."""
    import convopt.api as api

    seen: list[set[str]] = []
    real = api.offload

    def spy(model: onnx.ModelProto, into: off.WeightFile) -> onnx.ModelProto:
        light = real(model, into)
        seen.append(_moved_names(light))
        return light

    def optimize(out: Path) -> bytes:
        opts = convopt.OptimizeOptions(model=example_model_path(), output=out, strategy="uniform",
                                       passes=("factorize",), rank=convopt.RankOptions(rank_fraction=0.5),
                                       ort=convopt.OrtSettings(threads=1, warmup=1, repeats=3),
                                       data=convopt.DataOptions(data=example_data_path()), no_budget=True,
                                       require_faster=False)
        convopt.optimize(opts)
        return out.read_bytes()

    monkeypatch.setattr(api, "offload", spy)
    with_offload = optimize(tmp_path / "a.onnx")
    assert len(seen) == 1 and len(seen[0]) == 5  # the five weights of more than 4096 elements
    monkeypatch.setattr(off, "tmp_on_disk", lambda: False)
    assert optimize(tmp_path / "b.onnx") == with_offload and seen[1:] == [set()]
    written = onnx.load(str(tmp_path / "a.onnx"), load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in written.graph.initializer)


@ON_DISK
@pytest.mark.skipif(not (SHARED_MODELS / "ddddocr-det.onnx").is_file(), reason=NO_SHARED)
def test_ddddocr_det_offloaded_runs_alike() -> None:
    import onnxruntime as ort

    m = onnx.load(str(SHARED_MODELS / "ddddocr-det.onnx"))
    feeds = random_feeds(m)
    want = run(m, feeds)
    with off.WeightFile() as wf:
        light = off.offload(m, wf)
        assert light.ByteSize() < 2**20 and wf.size > 18 * 2**20
        with model_file(light) as path:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert off.inlined(light).SerializeToString(deterministic=True) == m.SerializeToString(deterministic=True)
    for a, b in zip(session.run(None, feeds), want):
        np.testing.assert_array_equal(a, b)


def test_a_measured_run_gives_the_heap_back_once_the_model_is_offloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading, checking and copying the model leave its size several times over free in the heap; the
    data are read after the heap is trimmed (ddddocr-det: the loading peak 155 -> 144 MiB of work)."""
    import convopt.api as api

    calls: list[str] = []
    for name in ("offload", "trim_freed_memory", "set_up"):
        real = getattr(api, name)
        monkeypatch.setattr(api, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    opts = convopt.OptimizeOptions(model=example_model_path(), strategy="uniform", passes=("factorize",),
                                   rank=convopt.RankOptions(full_rank=True),
                                   ort=convopt.OrtSettings(threads=1, warmup=1, repeats=3),
                                   data=convopt.DataOptions(data=example_data_path()), require_faster=False)
    api.optimize_model(onnx.load(str(example_model_path())), opts)
    assert calls[:3] == ["offload", "trim_freed_memory", "set_up"]
