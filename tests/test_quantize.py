"""INT8 after factorization: QDQ models that ORT runs, per-channel weight scales, full-rank rewrites that quantize
like the original, temp files removed, one-line errors."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convopt.errors import ConvOptError, DataError, UnsupportedModelError
from convopt.io import default_opset
from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.ort import OrtSettings, make_session, run_model
from convopt.passes import RankPolicy
from convopt.uniform import optimize_uniform as optimize
from convopt.quantize import Int8Settings, cpu_int8_path, int8_supported, int8_verdict, quantize_int8
from tests.helpers import NO_SHARED, SHARED, SHARED_MODELS, conv_model, op_types, rel_l2, run

IMAGES = SHARED / "data" / "imagenet-sample"
# A full-rank rewrite is exact in FP32, so after INT8 it differs from the quantized original only by the extra
# quantized activations between its factors (one or two per layer): its error, and its distance to the quantized
# original, stay within a small multiple of the quantized original's own error.
QUANT_TOL_FACTOR = 2.5
# SqueezeNet outputs probabilities (softmax); top-1 decisions of the two INT8 models on 64 images
MIN_TOP1_AGREEMENT = 0.8


def _calib(model: onnx.ModelProto, n: int = 48, seed: int = 0) -> EvalData:
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(seed)
    return EvalData({x.name: rng.standard_normal((n, *shape)).astype(np.float32)}, None, "random calibration")


def _small(k: int = 3, cin: int = 16, cout: int = 32) -> onnx.ModelProto:
    return conv_model(cin, cout, (k, k), batch=8, hw=(16, 16), pads=(k // 2,) * 4)


def _weight_dq(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in weights]


# ---------------------------------------------------------------------------------------------------------
# The quantized model


def test_quantized_model_has_qdq_nodes_and_runs_in_ort():
    m = _small()
    calib = _calib(m)
    q = quantize_int8(m, calib)
    ops = op_types(q.model)
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 2
    assert q.qdq_nodes == ops.count("QuantizeLinear") + ops.count("DequantizeLinear")
    assert q.calib_samples == 48 and q.settings.reduce_range is not None
    x = calib.inputs["x"][:8]
    ref, out = run(m, {"x": x})[0], run(q.model, {"x": x})[0]
    assert out.shape == ref.shape
    err = rel_l2(ref, out)
    assert 0 < err < 0.05  # really quantized, and close: 8-bit steps on a single conv
    onnx.checker.check_model(q.model)


def test_caller_model_not_mutated():
    m = _small()
    before = m.SerializeToString()
    quantize_int8(m, _calib(m))
    assert m.SerializeToString() == before


def test_conv_weights_get_one_scale_per_output_channel():
    m = _small(cout=24)
    q = quantize_int8(m, _calib(m))
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    dq = _weight_dq(q.model)
    assert len(dq) == 1 and q.per_channel_weights == 1
    scale = inits[dq[0].input[1]]
    assert scale.shape == (24,)
    axis = {a.name: a.i for a in dq[0].attribute}.get("axis", 1)
    assert axis == 0
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W"))
    qmax = 64 if q.settings.reduce_range else 127  # symmetric int8, 7 bits with reduce_range
    np.testing.assert_allclose(scale * qmax, np.abs(w).reshape(24, -1).max(axis=1), rtol=1e-5)


def test_per_tensor_setting_gives_one_scale():
    m = _small()
    q = quantize_int8(m, _calib(m), Int8Settings(per_channel=False))
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    assert inits[_weight_dq(q.model)[0].input[1]].size == 1 and q.per_channel_weights == 0


def _dequantized_weight(model: onnx.ModelProto) -> np.ndarray:
    """The Conv weight as the INT8 model sees it: (w_int8 - zero_point) * scale, per channel or per tensor."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = _weight_dq(model)[0]
    w, scale, zp = (inits[n] for n in dq.input)
    shape = (-1, 1, 1, 1) if scale.size > 1 else ()
    return (w.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)


def test_per_channel_keeps_small_channels_that_per_tensor_loses():
    """Output channels whose weights span 1e-3..1 (as low-rank factors' channels do, scaled by their singular
    values): one scale per tensor rounds the small channels to zero, one per channel keeps each within 1 %."""
    m = _small(cin=8, cout=16)
    w = next(t for t in m.graph.initializer if t.name == "W")
    arr = (numpy_helper.to_array(w) * np.logspace(-3, 0, 16)[:, None, None, None]).astype(np.float32)
    w.CopyFrom(numpy_helper.from_array(arr, "W"))
    calib = _calib(m)
    errs = {}
    for per_channel in (True, False):
        deq = _dequantized_weight(quantize_int8(m, calib, Int8Settings(per_channel=per_channel)).model)
        diff = np.linalg.norm((deq - arr).reshape(16, -1), axis=1) / np.linalg.norm(arr.reshape(16, -1), axis=1)
        errs[per_channel] = diff
    assert errs[True].max() < 0.01
    assert errs[False][0] == pytest.approx(1.0)  # the smallest channel is all zeros per tensor


