"""Task metrics as plug-ins: loading by spec, wrapping callables, every failure a one-line exit-2 error, and the two
worked examples on the ddddocr models."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from convopt.errors import ConvOptError, DataError, InputError
from convopt.measure.data import load_eval_data
from convopt.measure.ort import OrtSettings, make_session, run_model
from convopt.measure.plugin import TaskMetric, load_metric
from tests.helpers import EXAMPLES, NO_SHARED, SHARED_MODELS, example_script

N = 4
OUTPUTS = {"y": np.arange(N * 3, dtype=np.float32).reshape(N, 3)}
INPUTS = {"x": np.zeros((N, 2), np.float32)}


def _fails(metric: TaskMetric, *, labels: object = None) -> str:
    with pytest.raises(ConvOptError) as exc:
        metric.score(OUTPUTS, labels, INPUTS)
    assert exc.value.exit_code == 2 and isinstance(exc.value, InputError)
    msg = str(exc.value)
    assert "\n" not in msg and metric.name in msg
    return msg


# ---------------------------------------------------------------------------------------------------------
# Callables and their answers


def top_score(outputs, labels, inputs):
    return outputs["y"].max(axis=1)


def test_from_callable_scores_per_sample_as_float64():
    m = TaskMetric.from_callable(top_score)
    assert m.name == "top_score" and m.source.endswith("top_score")
    s = m.score(OUTPUTS, None, INPUTS)
    assert s.dtype == np.float64 and s.shape == (N,)
    np.testing.assert_array_equal(s, [2, 5, 8, 11])


def test_labels_and_inputs_reach_the_metric():
    seen = {}

    def match(outputs, labels, inputs):
        seen.update(labels=labels, inputs=sorted(inputs))
        return outputs["y"].argmax(axis=1) == labels

    labels = np.array([2, 0, 2, 1])
    s = TaskMetric.from_callable(match, name="argmax_match").score(OUTPUTS, labels, INPUTS)
    np.testing.assert_array_equal(s, [1.0, 0.0, 1.0, 0.0])  # booleans become 0/1
    assert seen["labels"] is labels and seen["inputs"] == ["x"]


def test_list_of_python_floats_is_accepted():
    s = TaskMetric.from_callable(lambda o, lab, i: [0.5] * N, name="half").score(OUTPUTS, None, INPUTS)
    np.testing.assert_array_equal(s, np.full(N, 0.5))


def test_metric_cannot_modify_convopt_arrays():
    def scribble(outputs, labels, inputs):
        outputs["y"][0, 0] = 99
        return np.ones(N)

    msg = _fails(TaskMetric.from_callable(scribble))
    assert "read-only" in msg
    assert OUTPUTS["y"][0, 0] == 0


def test_not_callable_refused():
    with pytest.raises(InputError, match="must be callable"):
        TaskMetric.from_callable(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("returned", "expect"),
    [
        (None, "returned NoneType None, not numbers"),
        ("0.9", "returned str '0.9', not numbers"),
        (["a", "b", "c", "d"], "not numbers"),
        ([[1.0], [2.0, 3.0], [4.0], [5.0]], "not an array of numbers"),
        (np.ones((N, 1)), "shape (4, 1) and dtype float64, not a 1-D array"),
        (0.75, "not a 1-D array"),
        (np.ones(N + 1), "returned 5 scores for 4 samples"),
        (np.array([1.0, np.nan, 1.0, np.nan]), "returned 2 non-finite score(s) of 4 (sample 1: nan)"),
        (np.array([1.0, 1.0, np.inf, 1.0]), "(sample 2: inf)"),
        (np.array([1 + 1j] * N), "not numbers"),
    ],
)
def test_bad_answers_are_one_line_exit_2(returned, expect):
    def bad(outputs, labels, inputs):
        return returned

    msg = _fails(TaskMetric.from_callable(bad))
    assert expect in msg
    assert "shape (4,)" in msg or "finite" in msg


def test_metric_that_raises_names_the_error_and_line():
    def broken(outputs, labels, inputs):
        return outputs["missing"]

    msg = _fails(TaskMetric.from_callable(broken))
    assert "raised KeyError: 'missing'" in msg and "test_plugin.py:" in msg


# ---------------------------------------------------------------------------------------------------------
# Loading by spec


METRIC_SOURCE = '''
import numpy as np
from helper_beside import WEIGHT

def weighted(outputs, labels, inputs):
    return WEIGHT * outputs["y"][:, 0]

NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def metric_file(tmp_path):
    (tmp_path / "helper_beside.py").write_text("WEIGHT = 2.0\n")
    path = tmp_path / "my_metric.py"
    path.write_text(METRIC_SOURCE)
    return path


def test_load_metric_from_file(metric_file):
    m = load_metric(f"{metric_file}:weighted")
    assert m.name == "weighted" and m.source == f"{metric_file}:weighted"
    np.testing.assert_array_equal(m.score(OUTPUTS, None, INPUTS), [0, 6, 12, 18])


def test_load_metric_from_module(tmp_path, monkeypatch):
    pkg = tmp_path / "teammetrics"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scores.py").write_text("def first(outputs, labels, inputs):\n    return outputs['y'][:, 0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_metric("teammetrics.scores:first")
    assert m.name == "first"
    np.testing.assert_array_equal(m.score(OUTPUTS, None, INPUTS), [0, 3, 6, 9])
    monkeypatch.delitem(sys.modules, "teammetrics.scores")
    monkeypatch.delitem(sys.modules, "teammetrics")


def _load_fails(spec: str) -> str:
    with pytest.raises(InputError) as exc:
        load_metric(spec)
    assert exc.value.exit_code == 2
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_load_errors_are_one_line(tmp_path, metric_file):
    assert "write --metric FILE.py:FUNCTION" in _load_fails("no_colon_here")
    assert "metric file not found" in _load_fails(f"{tmp_path / 'absent.py'}:f")
    assert "no function 'nope'; it defines: weighted" in _load_fails(f"{metric_file}:nope")
    assert "not a function" in _load_fails(f"{metric_file}:NOT_A_FUNCTION")
    assert "metric module 'no_such_pkg_xyz.mod' not found" in _load_fails("no_such_pkg_xyz.mod:f")
    broken = tmp_path / "broken.py"
    broken.write_text("def f(outputs, labels, inputs)\n    return 1\n")
    assert "SyntaxError" in _load_fails(f"{broken}:f")
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('needs a GPU')\n")
    msg = _load_fails(f"{raising}:f")
    assert "RuntimeError: needs a GPU" in msg and "raising.py:1" in msg


# ---------------------------------------------------------------------------------------------------------
# The worked examples on the ddddocr models

shared = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
SETTINGS = OrtSettings(threads=2)


def _run(model_path: Path, npz: Path, shapes: dict[str, tuple[int, ...]] | None = None):
    """Outputs and inputs as convopt produces them (per-sample runs concatenated on axis 0)."""
    model = onnx.load(str(model_path))
    data = load_eval_data(model, npz, input_shapes=shapes)
    sess = make_session(model, SETTINGS)
    outs = run_model(sess, data, SETTINGS)
    return dict(zip([o.name for o in sess.get_outputs()], outs)), data.inputs


@pytest.fixture(scope="module")
def ocr(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr")
    assert example_script("make_ocr_data").main(["--n", "6", "--out", str(out)]) == 0
    labels = dict(np.load(out / "ocr_labels.npz"))
    outputs, inputs = _run(SHARED_MODELS / "ddddocr-ocr.onnx", out / "ocr_inputs.npz", {"input1": (1, 1, 64, 256)})
    return outputs, labels, inputs


@shared
def test_ocr_string_match_is_one_for_the_original(ocr):
    outputs, labels, inputs = ocr
    metric = load_metric(f"{EXAMPLES / 'metrics' / 'ocr.py'}:string_match")
    assert outputs["387"].shape == (6 * 32, 1, 8210)
    assert labels["labels"].shape[0] == 6 and (labels["labels"] >= 0).sum(axis=1).min() >= 3
    np.testing.assert_array_equal(metric.score(outputs, labels["labels"], inputs), np.ones(6))
    np.testing.assert_array_equal(metric.score(outputs, labels, inputs), np.ones(6))  # the npz as a dict


@shared
def test_ocr_string_match_drops_for_a_changed_reading(ocr):
    outputs, labels, inputs = ocr
    metric = load_metric(f"{EXAMPLES / 'metrics' / 'ocr.py'}:string_match")
    logits = outputs["387"].copy().reshape(6, 32, 8210)
    step = int(np.flatnonzero(logits[2].argmax(axis=1))[0])  # a step where sample 2 reads a character
    logits[2, step, 7] = logits[2, step].max() + 10  # now it reads class 7 there
    scores = metric.score({"387": logits.reshape(6 * 32, 1, 8210)}, labels["labels"], inputs)
    np.testing.assert_array_equal(scores, [1, 1, 0, 1, 1, 1])


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    assert example_script("make_det_labels").main(["--n", "3", "--out", str(out)]) == 0
    labels = np.load(out / "det_labels.npz")["rows"]
    outputs, inputs = _run(SHARED_MODELS / "ddddocr-det.onnx", out / "det_inputs.npz")
    return outputs, labels, inputs


@shared
def test_det_box_agreement_is_one_for_the_original(det):
    outputs, labels, inputs = det
    metric = load_metric(f"{EXAMPLES / 'metrics' / 'detect.py'}:box_agreement")
    assert outputs["output"].shape == (3, 3549, 6)
    assert labels.shape[1] == 5 and set(labels[:, 0].astype(int)) == {0, 1, 2}  # every image has boxes
    np.testing.assert_array_equal(metric.score(outputs, labels, inputs), np.ones(3))


@shared
def test_det_box_agreement_drops_when_boxes_move(det):
    outputs, labels, inputs = det
    metric = load_metric(f"{EXAMPLES / 'metrics' / 'detect.py'}:box_agreement")
    moved = outputs["output"].copy()
    moved[1, :, 0] += 2.0  # every box of image 1 moves two grid cells to the right
    scores = metric.score({"output": moved}, labels, inputs)
    assert scores[0] == 1.0 and scores[2] == 1.0 and scores[1] < 0.5


@shared
def test_example_metric_without_labels_is_a_data_error(det):
    outputs, _, inputs = det
    metric = load_metric(f"{EXAMPLES / 'metrics' / 'detect.py'}:box_agreement")
    with pytest.raises(DataError, match="box_agreement.*raised ValueError: box_agreement needs labels"):
        metric.score(outputs, None, inputs)
