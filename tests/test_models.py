"""Built-in models: the literature's arithmetic, valid ONNX that runs in ORT, the trained example, the CLI."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from convopt.errors import InputError
from convopt.models import (
    MODELS,
    build,
    conv_weight_params,
    conv_weights,
    example_data_path,
    example_info,
    example_model_path,
    list_models,
    load_example_data,
)
from convopt.models.cli import app
from convopt.models.inception import inception_3a
from convopt.models.vgg import vgg16_weight_shapes

# Small enough to build and run in ORT in well under a second each (VGG-16 runs at 1/8 width, see below).
RUNNABLE = [n for n in MODELS if n not in ("vgg16", "example")]


@functools.lru_cache(maxsize=None)
def _default(name: str) -> onnx.ModelProto:
    """The model with default options, built once per test session (tests must not mutate it)."""
    return build(name)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _declared_shape(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    sess = _session(model)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(seed).random(_declared_shape(model.graph.input[0])).astype(np.float32)
    return sess.run(None, {inp.name: x})[0]


# ---------------------------------------------------------------------------- the literature's arithmetic
# Inception (3a), weights only: the naive module, then with the 3×3/5×5 reductions, then with the pool proj.
INCEPTION_3A_NAIVE = 192 * (1 * 1 * 64) + 192 * (3 * 3 * 128) + 192 * (5 * 5 * 32)
INCEPTION_3A_REDUCED = 192 * 64 + 192 * 96 + 96 * 9 * 128 + 192 * 16 + 16 * 25 * 32
INCEPTION_3A = INCEPTION_3A_REDUCED + 192 * 32
RESNET_3X3_256 = 3 * 3 * 256 * 256
RESNET_BOTTLENECK = 256 * 64 + 3 * 3 * 64 * 64 + 64 * 256
SEPARABLE_3_256 = 3 * 3 * 3 + 3 * 256
DENSE_3_256 = 3 * 3 * 3 * 256

# (model name, builder options, expected conv weights)
ARITHMETIC = [
    ("inception-3a-naive", {}, 387_072),
    ("inception-3a", {"pool_proj": False}, 157_184),
    ("inception-3a", {}, 163_328),
    ("resnet-basic-block", {}, 1_179_648),
    ("resnet-bottleneck-block", {}, 69_632),
    ("mobilenet-v1-block", {"channels_in": 3, "channels_out": 256}, 795),
    ("mobilenet-v1-block", {"channels_in": 3, "channels_out": 256, "separable": False}, 6_912),
]


def test_literature_numbers() -> None:
    assert INCEPTION_3A_NAIVE == 387_072
    assert INCEPTION_3A_REDUCED == 157_184
    assert INCEPTION_3A == 163_328
    assert RESNET_3X3_256 == 589_824
    assert 2 * RESNET_3X3_256 == 1_179_648
    assert RESNET_BOTTLENECK == 69_632
    assert SEPARABLE_3_256 == 795
    assert DENSE_3_256 == 6_912


@pytest.mark.parametrize("name,options,weights", ARITHMETIC, ids=[f"{n}-{w}" for n, _, w in ARITHMETIC])
def test_conv_weights_match_literature(name: str, options: dict[str, object], weights: int) -> None:
    assert conv_weight_params(build(name, bias=False, **options)) == weights


def test_per_layer_weights() -> None:
    naive = conv_weights(build("inception-3a-naive", bias=False))
    assert naive == {"inception_3a/1x1": 192 * 64, "inception_3a/3x3": 192 * 9 * 128, "inception_3a/5x5": 192 * 25 * 32}
    assert set(conv_weights(build("resnet-basic-block", bias=False)).values()) == {RESNET_3X3_256}
    bottleneck = conv_weights(build("resnet-bottleneck-block", bias=False))
    assert bottleneck == {"block/conv1": 256 * 64, "block/conv2": 9 * 64 * 64, "block/conv3": 64 * 256}
    sep = conv_weights(build("mobilenet-v1-block", bias=False, channels_in=3, channels_out=256))
    assert sep == {"block/dw": 27, "block/pw": 768}


def test_reference_architecture_totals() -> None:
    """Conv weight totals of the full networks match the reference implementations (torchvision / Caffe)."""
    assert conv_weight_params(build("resnet18", bias=False)) == 11_166_912
    assert conv_weight_params(build("resnet50", bias=False)) == 23_454_912
    assert conv_weight_params(build("googlenet", bias=False)) == 5_966_272


@pytest.mark.parametrize("name,options,weights", ARITHMETIC, ids=[f"{n}-{w}" for n, _, w in ARITHMETIC])
def test_inspect_agrees_with_literature(name: str, options: dict[str, object], weights: int) -> None:
    inspect = pytest.importorskip("convopt.inspect")
    model = build(name, bias=False, **options)
    result = inspect.inspect_model(model)
    assert {r.name: r.params for r in result.rows} == conv_weights(model)
    assert sum(r.params for r in result.rows) == weights
    # MACs = weights × output pixels (every conv here keeps the spatial size)
    hw = {i.name: _declared_shape(i)[2] * _declared_shape(i)[3] for i in model.graph.input}["input"]
    assert all(r.macs == r.params * hw for r in result.rows)


def test_inspect_counts_bias_with_params() -> None:
    inspect = pytest.importorskip("convopt.inspect")
    rows = inspect.inspect_model(build("inception-3a")).rows
    assert sum(r.params for r in rows) == INCEPTION_3A + (64 + 96 + 128 + 16 + 32 + 32)


# ---------------------------------------------------------------------------- valid ONNX, runs in ORT
@pytest.mark.parametrize("name", RUNNABLE)
def test_builder_is_valid_and_runs(name: str) -> None:
    model = _default(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13 and model.ir_version == 8
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    y = _run(model)
    assert list(y.shape) == _declared_shape(model.graph.output[0])
    assert np.isfinite(y).all() and float(np.abs(y).max()) > 0


def test_declared_shapes() -> None:
    shapes = {n: (_declared_shape(_default(n).graph.input[0]), _declared_shape(_default(n).graph.output[0]))
              for n in ("inception-3a-naive", "inception-3a", "resnet-basic-block", "resnet-bottleneck-block",
                        "mobilenet-v1-block")}
    assert shapes == {
        "inception-3a-naive": ([1, 192, 28, 28], [1, 416, 28, 28]),
        "inception-3a": ([1, 192, 28, 28], [1, 256, 28, 28]),
        "resnet-basic-block": ([1, 256, 14, 14], [1, 256, 14, 14]),
        "resnet-bottleneck-block": ([1, 256, 56, 56], [1, 256, 56, 56]),
        "mobilenet-v1-block": ([1, 32, 112, 112], [1, 64, 112, 112]),
    }
    for net in ("googlenet", "resnet18", "resnet50"):
        m = _default(net)
        assert _declared_shape(m.graph.input[0]) == [1, 3, 224, 224]
        assert _declared_shape(m.graph.output[0]) == [1, 1000]


def test_batch_and_input_size_options() -> None:
    m = build("resnet18", batch=2, input_size=64, num_classes=10)
    y = _run(m)
    assert y.shape == (2, 10)
    m = build("inception-3a", batch=3, input_size=14)
    assert _run(m).shape == (3, 256, 14, 14)


def test_weights_are_deterministic_and_seeded() -> None:
    a = build("inception-3a", seed=7).SerializeToString(deterministic=True)
    b = build("inception-3a", seed=7).SerializeToString(deterministic=True)
    c = build("inception-3a", seed=8).SerializeToString(deterministic=True)
    assert a == b and a != c


def test_he_normal_weights() -> None:
    model = build("inception-3a-naive")
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["inception_3a/5x5/W"]
    assert w.shape == (32, 192, 5, 5) and w.dtype == np.float32
    assert w.std() == pytest.approx(math.sqrt(2 / (192 * 25)), rel=0.05)


@pytest.mark.parametrize("name,count", [("resnet-basic-block", 2), ("resnet-bottleneck-block", 3),
                                        ("mobilenet-v1-block", 2), ("resnet50", 53)])
def test_batchnorm_after_convs(name: str, count: int) -> None:
    model = _default(name)
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == count == sum(n.op_type == "Conv" for n in model.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for bn in bns:
        scale, shift, mean, var = (inits[i] for i in bn.input[1:])
        assert not np.allclose(scale, 1) and not np.allclose(shift, 0)
        assert not np.allclose(mean, 0) and not np.allclose(var, 1) and (var > 0).all()


def test_no_bias_option() -> None:
    for name in ("inception-3a", "resnet-basic-block", "mobilenet-v1-block"):
        model = build(name, bias=False)
        assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Conv")
    assert all(len(n.input) == 3 for n in build("inception-3a").graph.node if n.op_type == "Conv")


def test_mobilenet_block_is_depthwise() -> None:
    model = build("mobilenet-v1-block")
    dw = next(n for n in model.graph.node if n.name == "block/dw")
    assert {a.name: a.i for a in dw.attribute if a.type == onnx.AttributeProto.INT}["group"] == 32


def test_googlenet_structure() -> None:
    model = build("googlenet", bias=False)
    convs = conv_weights(model)
    assert sum(1 for n in convs if n.endswith("/5x5")) == 9
    assert convs["inception_3a/5x5"] == 16 * 25 * 32 and convs["inception_5b/3x3"] == 192 * 9 * 384
    assert convs["conv1/7x7_s2"] == 64 * 3 * 49


# VGG-16 at full size is 138M parameters (~550 MB): count it from the shared layer table, run it at 1/8 width.
def test_vgg16_counts_analytically() -> None:
    layers = vgg16_weight_shapes()
    conv = sum(math.prod(s) for _, op, s in layers if op == "Conv")
    conv_bias = sum(s[0] for _, op, s in layers if op == "Conv")
    fc = sum(math.prod(s) + s[0] for _, op, s in layers if op == "Gemm")
    assert sum(op == "Conv" for _, op, _ in layers) == 13
    assert conv == 14_710_464
    assert conv + conv_bias + fc == 138_357_544
    assert dict((n, s) for n, _, s in layers)["fc6"] == (4096, 512 * 7 * 7)


def test_vgg16_reduced_width_builds_and_runs() -> None:
    model = build("vgg16", width=0.125, input_size=64, num_classes=10)
    onnx.checker.check_model(model, full_check=True)
    expected = {n: math.prod(s) for n, op, s in vgg16_weight_shapes(width=0.125, input_size=64, num_classes=10)
                if op == "Conv"}
    assert conv_weights(model) == expected
    ops = [n.op_type for n in model.graph.node]
    assert (ops.count("Conv"), ops.count("MaxPool"), ops.count("Gemm")) == (13, 5, 3)
    assert _run(model).shape == (1, 10)


def test_unknown_model_and_option() -> None:
    with pytest.raises(InputError, match="inception-3a-naive.*resnet50"):
        build("alexnet")
    with pytest.raises(InputError, match="takes no option"):
        build("inception-3a", depth=3)
    with pytest.raises(InputError, match="no option"):
        build("example", seed=1)
    assert [m.name for m in list_models()] == list(MODELS)


def test_inception_3a_variants_are_named() -> None:
    assert inception_3a(reductions=False, pool_proj=False).graph.name == "inception_3a_naive"


# ---------------------------------------------------------------------------- the trained example
def test_example_files() -> None:
    assert example_model_path().is_file() and example_data_path().is_file()
    assert example_model_path().stat().st_size <= 2 * 1024 * 1024
    x, y = load_example_data()
    assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28) and 200 <= len(x) <= 1000
    assert y.dtype == np.int64 and y.shape == (len(x),) and set(np.unique(y)) == set(range(10))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    info = example_info()
    for key in ("dataset", "split", "seed", "epochs", "train_accuracy", "heldout_accuracy", "command"):
        assert key in info
    assert info["split"]["heldout"] == len(y)


def test_example_model_shape_and_convs() -> None:
    model = build("example")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13 and model.ir_version <= 8
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert _declared_shape(model.graph.input[0]) == [1, 1, 28, 28]
    assert _declared_shape(model.graph.output[0]) == [1, 10]
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    kernels = {inits[n.input[1]][2:] for n in model.graph.node if n.op_type == "Conv"}
    assert {(1, 1), (3, 3), (5, 5)} <= kernels
    dense5 = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and inits[n.input[1]][2:] == (5, 5)]
    assert any(o >= 32 and i >= 32 for o, i, _, _ in dense5)


def test_example_heldout_accuracy_matches_record() -> None:
    x, y = load_example_data()
    sess = _session(build("example"))
    pred = np.array([int(sess.run(["logits"], {"input": x[i:i + 1]})[0].argmax()) for i in range(len(x))])
    acc = float((pred == y).mean())
    assert acc == pytest.approx(example_info()["heldout_accuracy"], abs=1e-3)
    assert acc >= 0.90


# ---------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_list() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in MODELS:
        assert name in result.output


def test_cli_export_writes_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "inception-3a", "-o", str(out), "--no-bias", "--seed", "3"])
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert conv_weight_params(model) == 163_328
    assert model.SerializeToString(deterministic=True) == build("inception-3a", bias=False, seed=3).SerializeToString(
        deterministic=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind


def test_cli_export_refuses_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["export", "mobilenet-v1-block", "-o", str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, ["export", "mobilenet-v1-block", "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(out)))


def test_cli_export_unknown_name(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "alexnet", "-o", str(out)])
    assert result.exit_code == 2
    assert "unknown model" in result.output and "googlenet" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_export_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "inception-3a", "-o", str(tmp_path / "no" / "m.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_export_example(tmp_path: Path) -> None:
    out = tmp_path / "example.onnx"
    result = runner.invoke(app, ["export", "example", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == example_model_path().read_bytes()