# ---------------------------------------------------------------------------------------------------------
# Full-rank rewrites quantize like the original


@pytest.mark.parametrize(("passname", "k"), [("bottleneck", 3), ("factorize", 3), ("depthwise", 3), ("split5x5", 5)])
def test_full_rank_rewrite_quantized_matches_quantized_original(passname, k):
    m = _small(k=k)
    calib = _calib(m)
    res = optimize(m, [passname], RankPolicy(mode="full"))
    assert sum(len(p.rewritten) for p in res.report.passes) == 1
    x = _calib(m, n=8, seed=7).inputs["x"]
    ref = run(m, {"x": x})[0]
    assert rel_l2(ref, run(res.model, {"x": x})[0]) < 1e-4  # exact in FP32
    q_orig = run(quantize_int8(m, calib).model, {"x": x})[0]
    q_rw = run(quantize_int8(res.model, calib).model, {"x": x})[0]
    e_orig = rel_l2(ref, q_orig)
    assert 0 < e_orig < 0.05
    assert rel_l2(ref, q_rw) <= QUANT_TOL_FACTOR * e_orig
    assert rel_l2(q_orig, q_rw) <= QUANT_TOL_FACTOR * e_orig


# ---------------------------------------------------------------------------------------------------------
# SqueezeNet: opset 7, weights listed as graph inputs (IR 3)

squeezenet = pytest.mark.skipif(not (SHARED_MODELS.is_dir() and IMAGES.is_dir()), reason=NO_SHARED)


@pytest.fixture(scope="module")
def sqz():
    m = onnx.load(str(SHARED_MODELS / "squeezenet1.1.onnx"))
    data = load_eval_data(m, IMAGES, preprocess="caffe", limit=96)
    calib = EvalData({k: v[:32] for k, v in data.inputs.items()}, None, "first 32 images")
    held = EvalData({k: v[32:] for k, v in data.inputs.items()}, None, "next 64 images")
    return m, calib, held


def _outputs(model: onnx.ModelProto, data: EvalData) -> np.ndarray:
    s = OrtSettings(threads=1)
    return run_model(make_session(model, s), data, s)[0].reshape(data.n, -1)


@squeezenet
def test_squeezenet_opset7_is_upgraded_and_runs_with_per_channel_qdq(sqz):
    m, calib, held = sqz
    q = quantize_int8(m, calib)
    assert (q.opset_before, q.opset_after) == (7, 13)
    assert default_opset(q.model) == 13 and q.model.ir_version >= 7
    assert any("opset 7 -> 13" in c for c in q.changes)
    convs = op_types(q.model).count("Conv")
    assert convs == 26 and q.per_channel_weights == 26
    onnx.checker.check_model(q.model)
    ref, out = _outputs(m, held), _outputs(q.model, held)
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= MIN_TOP1_AGREEMENT


@squeezenet
@pytest.mark.parametrize("passname", ["bottleneck", "depthwise"])
def test_squeezenet_full_rank_rewrite_quantized_matches_quantized_original(sqz, passname):
    m, calib, held = sqz
    res = optimize(m, [passname], RankPolicy(mode="full"))
    assert sum(len(p.rewritten) for p in res.report.passes) > 0
    ref = _outputs(m, held)
    q_orig = _outputs(quantize_int8(m, calib).model, held)
    q_rw = _outputs(quantize_int8(res.model, calib).model, held)
    e_orig = rel_l2(ref, q_orig)
    assert rel_l2(ref, q_rw) <= QUANT_TOL_FACTOR * e_orig
    assert rel_l2(q_orig, q_rw) <= QUANT_TOL_FACTOR * e_orig
    assert np.mean(q_orig.argmax(1) == q_rw.argmax(1)) >= MIN_TOP1_AGREEMENT


@squeezenet
def test_mnist_gemm_bias_is_flattened_and_digits_agree():
    """mnist-cntk (opset 7): ORT's pre-processing fuses MatMul + Add into a Gemm whose bias is (1, 10), which ORT's
    per-channel quantizer cannot index; convopt stores it as (10,)."""
    m = onnx.load(str(SHARED_MODELS / "mnist-cntk.onnx"))
    digits = np.load(SHARED / "data" / "digits28.npz")
    images = digits["images"].astype(np.float32)
    calib = EvalData({"Input3": images[:64]}, None, "64 digits")
    held = EvalData({"Input3": images[64:264]}, None, "200 digits")
    q = quantize_int8(m, calib)
    assert any("Gemm bias" in c for c in q.changes)
    assert q.per_channel_weights == 2
    ref, out = _outputs(m, held), _outputs(q.model, held)
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.95


