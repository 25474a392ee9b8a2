"""ORT settings, sessions and batched evaluation."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from convopt.errors import DataError, InputError
from convopt.measure.data import EvalData
from convopt.measure.ort import (OrtSettings, batch_feeds, make_session, release_shared_arena, run_model, session_batch,
                                 shared_cpu_arena)
from tests.helpers import rss_mib
from tests.test_measure_helpers import classifier_weights, numpy_classifier, tiny_classifier, two_output_model


def data(n: int, seed: int = 0) -> EvalData:
    x = np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)
    return EvalData({"X": x}, None, "test")


def test_settings_defaults_and_to_dict() -> None:
    s = OrtSettings()
    d = s.to_dict()
    assert d["provider"] == "CPUExecutionProvider" and d["threads"] == 0
    assert d["graph_optimization_level"] == "all" and (d["warmup"], d["repeats"], d["batch_size"]) == (3, 20, 32)
    assert d["threads_meaning"].startswith("ORT default") and d["inter_op_threads"] == 1
    assert d["onnxruntime_version"] == ort.__version__
    assert OrtSettings(threads=2).to_dict()["threads_meaning"] == "2 intra-op thread(s)"


@pytest.mark.parametrize("kwargs, match", [
    ({"graph_optimization_level": "max"}, "disable, basic, extended, all"),
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"threads": -1}, "threads must be at least 0"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
])
def test_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        OrtSettings(**kwargs)


def test_make_session_applies_settings() -> None:
    s = make_session(tiny_classifier(1), OrtSettings(threads=1, graph_optimization_level="disable"))
    opts = s.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.log_severity_level == 4  # fatal only: convopt reports errors itself
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert make_session(tiny_classifier(1).SerializeToString(), OrtSettings()).get_inputs()[0].name == "X"


def test_unknown_provider_lists_available() -> None:
    with pytest.raises(InputError) as e:
        make_session(tiny_classifier(1), OrtSettings(provider="CUDAExecutionProvider_nope"))
    assert "CUDAExecutionProvider_nope" in str(e.value)
    assert all(p in str(e.value) for p in ort.get_available_providers())


class CountingSession:
    """Wraps a session and records the batch size of every run."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.batches: list[int] = []

    def get_inputs(self):  # noqa: ANN201
        return self.session.get_inputs()

    def run(self, names, feeds):  # noqa: ANN001, ANN201
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.session.run(names, feeds)


@pytest.mark.parametrize("batch, expected_runs", [(1, [1] * 5), ("N", [2, 2, 1])])
def test_run_model_batches_and_matches_numpy(batch: int | str, expected_runs: list[int]) -> None:
    settings = OrtSettings(batch_size=2)
    sess = CountingSession(make_session(tiny_classifier(batch), settings))
    d = data(5)
    progress: list[tuple[int, int]] = []
    (y,) = run_model(sess, d, settings, progress=lambda done, total: progress.append((done, total)))
    assert sess.batches == expected_runs
    assert progress[-1] == (5, 5) and len(progress) == len(expected_runs)
    w, b = classifier_weights()
    np.testing.assert_allclose(y, numpy_classifier(d.inputs["X"], w, b), rtol=1e-5, atol=1e-5)


def test_fixed_batch_above_one_pads_the_last_batch() -> None:
    settings = OrtSettings()
    sess = CountingSession(make_session(tiny_classifier(2), settings))
    assert session_batch(sess.session, settings) == 2
    d = data(3)
    (y,) = run_model(sess, d, settings)
    assert sess.batches == [2, 2] and y.shape == (3, 4)
    w, b = classifier_weights()
    np.testing.assert_allclose(y, numpy_classifier(d.inputs["X"], w, b), rtol=1e-5, atol=1e-5)
    last = batch_feeds(sess.session, d, 2, 2)["X"]
    np.testing.assert_array_equal(last[0], last[1])


def test_run_model_multiple_outputs_in_order() -> None:
    x = np.arange(7 * 6, dtype=np.float32).reshape(7, 6)
    settings = OrtSettings(batch_size=3)
    scores, feat = run_model(make_session(two_output_model(), settings), EvalData({"X": x}, None, "t"), settings)
    np.testing.assert_allclose(scores, x @ (np.arange(18, dtype=np.float32).reshape(6, 3) / 10), rtol=1e-6)
    np.testing.assert_array_equal(feat, x + 1)


def test_missing_input_array_is_a_data_error() -> None:
    settings = OrtSettings()
    with pytest.raises(DataError, match="no array for model input 'X'"):
        run_model(make_session(tiny_classifier(1), settings), EvalData({"Z": np.zeros((1, 3))}, None, "t"), settings)


def test_session_without_arena_computes_the_same_and_keeps_no_model_copy() -> None:
    model, settings = tiny_classifier("N"), OrtSettings(threads=1)
    x = {"X": data(5).inputs["X"]}
    timed, plain = make_session(model, settings), make_session(model, settings, arena=False)
    assert timed.get_session_options().enable_cpu_mem_arena  # timed sessions keep ORT's default, as deployed
    assert not plain.get_session_options().enable_cpu_mem_arena
    np.testing.assert_array_equal(plain.run(None, x)[0], timed.run(None, x)[0])
    # the Python session does not hold a second serialized copy of the weights (nor the provider fallback)
    assert all(getattr(s, "_model_bytes", None) is None and not s._enable_fallback for s in (timed, plain))


