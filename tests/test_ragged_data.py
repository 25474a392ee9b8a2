"""Loading samples of different shapes: an .npz keyed per sample (NAME/0, NAME/1, ...) and a folder of images
with a resize rule; what is refused, with the reason."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convopt.errors import DataError, InputError, ShapeError
from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.images import Resize
from convopt.measure.samples import is_ragged, median_sample, ragged
from tests.ragged_helpers import HEIGHT, ctc_like_model, pooled_classifier, ragged_samples, save_keyed
from tests.test_measure_helpers import tiny_classifier


# -- an .npz keyed per sample ------------------------------------------------------------------------------


def test_keyed_npz_gives_one_array_per_sample_as_fed(tmp_path: Path) -> None:
    samples = ragged_samples(7)
    stored = [s[0].astype(np.float64) if i % 2 else s for i, s in enumerate(samples)]  # some without batch axis
    data = load_eval_data(ctc_like_model(), save_keyed(tmp_path / "d.npz", stored))
    assert data.ragged and data.n == 7 and is_ragged(data.inputs["x"])
    for got, want in zip(data.inputs["x"], samples):
        assert got.dtype == np.float32 and got.shape == want.shape  # cast to the input's dtype, (1, 1, 8, W)
        np.testing.assert_array_equal(got, want)
    assert "7 of 7 samples, one array each" in data.source and f"{data.timing.shapes} shapes" in data.source


def test_keyed_npz_limit_labels_and_targets(tmp_path: Path) -> None:
    samples = ragged_samples(6)
    seqs = np.arange(6 * 3).reshape(6, 3)
    path = save_keyed(tmp_path / "d.npz", samples, labels=seqs, text=np.array(list("abcdef")))  # strings unread
    data = load_eval_data(ctc_like_model(), path, limit=4, targets=True)
    assert data.n == 4 and [a.shape for a in data.inputs["x"]] == [s.shape for s in samples[:4]]
    np.testing.assert_array_equal(data.labels, seqs[:4])  # a task metric's labels: any real rows
    with pytest.raises(DataError, match="one integer class index per sample"):
        load_eval_data(ctc_like_model(), path)  # without a metric, labels are class indices
    data = load_eval_data(ctc_like_model(), path, labels=np.arange(6) % 2)
    np.testing.assert_array_equal(data.labels, np.arange(6) % 2)


@pytest.mark.parametrize("members,needle", [
    ({"x/0": np.zeros((1, 1, HEIGHT, 5)), "x/2": np.zeros((1, 1, HEIGHT, 6))}, "no 'x/1'"),
    ({"x/0": np.zeros((1, 1, HEIGHT + 1, 5))}, r"takes \[1, 1, 8, 'width'\]"),
    ({"x/0": np.zeros((2, 1, HEIGHT, 5))}, "store each sample as"),
    ({"x": np.zeros((1, 1, HEIGHT, 5)), "x/0": np.zeros((1, 1, HEIGHT, 5))}, "both an array 'x' and samples"),
    ({"x/0": np.array(["a"])}, "holds strings"),
])
def test_keyed_npz_refusals(tmp_path: Path, members: dict[str, np.ndarray], needle: str) -> None:
    np.savez(tmp_path / "d.npz", **members)
    with pytest.raises(DataError, match=needle):
        load_eval_data(ctc_like_model(), tmp_path / "d.npz")


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=ragged(ragged_samples(3)))  # np.savez pickles an object array
    with pytest.raises(DataError, match=r"never unpickles a file.*NAME/0, NAME/1"):
        load_eval_data(ctc_like_model(), tmp_path / "d.npz", input_shapes={"x": (1, 1, HEIGHT, 9)})


def test_keyed_npz_refuses_preprocess_and_a_fixed_batch_above_one(tmp_path: Path) -> None:
    path = save_keyed(tmp_path / "d.npz", ragged_samples(3))
    with pytest.raises(DataError, match="--preprocess applies to a folder"):
        load_eval_data(ctc_like_model(), path, preprocess="unit")
    with pytest.raises(DataError, match="fixed batch of 2"):
        load_eval_data(ctc_like_model(batch=2), path)
    with pytest.raises(ShapeError, match="not a model input"):
        load_eval_data(ctc_like_model(), path, input_shapes={"y": (1, 1, 8, 8)})


# -- the sample latency is timed on ----------------------------------------------------------------------


def test_timing_sample_is_the_median_size_or_the_input_shape_given(tmp_path: Path) -> None:
    samples = ragged_samples(9)
    path = save_keyed(tmp_path / "d.npz", samples)
    data = load_eval_data(ctc_like_model(), path)
    widths = [s.shape[3] for s in samples]
    median = sorted(widths)[(len(widths) - 1) // 2]
    assert data.timing.feeds["x"].shape[3] == median == widths[data.timing.id]
    assert data.timing.why == "the median size" and median_sample(data.inputs) == data.timing.id
    wanted = samples[6].shape
    data = load_eval_data(ctc_like_model(), path, input_shapes={"x": wanted})
    assert data.timing.feeds["x"].shape == wanted and data.timing.why == "the shape of --input-shape"
    part = data.subset(np.array([0, 1]), "two")  # every role times the same sample
    assert part.timing is data.timing and part.n == 2
    assert data.ragged_settings() == {"run": "one sample at a time (samples differ in shape)",
                                      "shapes": len(set(widths)), "latency_sample": data.timing.describe()}


def test_eval_data_refuses_mixed_inputs() -> None:
    with pytest.raises(DataError, match="mixes inputs"):
        EvalData({"a": ragged(ragged_samples(2)), "b": np.zeros((2, 3))}, None, "t")
    with pytest.raises(DataError, match=r"shape \(1, \.\.\.\)"):
        EvalData({"a": ragged([np.zeros((2, 3)), np.zeros((2, 4))])}, None, "t")


# -- a folder of images with a resize rule -----------------------------------------------------------------


def _images(folder: Path, sizes: list[tuple[int, int]], mode: str = "L") -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate(sizes):
        px = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        Image.fromarray(px, mode).save(folder / f"{i:02d}.png")
        out.append(px)
    return out


def test_folder_with_resize_height_keeps_each_aspect_ratio(tmp_path: Path) -> None:
    sizes = [(20, 8), (33, 8), (10, 16), (9, 8)]
    pixels = _images(tmp_path / "img", sizes)
    data = load_eval_data(ctc_like_model(), tmp_path / "img", preprocess="unit", resize="height=8")
    assert data.ragged and [a.shape for a in data.inputs["x"]] == [(1, 1, 8, 20), (1, 1, 8, 33), (1, 1, 8, 5),
                                                                   (1, 1, 8, 9)]
    np.testing.assert_allclose(data.inputs["x"][0][0, 0], pixels[0] / 255.0, rtol=0, atol=1e-6)  # no resize needed
    assert "--resize height=8" in data.source
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n03.png,3\n00.png,0\n01.png,1\n02.png,2\n")
    data = load_eval_data(ctc_like_model(), tmp_path / "img", preprocess="unit", resize=Resize("height", 8),
                          labels=csv, limit=3)
    np.testing.assert_array_equal(data.labels, [0, 1, 2])  # matched by file name


def test_folder_with_resize_width_and_rgb(tmp_path: Path) -> None:
    _images(tmp_path / "img", [(16, 8), (16, 24)], "RGB")
    data = load_eval_data(pooled_classifier(), tmp_path / "img", preprocess="imagenet", resize="width=8")
    assert [a.shape for a in data.inputs["x"]] == [(1, 3, 4, 8), (1, 3, 12, 8)]


def test_resize_rules_that_cannot_work(tmp_path: Path) -> None:
    _images(tmp_path / "img", [(20, 8), (12, 8)])
    with pytest.raises(DataError, match="whose height is 8; write --resize height=8"):
        load_eval_data(ctc_like_model(), tmp_path / "img", preprocess="unit", resize="height=16")
    with pytest.raises(DataError, match="takes a fixed height of 8"):
        load_eval_data(ctc_like_model(), tmp_path / "img", preprocess="unit", resize="width=16")
    with pytest.raises(DataError, match="fixed height"):
        load_eval_data(tiny_classifier(1), tmp_path / "img", preprocess="unit", resize="width=8")
    with pytest.raises(DataError, match="pass --preprocess"):
        load_eval_data(ctc_like_model(), tmp_path / "img", resize="height=8")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="--resize applies to a folder of images"):
        load_eval_data(ctc_like_model(), tmp_path / "d.npz", resize="height=8")
    for bad in ("height", "depth=3", "height=0", "width=x"):
        with pytest.raises(InputError, match="write --resize height=H"):
            Resize.parse(bad)