@squeezenet
def test_model_with_ops_onnx_no_longer_defines_is_refused_in_one_line():
    m = onnx.load(str(SHARED_MODELS / "candy-style.onnx"))
    calib = EvalData({"inputImage": np.zeros((1, 3, 720, 720), np.float32)}, None, "one black image")
    with pytest.raises(UnsupportedModelError) as exc:
        quantize_int8(m, calib)
    msg = str(exc.value)
    assert "ImageScaler" in msg and "re-export it at opset 13" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------------------
# Temporary files and errors


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Every temp folder (ours and ORT's) goes under one fresh folder, which must be empty afterwards."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_temp_files_removed_after_success(private_tmp):
    m = _small()
    quantize_int8(m, _calib(m))
    assert list(private_tmp.iterdir()) == []


def test_temp_files_removed_after_ort_failure(private_tmp, monkeypatch):
    import onnxruntime.quantization as oq

    def failing(model_input, model_output, *args, **kwargs):
        Path(model_output).write_bytes(b"partial")
        raise RuntimeError("simulated failure inside the quantizer\nsecond line")

    monkeypatch.setattr(oq, "quantize_static", failing)
    m = _small()
    with pytest.raises(UnsupportedModelError) as exc:
        quantize_int8(m, _calib(m))
    msg = str(exc.value)
    assert "\n" not in msg and "simulated failure" in msg and "drop --quantize" in msg
    assert exc.value.exit_code == 2
    assert list(private_tmp.iterdir()) == []


def test_calibration_data_missing_input_is_a_data_error():
    m = _small()
    calib = EvalData({"y": np.zeros((4, 16, 16, 16), np.float32)}, None, "wrong.npz")
    with pytest.raises(DataError, match="no array for model input") as exc:
        quantize_int8(m, calib)
    assert "\n" not in str(exc.value)


def test_calibration_data_wrong_shape_is_a_data_error():
    m = _small()
    calib = EvalData({"x": np.zeros((4, 16, 8, 8), np.float32)}, None, "small.npz")
    with pytest.raises(DataError, match=r"samples of shape \(16, 8, 8\)"):
        quantize_int8(m, calib)


def test_int8_activations_with_uint8_weights_refused():
    with pytest.raises(ConvOptError, match="uint8 weights"):
        Int8Settings(activation_type="int8", weight_type="uint8")


# ---------------------------------------------------------------------------------------------------------
# Is INT8 faster here?


@pytest.mark.parametrize(
    ("flags", "machine", "isa", "vnni"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "AVX-512 VNNI", True),
        ({"avx2", "avx_vnni"}, "x86_64", "AVX-VNNI", True),
        ({"avx2", "fma"}, "x86_64", "AVX2 (no VNNI)", False),
        ({"asimd", "asimddp"}, "aarch64", "ARM dot product", True),
        ({"asimd"}, "aarch64", "ARM NEON (no dot product)", False),
    ],
)
def test_cpu_int8_path_from_flags(flags, machine, isa, vnni):
    path = cpu_int8_path(frozenset(flags), machine)
    assert (path.isa, path.vnni) == (isa, vnni)


def test_reduce_range_follows_the_cpu():
    s = Int8Settings().resolved()
    assert s.reduce_range is (not cpu_int8_path().vnni)
    assert Int8Settings(reduce_range=True).resolved().reduce_range is True


def test_int8_verdict_names_the_speedup_and_instruction_set():
    cpu = cpu_int8_path(frozenset({"avx2"}), "x86_64")
    reason = int8_verdict(0.93, cpu)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("INT8 is not faster here") and "0.93x" in reason and "AVX2 (no VNNI)" in reason
    assert int8_verdict(1.05, cpu) is not None  # within noise of FP32 is not a fast path
    assert int8_verdict(1.6, cpu) is None


def test_int8_supported_measures_once_and_answers_in_one_line():
    settings = OrtSettings(threads=1, repeats=10)
    reason = int8_supported(settings)
    assert reason is None or (reason.startswith("INT8 is not faster here") and "\n" not in reason)
    assert int8_supported(settings) is reason  # cached: the probe runs once per process and settings


def test_int8_supported_refuses_other_providers():
    reason = int8_supported(OrtSettings(provider="CUDAExecutionProvider"))
    assert reason is not None and "CPU execution provider" in reason