def test_timed_sessions_share_one_arena_and_output_sessions_have_none() -> None:
    """Sessions timed side by side take their activations from one CPU arena registered once per process
    (ORT's environment allocator); sessions that only compute outputs use no arena at all."""
    from convopt.measure.ort import shared_cpu_arena

    model, settings = tiny_classifier("N"), OrtSettings(threads=1)
    assert shared_cpu_arena() and shared_cpu_arena()  # registered once, then reused
    a, b = make_session(model, settings), make_session(model, settings)
    plain = make_session(model, settings, arena=False)
    for s in (a, b):
        assert s.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # never set on an output session
        plain.get_session_options().get_session_config_entry("session.use_env_allocators")
    x = {"X": data(5).inputs["X"]}
    np.testing.assert_array_equal(a.run(None, x)[0], plain.run(None, x)[0])
    np.testing.assert_array_equal(b.run(None, x)[0], plain.run(None, x)[0])


def test_a_model_reaches_ort_as_a_temporary_file_that_is_removed(tmp_path, monkeypatch) -> None:
    """A ModelProto reaches ORT as a private temporary file written one tensor at a time (no serialized copy
    of the weights alive while ORT parses): the same outputs as from bytes, and the file is gone afterwards;
    bytes and paths given are read as they are."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model, settings = tiny_classifier("N"), OrtSettings(threads=1)
    x = {"X": data(5).inputs["X"]}
    made: list[object] = []
    real = ort.InferenceSession

    def spy(source, *a, **k):  # type: ignore[no-untyped-def]
        made.append(source)
        return real(source, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    from_bytes = make_session(model.SerializeToString(), settings).run(None, x)[0]
    np.testing.assert_array_equal(make_session(model, settings).run(None, x)[0], from_bytes)
    assert isinstance(made[0], bytes) and isinstance(made[1], str) and made[1].startswith(str(tmp_path / "tmp"))
    assert list((tmp_path / "tmp").iterdir()) == []  # removed once the session exists
    saved = tmp_path / "m.onnx"
    saved.write_bytes(model.SerializeToString())
    np.testing.assert_array_equal(make_session(saved, settings).run(None, x)[0], from_bytes)
    assert made[2] == str(saved) and saved.exists()  # the caller's file is read, never removed


def test_model_file_adds_another_model_s_initializers_without_copying_them() -> None:
    """model_file(skeleton, initializers): ORT reads the skeleton with those initializers in its graph, the
    same model as with_outputs builds by copying them."""
    from convopt.graph.edit import pruned, with_outputs
    from convopt.measure.model_file import model_file

    model, settings = tiny_classifier("N"), OrtSettings(threads=1)
    names = [model.graph.node[0].output[0]]  # the Conv's output: an intermediate tensor
    skeleton, inits = pruned(model, names)
    assert len(skeleton.graph.initializer) == 0 and inits and all(
        any(t is u for u in model.graph.initializer) for t in inits)  # the model's own protos
    x = {"X": data(5).inputs["X"]}
    with model_file(skeleton, inits) as path:
        got = make_session(path, settings).run(None, x)[0]
        back = onnx.load(str(path))
    want = make_session(with_outputs(model, names), settings).run(None, x)[0]
    np.testing.assert_array_equal(got, want)
    assert sorted(t.name for t in back.graph.initializer) == sorted(t.name for t in inits)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux)")
def test_release_gives_the_shared_arena_back() -> None:
    """A run on the shared arena leaves its activations' regions resident (about 3 × 16 MiB here); releasing
    the arena gives more than 16 MiB back, and a later run still gives the same outputs. (ORT's outputs are
    views of the arena's memory: held, they would keep their region in use.)"""
    from convopt.limits import trim_freed_memory
    from convopt.measure.ort import release_shared_arena, shared_cpu_arena
    from tests.test_measure_model_file import conv_chain

    if not shared_cpu_arena():
        pytest.skip("this onnxruntime refuses a shared CPU arena")

    model = conv_chain(channels=16, size=512, depth=3)  # each activation: 16 MiB
    session = make_session(model, OrtSettings(threads=1))
    x = {"X": np.random.default_rng(2).standard_normal((1, 16, 512, 512)).astype(np.float32)}
    first = session.run(None, x)[0].copy()
    trim_freed_memory()
    grown = rss_mib()
    assert release_shared_arena()
    trim_freed_memory()
    assert grown - rss_mib() > 16
    np.testing.assert_array_equal(session.run(None, x)[0], first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux)")
def test_sessions_timed_side_by_side_share_the_arena_s_pages() -> None:
    """Sessions of different activation sizes, run interleaved (as a layer's candidates are timed), take
    their activations from the same pages of one region: the arena grows by about the largest run, not by
    the sum of the runs (here 3 × 16, 3 × 14 and 3 × 12 MiB: under 1.5 × 48 MiB, where the sum is 126)."""
    from convopt.limits import trim_freed_memory
    from tests.test_measure_model_file import conv_chain

    if not shared_cpu_arena():
        pytest.skip("this onnxruntime refuses a shared CPU arena")

    sizes = (512, 480, 448)
    sessions = [make_session(conv_chain(channels=16, size=s, depth=3), OrtSettings(threads=1)) for s in sizes]
    feeds = [{"X": np.ones((1, 16, s, s), np.float32)} for s in sizes]
    release_shared_arena()
    trim_freed_memory()
    before = rss_mib()
    for r in range(3):
        for k in range(len(sessions)):
            sessions[(r + k) % 3].run(None, feeds[(r + k) % 3])
    trim_freed_memory()
    assert rss_mib() - before < 1.5 * 48
    release_shared_arena()
