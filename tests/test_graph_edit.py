"""convopt.graph.edit: fresh names unique across the whole model, subgraphs included (issue 15 row 12), and
with_outputs (onnx-graphsurgeon finds what the wanted tensors need), on built models and the shared IR-3 ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.graph import NameScope, with_outputs
from tests.helpers import NO_SHARED, SHARED_MODELS

runner = CliRunner()
CLASH = "factorize/conv0/3x1/out"  # the first tensor name factorize gives conv0


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def if_model(names_in_branch: tuple[str, ...] = (CLASH,)) -> onnx.ModelProto:
    """x → conv0 → y; If(c): then = Relu(y) through ``names_in_branch`` (nested in a Loop-free If too), else y."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W")
    out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 16, 9, 9])
    chain = ["y", *names_in_branch]
    nodes = [helper.make_node("Relu" if i == 0 else "Identity", [a], [b], name=f"t{i}")
             for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    nodes.append(helper.make_node("Identity", [chain[-1]], ["t_out"], name="t_last"))
    then_g = helper.make_graph(nodes, "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Identity", ["y"], ["e_out"], name="e_id")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 16, 9, 9])])
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("If", ["c"], ["z"], name="if0", then_branch=then_g, else_branch=else_g)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 9]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 9, 9])],
        [W],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m, full_check=True)
    return m


def test_name_scope_sees_names_in_nested_subgraphs() -> None:
    inner = if_model(("deep",)).graph  # a graph with an If whose branch holds "deep"
    holder = helper.make_node("If", ["c2"], ["w"], name="outer_if", then_branch=inner, else_branch=inner)
    g = helper.make_graph([holder], "top", [helper.make_tensor_value_info("c2", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)])
    names = NameScope(g)
    assert {"deep", "t_out", "e_id", "y", "W", "conv0"} <= names.used
    assert names.fresh("deep") == "deep_2" and names.fresh("deep") == "deep_3" and names.fresh("new") == "new"


def test_optimize_gives_a_valid_model_when_a_branch_already_uses_a_fresh_name(tmp_path: Path) -> None:
    m = if_model()
    p, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    p.write_bytes(m.SerializeToString())
    r = runner.invoke(app, ["optimize", str(p), "-o", str(out), "--no-eval", "-q", "--passes", "factorize",
                            "--full-rank"])
    assert r.exit_code == 0, r.output
    new = onnx.load(str(out))
    onnx.checker.check_model(new, full_check=True)
    assert [n.op_type for n in new.graph.node] == ["Conv", "Conv", "If"]
    assert CLASH not in {t for n in new.graph.node for t in n.output}  # the factor took another name
    x = np.random.default_rng(1).standard_normal((1, 8, 9, 9)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        want, got = _session(m).run(None, feeds)[0], _session(new).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ with_outputs


def test_with_outputs_keeps_the_producers_of_tensors_a_branch_reads_from_the_outer_scope() -> None:
    """r2 is read only inside the If's branch: its producer must stay; the unrelated Sigmoid goes."""
    then_g = helper.make_graph([helper.make_node("Identity", ["r2"], ["t"], name="t")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["r1"], ["e"], name="e")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r1"], name="relu"), helper.make_node("Neg", ["x"], ["r2"], name="neg"),
         helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
         helper.make_node("If", ["c"], ["z"], name="if", then_branch=then_g, else_branch=else_g)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sub = with_outputs(m, ["z"])
    assert [n.name for n in sub.graph.node] == ["relu", "neg", "if"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    np.testing.assert_array_equal(_session(sub).run(["z"], {"x": x, "c": np.array(True)})[0], -x)
    np.testing.assert_array_equal(_session(sub).run(["z"], {"x": x, "c": np.array(False)})[0], np.maximum(x, 0))
    assert len(m.graph.node) == 4  # the input model is untouched


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
@pytest.mark.parametrize("name", ["squeezenet1.1.onnx", "mnist-cntk.onnx", "candy-style.onnx"])
def test_with_outputs_on_the_shared_ir3_models(name: str) -> None:
    """IR 3 needs every initializer listed as a graph input: the sub-model keeps them (and only the needed
    ones), loads in ORT, and computes the intermediate tensor exactly as the whole model does."""
    m = onnx.load(str(SHARED_MODELS / name))
    assert m.ir_version == 3
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    want = convs[1].output[0]
    sub = with_outputs(m, [want])
    inits = {t.name for t in sub.graph.initializer}
    assert inits and inits <= {i.name for i in sub.graph.input}
    assert len(sub.graph.node) < len(m.graph.node) and sub.ir_version == 3
    full = onnx.ModelProto()
    full.CopyFrom(m)
    full.graph.output.append(helper.make_empty_tensor_value_info(want))
    inp = next(i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer})
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape, dtype=np.float32) * 255
    got = _session(sub).run([want], {inp.name: x})[0]
    np.testing.assert_array_equal(got, _session(full).run([want], {inp.name: x})[0])


def test_pruned_leaves_no_weights_in_the_graph_surgeon_s_reference_cycles() -> None:
    """pruned imports the model's structure into onnx-graphsurgeon, not its weights: the cycles its graph
    leaves for Python's cyclic collector hold no tensor with data (they held the whole model being refit, into
    each of auto mode's checks), and the result is the same as from the full model."""
    import gc

    from convopt.graph.edit import pruned
    from tests.helpers import conv_model

    model = conv_model(8, 16)
    big = [t.name for t in model.graph.initializer if len(t.raw_data) > 0]
    assert big
    out = model.graph.node[0].output[0]
    gc.collect()
    gc.disable()
    try:
        skeleton, inits = pruned(model, [out])
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        held = [o for o in gc.garbage if isinstance(o, onnx.TensorProto)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert held and all(len(t.raw_data) == 0 for t in held)  # the stubs' cycles, no data
    first = model.graph.node[0]
    assert [n.name for n in skeleton.graph.node] == [first.name]
    wanted = [t for t in model.graph.initializer if t.name in first.input]
    assert [(t.name, t.raw_data) for t in inits] == [(t.name, t.raw_data) for t in wanted] and wanted
