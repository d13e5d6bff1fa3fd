"""Weights are stored the way MatMul reads them: no graph transposes a checkpoint weight at load."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from transprune.export.weight_layout import fold_weight_transposes


def test_no_exported_graph_transposes_or_gemms_a_weight(paper_build):
    build_dir, manifest = paper_build
    matmul_weights = 0
    for graph in manifest["graphs"]:
        model = onnx.load(build_dir / graph["file"], load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            assert not (node.op_type == "Transpose" and node.input[0] in initializers), (graph["name"], node.name)
            assert node.op_type != "Gemm", (graph["name"], node.name)
            matmul_weights += node.op_type == "MatMul" and node.input[1] in initializers
    assert matmul_weights > 100  # every decoder, scorer, vision and head projection


def _graph_with(nodes, inputs, outputs, initializers):
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers),
                                   opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    return ir.serde.deserialize_model(model)


def _run(model, feeds):
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _fold_and_fill(model, weight_values):
    """Runs the pass, then gives the new initializers the transposed values (the writer's job)."""
    folded = fold_weight_transposes(model.graph, is_checkpoint_weight=lambda v: v.name in weight_values)
    for new, original in folded.items():
        model.graph.initializers[new].const_value = ir.tensor(np.ascontiguousarray(weight_values[original].T))
    return folded


@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_and_transpose_uses_become_matmul_with_the_same_output(with_bias):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)  # [out, in]
    v = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    f = onnx.TensorProto.FLOAT
    nodes = [onnx.helper.make_node("Gemm", ["x", "w", *(["b"] if with_bias else [])], ["y"], transB=1),
             onnx.helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0]),
             onnx.helper.make_node("MatMul", ["x", "vt"], ["z"])]
    initializers = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(v, "v"),
                    *([onnx.numpy_helper.from_array(bias, "b")] if with_bias else [])]
    model = _graph_with(nodes, [onnx.helper.make_tensor_value_info("x", f, [2, 3])],
                        [onnx.helper.make_tensor_value_info("y", f, [2, 5]), onnx.helper.make_tensor_value_info("z", f, [2, 4])], initializers)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    before = _run(model, {"x": x})
    folded = _fold_and_fill(model, {"w": w, "v": v})
    assert folded == {"w.T": "w", "v.T": "v"}
    ops = [node.op_type for node in model.graph]
    assert "Gemm" not in ops and "Transpose" not in ops
    assert [o.name for o in model.graph.outputs] == ["y", "z"]  # the spec's output names are kept
    for got, want in zip(_run(model, {"x": x}), before):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_weight_read_any_other_way_is_left_alone():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    f = onnx.TensorProto.FLOAT
    nodes = [onnx.helper.make_node("Gather", ["t", "ids"], ["rows"]),
             onnx.helper.make_node("Transpose", ["t"], ["tt"], perm=[1, 0]),
             onnx.helper.make_node("MatMul", ["rows", "tt"], ["y"])]
    model = _graph_with(nodes, [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2])],
                        [onnx.helper.make_tensor_value_info("y", f, [2, 6])], [onnx.numpy_helper.from_array(table, "t")])
    assert _fold_and_fill(model, {"t": table}) == {}
    assert [node.op_type for node in model.graph] == ["Gather", "Transpose", "MatMul"]
    # and a constant the exporter computed is never a checkpoint weight
    assert fold_weight_transposes(model.graph, is_checkpoint_weight=lambda v: False) == {}
