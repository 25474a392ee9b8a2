"""Evaluation data: input shapes, npz arrays, image folders with presets, labels, random inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from convopt.errors import DataError, InputError, ShapeError
from convopt.measure.data import (
    RANDOM_DATA_WARNING, EvalData, graph_inputs, load_eval_data, parse_input_shape, resolve_input_shapes,
)
from tests.test_measure_helpers import SHARED, needs_shared, tiny_classifier, two_output_model


def model_with_input(dims: list[int | str | None] | None, name: str = "X") -> onnx.ModelProto:
    vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", [name], ["Y"])], "g", [vi], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


# -- shapes -------------------------------------------------------------------------------------------------


def test_resolve_fixed_shape() -> None:
    assert resolve_input_shapes(tiny_classifier(1)) == {"X": (1, 3, 8, 8)}


def test_resolve_dynamic_batch_defaults_to_one() -> None:
    assert resolve_input_shapes(tiny_classifier("N")) == {"X": (1, 3, 8, 8)}
    assert resolve_input_shapes(model_with_input([None, 3, 8, 8])) == {"X": (1, 3, 8, 8)}


def test_resolve_dynamic_spatial_dims_need_a_hint() -> None:
    with pytest.raises(ShapeError) as e:
        resolve_input_shapes(model_with_input(["N", 3, "H", "W"], "data"))
    assert str(e.value) == (
        "input 'data' has a dynamic dimension (shape [N, 3, H, W]); pass --input-shape data:1x3x224x224"
    )


def test_resolve_dynamic_message_for_nhwc_and_unset_dims() -> None:
    with pytest.raises(ShapeError) as e:
        resolve_input_shapes(model_with_input([None, None, None, 3]))
    assert str(e.value) == "input 'X' has a dynamic dimension (shape [?, ?, ?, 3]); pass --input-shape X:1x224x224x3"
    with pytest.raises(ShapeError, match=r"shape \[N, T\]\); pass --input-shape X:1x1$"):
        resolve_input_shapes(model_with_input(["N", "T"]))


def test_resolve_hint_fills_dynamic_dims_and_is_checked() -> None:
    m = model_with_input(["N", 3, "H", "W"])
    assert resolve_input_shapes(m, {"X": (2, 3, 32, 48)}) == {"X": (2, 3, 32, 48)}
    with pytest.raises(ShapeError, match="contradicts the fixed dims"):
        resolve_input_shapes(m, {"X": (1, 4, 32, 32)})
    with pytest.raises(ShapeError, match="rank 4"):
        resolve_input_shapes(m, {"X": (1, 3, 32)})
    with pytest.raises(ShapeError, match="not a model input; the model's inputs are: 'X'"):
        resolve_input_shapes(m, {"Z": (1, 3, 32, 32)})


def test_input_without_declared_shape_needs_a_hint() -> None:
    m = model_with_input(None)
    with pytest.raises(ShapeError, match="input 'X' has no declared shape .* --input-shape X:1x3x224x224"):
        resolve_input_shapes(m)
    assert resolve_input_shapes(m, {"X": (2, 5)}) == {"X": (2, 5)}


def test_initializers_listed_as_inputs_are_not_real_inputs() -> None:
    m = tiny_classifier(1)
    m.graph.input.extend([helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3])])
    assert [vi.name for vi in graph_inputs(m)] == ["X"]
    assert list(resolve_input_shapes(m)) == ["X"]


@needs_shared
def test_resolve_real_models() -> None:
    sq = onnx.load(SHARED / "models" / "squeezenet1.1.onnx", load_external_data=False)
    assert resolve_input_shapes(sq) == {"data_0": (1, 3, 224, 224)}  # 53 graph inputs, 52 are weights
    candy = onnx.load(SHARED / "models" / "candy-style.onnx")
    assert resolve_input_shapes(candy) == {"inputImage": (1, 3, 720, 720)}  # dynamic batch 'None'


def test_scalar_inputs_are_refused() -> None:
    with pytest.raises(ShapeError, match=r"input\(s\) \['X'\] are scalars"):
        load_eval_data(model_with_input([]), None)


def test_parse_input_shape() -> None:
    assert parse_input_shape("data_0:1x3x224x224") == ("data_0", (1, 3, 224, 224))
    assert parse_input_shape("ns:x:2X5") == ("ns:x", (2, 5))
    for bad in ("data_0", ":1x3", "x:1x0x3", "x:1xax3", "x:"):
        with pytest.raises(InputError, match="NAME:DIMS"):
            parse_input_shape(bad)


# -- npz ----------------------------------------------------------------------------------------------------


def test_npz_by_input_name_with_labels_and_cast(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 255, (5, 3, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", X=x, labels=np.array([0, 1, 2, 3, 0]))
    d = load_eval_data(tiny_classifier("N"), tmp_path / "d.npz")
    assert d.n == 5 and d.inputs["X"].dtype == np.float32
    np.testing.assert_array_equal(d.inputs["X"], x.astype(np.float32))
    np.testing.assert_array_equal(d.labels, [0, 1, 2, 3, 0])
    assert d.warning is None and "d.npz" in d.source


@pytest.mark.parametrize("key", ["images", "x", "whatever"])
def test_npz_single_input_aliases(tmp_path: Path, key: str) -> None:
    x = np.zeros((3, 3, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", **{key: x, "y": np.array([1, 2, 3])})
    d = load_eval_data(tiny_classifier(1), tmp_path / "d.npz")
    assert d.inputs["X"].shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(d.labels, [1, 2, 3])


def test_npz_ambiguous_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3, 8, 8)), b=np.zeros((2, 3, 8, 8)))
    with pytest.raises(DataError, match=r"no array for model input\(s\) 'X'"):
        load_eval_data(tiny_classifier(1), tmp_path / "d.npz")


def test_npz_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(DataError) as e:
        load_eval_data(tiny_classifier(1), tmp_path / "d.npz")
    assert "(4, 8, 8, 3)" in str(e.value) and "(3, 8, 8)" in str(e.value)


def test_npz_limit_cuts_inputs_and_labels(tmp_path: Path) -> None:
    x = np.arange(6 * 6, dtype=np.float32).reshape(6, 6)
    np.savez(tmp_path / "d.npz", X=x, labels=np.arange(6) % 3)
    d = load_eval_data(two_output_model(), tmp_path / "d.npz", limit=4)
    assert d.n == 4
    np.testing.assert_array_equal(d.inputs["X"], x[:4])
    np.testing.assert_array_equal(d.labels, [0, 1, 2, 0])


def test_npz_labels_count_must_match(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 6), np.float32), labels=np.arange(4))
    with pytest.raises(DataError, match="4 labels for 3 samples"):
        load_eval_data(two_output_model(), tmp_path / "d.npz")


def test_labels_from_csv_npy_and_array_override_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 6), np.float32), labels=np.array([9, 9, 9]))
    (tmp_path / "l.csv").write_text("label,extra\n2,a\n1,b\n0,c\n")
    np.save(tmp_path / "l.npy", np.array([[1], [1], [2]]))
    m = two_output_model()
    np.testing.assert_array_equal(load_eval_data(m, tmp_path / "d.npz", labels=tmp_path / "l.csv").labels, [2, 1, 0])
    np.testing.assert_array_equal(load_eval_data(m, tmp_path / "d.npz", labels=tmp_path / "l.npy").labels, [1, 1, 2])
    np.testing.assert_array_equal(load_eval_data(m, tmp_path / "d.npz", labels=np.array([0, 2, 1])).labels, [0, 2, 1])
    with pytest.raises(DataError, match="not integers"):
        load_eval_data(m, tmp_path / "d.npz", labels=np.array([0.5, 1, 2]))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    m = tiny_classifier(1)
    with pytest.raises(DataError, match=str(tmp_path / "nope.npz")):
        load_eval_data(m, tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read .*bad.npz"):
        load_eval_data(m, tmp_path / "bad.npz")
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="use an .npz"):
        load_eval_data(m, tmp_path / "d.txt")
    np.savez(tmp_path / "ok.npz", X=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="labels file not found: .*missing.csv"):
        load_eval_data(m, tmp_path / "ok.npz", labels=tmp_path / "missing.csv")


def test_eval_data_checks_its_own_consistency() -> None:
    with pytest.raises(DataError, match="same number of samples"):
        EvalData({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, None, "test")
    with pytest.raises(DataError, match="one integer label per sample"):
        EvalData({"a": np.zeros((2, 1))}, np.array([1, 2, 3]), "test")


# -- random --------------------------------------------------------------------------------------------------


def test_random_data_is_seeded_and_warns() -> None:
    m = tiny_classifier("N")
    a = load_eval_data(m, None, seed=3, random_samples=5)
    b = load_eval_data(m, None, seed=3, random_samples=5)
    c = load_eval_data(m, None, seed=4, random_samples=5)
    assert a.warning == RANDOM_DATA_WARNING == (
        "no --data given: measuring fidelity to the original model on random inputs, not accuracy")
    assert a.labels is None and a.n == 5 and a.inputs["X"].shape == (5, 3, 8, 8)
    assert a.inputs["X"].dtype == np.float32
    assert 0.0 <= a.inputs["X"].min() and a.inputs["X"].max() < 1.0 and a.inputs["X"].std() > 0.2
    np.testing.assert_array_equal(a.inputs["X"], b.inputs["X"])
    assert not np.array_equal(a.inputs["X"], c.inputs["X"])


def test_random_data_integer_inputs() -> None:
    a = load_eval_data(tiny_classifier(1, input_type=TensorProto.UINT8), None, random_samples=50)
    assert a.inputs["X"].dtype == np.uint8 and a.inputs["X"].max() > 200
    b = load_eval_data(tiny_classifier(1, input_type=TensorProto.INT64), None)
    assert b.inputs["X"].dtype == np.int64 and 0 <= b.inputs["X"].min() and b.inputs["X"].max() <= 9


def test_random_data_uses_hints_for_dynamic_dims() -> None:
    m = model_with_input(["N", 3, "H", "W"])
    d = load_eval_data(m, None, input_shapes={"X": (1, 3, 5, 7)}, random_samples=2)
    assert d.inputs["X"].shape == (2, 3, 5, 7)
    with pytest.raises(ShapeError, match="--input-shape X:1x3x224x224"):
        load_eval_data(m, None)


# -- image folders --------------------------------------------------------------------------------------------


def save(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


RGB = (10, 20, 30)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("raw", [10, 20, 30]),
        ("unit", [10 / 255, 20 / 255, 30 / 255]),
        ("caffe", [30 - 103.94, 20 - 116.78, 10 - 123.68]),
        ("imagenet", [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]),
    ],
)
def test_image_presets(tmp_path: Path, preset: str, expected: list[float]) -> None:
    save(tmp_path / "a.png", solid(256, 300, RGB))
    d = load_eval_data(tiny_classifier(1, hw=(224, 224)), tmp_path, preprocess=preset)
    x = d.inputs["X"]
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.ptp(x[0], axis=(1, 2)), 0)  # a solid image stays solid


def test_image_center_crop_offsets_floor(tmp_path: Path) -> None:
    # 259 wide, 256 high (no resize for 224): crop left = floor(35 / 2) = 17; red channel = column index
    px = np.zeros((256, 259, 3), np.uint8)
    px[:, :, 0] = np.arange(259)[None, :]
    px[:, :, 1] = np.minimum(np.arange(256), 255)[:, None]
    save(tmp_path / "a.png", px)
    x = load_eval_data(tiny_classifier(1, hw=(224, 224)), tmp_path, preprocess="raw").inputs["X"][0]
    np.testing.assert_array_equal(x[0, 0, :3], [17, 18, 19])
    np.testing.assert_array_equal(x[1, :3, 0], [16, 17, 18])


def test_image_resize_short_side(tmp_path: Path) -> None:
    # 128×128 → 256×256 (bilinear) → crop 224: the left half black, the right half white
    px = np.zeros((128, 128, 3), np.uint8)
    px[:, 64:] = 255
    save(tmp_path / "a.png", px)
    x = load_eval_data(tiny_classifier(1, hw=(224, 224)), tmp_path, preprocess="raw").inputs["X"][0]
    assert x.shape == (3, 224, 224)
    assert np.all(x[:, :, :100] == 0) and np.all(x[:, :, 124:] == 255)
    assert 0 < x[0, 0, 111] < 255 or 0 < x[0, 0, 112] < 255  # bilinear edge at the centre


def test_image_nhwc_grayscale_and_sorted_names(tmp_path: Path) -> None:
    save(tmp_path / "b.png", solid(20, 20, RGB))
    save(tmp_path / "a.jpg", solid(20, 20, (255, 255, 255)))
    Image.fromarray(solid(20, 20, (0, 0, 0))).save(tmp_path / "c.BMP")
    (tmp_path / "notes.txt").write_text("ignored")
    nhwc = load_eval_data(tiny_classifier(1, nhwc=True, hw=(16, 16)), tmp_path, preprocess="raw")
    assert nhwc.inputs["X"].shape == (3, 16, 16, 3) and "NHWC" in nhwc.source
    np.testing.assert_allclose(nhwc.inputs["X"][:, 5, 5, :], [[255] * 3, RGB, [0] * 3], atol=1)
    gray = load_eval_data(tiny_classifier(1, c_in=1, hw=(16, 16)), tmp_path, preprocess="raw")
    assert gray.inputs["X"].shape == (3, 1, 16, 16)
    # PIL's L = (299 R + 587 G + 114 B) / 1000
    np.testing.assert_allclose(gray.inputs["X"][1, 0, 5, 5], (299 * 10 + 587 * 20 + 114 * 30) / 1000, atol=1)


def test_image_folder_needs_preset(tmp_path: Path) -> None:
    save(tmp_path / "a.png", solid(20, 20, RGB))
    with pytest.raises(DataError, match="--preprocess .*imagenet.*caffe.*unit.*raw"):
        load_eval_data(tiny_classifier(1), tmp_path)
    with pytest.raises(DataError, match="unknown --preprocess 'tf'"):
        load_eval_data(tiny_classifier(1), tmp_path, preprocess="tf")


def test_image_folder_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        load_eval_data(tiny_classifier(1), tmp_path, preprocess="raw")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        load_eval_data(tiny_classifier(1), tmp_path, preprocess="raw")
    with pytest.raises(DataError, match="has 5 channels"):
        load_eval_data(tiny_classifier(1, c_in=5), tmp_path, preprocess="raw")


def test_image_labels_csv_matched_by_file_name(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.png"):
        save(tmp_path / name, solid(20, 20, RGB))
    (tmp_path / "labels.csv").write_text("file,label,name\nc.png,3,\"x, y\"\na.png,1,z\nb.png,2,w\n")
    d = load_eval_data(tiny_classifier(1, hw=(16, 16)), tmp_path, preprocess="unit",
                       labels=tmp_path / "labels.csv")
    np.testing.assert_array_equal(d.labels, [1, 2, 3])  # a, b, c
    d2 = load_eval_data(tiny_classifier(1, hw=(16, 16)), tmp_path, preprocess="unit",
                        labels=tmp_path / "labels.csv", limit=2)
    assert d2.n == 2
    np.testing.assert_array_equal(d2.labels, [1, 2])
    (tmp_path / "short.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(DataError, match=r"no row for 2 image\(s\), e.g. \['b.png', 'c.png'\]"):
        load_eval_data(tiny_classifier(1, hw=(16, 16)), tmp_path, preprocess="unit", labels=tmp_path / "short.csv")


@needs_shared
def test_real_digits_npz_loads_as_float() -> None:
    m = onnx.load(SHARED / "models" / "mnist-cntk.onnx")
    d = load_eval_data(m, SHARED / "data" / "digits28.npz")
    assert d.n == 1797 and d.inputs["Input3"].shape == (1797, 1, 28, 28)
    assert d.inputs["Input3"].dtype == np.float32 and d.inputs["Input3"].max() == 255
    assert d.labels is not None and sorted(set(d.labels.tolist())) == list(range(10))


@pytest.mark.parametrize("chunk", [4096, 1000, 1 << 30])
def test_npz_members_are_read_in_chunks_with_the_same_values(tmp_path, monkeypatch, chunk: int) -> None:
    """read_rows reads a member in READ_CHUNK pieces (a zip member's readinto reads into a bytes object of
    the size asked first): the same rows whatever the chunk, whole or the first few."""
    import convopt.measure.npz as npz_mod
    from convopt.measure.npz import NpzFile

    a = np.random.default_rng(0).standard_normal((7, 3, 11, 13)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=a)
    monkeypatch.setattr(npz_mod, "READ_CHUNK", chunk)
    f = NpzFile(tmp_path / "d.npz")
    np.testing.assert_array_equal(f.read("x", None), a)
    np.testing.assert_array_equal(f.read("x", 3), a[:3])
