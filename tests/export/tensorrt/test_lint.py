"""transprune.export.tensorrt.lint on hand-built graphs: each rule, one small graph at a time (the
operator matrix's own rules: test_operator_matrix.py; whole models: test_lint_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from transprune.export.tensorrt.lint import lint_model  # noqa: E402

from .onnx_graphs import FLOAT, INT64, clean_model, errors, i64, model, topk_model, vi, warnings_  # noqa: E402


# ---------------------------------------------------------------------------------------------
# hand-built graphs


def test_clean_graph_passes():
    report = lint_model(clean_model())
    assert report.ok and report.issues == [], report.format()
    assert report.op_counts == {"Add": 1, "MatMul": 1, "Softmax": 1}
    assert report.to_dict()["ok"] is True and "OK" in report.format()


@pytest.mark.parametrize("op", ["Col2Im", "Unique"])
def test_unsupported_op_fails_with_its_name(op):
    if op == "Unique":
        node = helper.make_node("Unique", ["x"], ["y"], name="uniq")
    else:
        node = helper.make_node("Col2Im", ["x", "shape", "block"], ["y"], name="c2i")
    inits = [i64("shape", [4, 4]), i64("block", [2, 2])] if op == "Col2Im" else []
    report = lint_model(model([node], [vi("x")], [vi("y", shape=None)], inits))
    assert not report.ok
    assert [(i.op_type, i.node) for i in errors(report)] == [(op, node.name)]
    assert "not supported" in errors(report)[0].message
    assert op in report.format()


def test_op_missing_from_matrix_fails():
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="rms")
    report = lint_model(model([node], [vi("x"), vi("s", shape=[8])], [vi("y")], opset=23))
    messages = [i.message for i in errors(report)]
    assert any("opset 23" in m for m in messages)
    assert any("not in TensorRT's ONNX operator matrix" in m for m in messages)


def test_topk_sorted_zero_fails():
    report = lint_model(topk_model(k=4, sorted_=0))
    assert [i.message for i in errors(report)] == ["sorted=0: TensorRT's TopK needs sorted=1"]


def test_topk_constant_k():
    assert lint_model(topk_model(k=100)).issues == []
    report = lint_model(topk_model(k=4000))
    assert not report.ok and "K = 4000" in errors(report)[0].message
    assert not lint_model(topk_model(k=3840)).ok  # K must be *less than* 3840
    assert lint_model(topk_model(k=3839)).ok


def test_topk_constant_node_k():
    const = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", INT64, [1], [5000]))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")
    report = lint_model(model([const, node], [vi("x")], [vi("v", shape=None), vi("i", INT64, None)]))
    assert [i.node for i in errors(report)] == ["topk"]


def test_topk_runtime_k_warns():
    report = lint_model(topk_model(k=None))
    assert report.ok
    assert len(warnings_(report)) == 1
    assert "run time" in warnings_(report)[0].message and "3840" in warnings_(report)[0].message


def test_cumsum_int64_fails_on_type_and_float_passes():
    for elem, ok in ((INT64, False), (FLOAT, True)):
        node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="cs")
        report = lint_model(model([node], [vi("x", elem)], [vi("y", elem)], [i64("axis", 1)]))
        assert report.ok is ok, report.format()
        if not ok:
            (issue,) = errors(report)
            assert "INT64" in issue.message and "FP32" in issue.message


def test_types_come_from_shape_inference():
    # no value_info for 'c': its INT64 type is inferred through Cast
    nodes = [
        helper.make_node("Cast", ["x"], ["c"], to=INT64),
        helper.make_node("CumSum", ["c", "axis"], ["y"], name="cs"),
    ]
    report = lint_model(model(nodes, [vi("x")], [vi("y", INT64)], [i64("axis", 0)]))
    assert [i.node for i in errors(report)] == ["cs"]


def test_shape_inputs_are_not_held_to_the_data_types():
    # int64 shapes/starts/K feeding float ops, comparisons with bool outputs, Where's condition
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["s"]),
        helper.make_node("Expand", ["s", "shape"], ["e"]),
        helper.make_node("Less", ["e", "zero"], ["mask"]),
        helper.make_node("Where", ["mask", "zero", "e"], ["w"]),
        helper.make_node("Gather", ["w", "idx"], ["g"], axis=1),
        helper.make_node("MatMul", ["g", "wt"], ["y"]),
    ]
    inits = [
        i64("shape", [-1, 8]), i64("starts", [0]), i64("ends", [8]), i64("axes", [1]), i64("idx", [0, 1, 2, 3]),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.zeros((4, 8), np.float32), "wt"),
    ]
    report = lint_model(model(nodes, [vi("x")], [vi("y")], inits))
    assert report.issues == [], report.format()


def test_cast_output_type_is_checked():
    node = helper.make_node("Cast", ["x"], ["y"], name="to_i16", to=TensorProto.INT16)
    report = lint_model(model([node], [vi("x")], [vi("y", TensorProto.INT16)]))
    assert [i.node for i in errors(report)] == ["to_i16"] and "INT16" in errors(report)[0].message


@pytest.mark.parametrize("op", ["Slice", "ReduceSum", "Squeeze", "Unsqueeze"])
def test_axes_must_be_constant(op):
    def build(axes_is_input):
        if op == "Slice":
            node = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="n")
            inits = [i64("starts", [0]), i64("ends", [4])]
        else:
            node = helper.make_node(op, ["x", "axes"], ["y"], name="n")
            inits = []
        x = vi("x", shape=("B", 1, 8))
        if axes_is_input:
            return model([node], [x, vi("axes", INT64, [1])], [vi("y", shape=None)], inits)
        return model([node], [x], [vi("y", shape=None)], inits + [i64("axes", [1])])

    report = lint_model(build(True))
    assert [i.node for i in errors(report)] == ["n"], report.format()
    assert "'axes'" in errors(report)[0].message and "graph input" in errors(report)[0].message
    assert lint_model(build(False)).ok


def test_axes_through_constant_node_passes_and_computed_axes_fail():
    const = helper.make_node("Constant", [], ["axes"], value_ints=[1])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm")
    assert lint_model(model([const, node], [vi("x")], [vi("y", shape=None)])).ok
    computed = helper.make_node("Identity", ["a0"], ["axes"])
    report = lint_model(model([computed, node], [vi("x")], [vi("y", shape=None)], [i64("a0", [1])]))
    assert "output of Identity" in errors(report)[0].message


@pytest.mark.parametrize("opset, ok", [(23, False), (21, False), (20, True), (18, True), (9, True), (8, False)])
def test_opset_range(opset, ok):
    node = helper.make_node("Relu", ["x"], ["y"])
    report = lint_model(model([node], [vi("x")], [vi("y")], opset=opset))
    assert report.ok is ok
    assert report.opset == opset
    if not ok:
        assert f"opset {opset}" in errors(report)[0].message


def test_non_default_domain_fails_naming_the_domain():
    node = helper.make_node("FastGelu", ["x"], ["y"], name="fg", domain="com.microsoft")
    report = lint_model(model([node], [vi("x")], [vi("y")], domains=["com.microsoft"]))
    (issue,) = errors(report)
    assert issue.op_type == "FastGelu" and "com.microsoft" in issue.message
    assert report.op_counts == {"com.microsoft::FastGelu": 1}


def test_local_functions_are_inlined_first():
    body = [
        helper.make_node("Mul", ["a", "a"], ["sq"]),
        helper.make_node("CumSum", ["sq", "axis"], ["out"]),
    ]
    axis_const = helper.make_node("Constant", [], ["axis"], value_int=1)
    fn = helper.make_function("pkg.local", "SquareCumSum", ["a"], ["out"], [axis_const, *body],
                              [helper.make_opsetid("", 18)])
    call = helper.make_node("SquareCumSum", ["x"], ["y"], name="call", domain="pkg.local")
    ok_model = model([call], [vi("x")], [vi("y")], domains=["pkg.local"], functions=[fn])
    report = lint_model(ok_model)
    assert report.ok, report.format()
    assert any("inlined 1 local functions" in n for n in report.notes)
    assert "pkg.local::SquareCumSum" not in report.op_counts and report.op_counts["CumSum"] == 1
    # the body is linted: int64 input makes the inlined CumSum fail on type
    bad = model([call], [vi("x", INT64)], [vi("y", INT64)], domains=["pkg.local"], functions=[fn])
    assert [i.op_type for i in errors(lint_model(bad))] == ["CumSum"]


def test_subgraphs_are_linted():
    then_branch = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [], [vi("u", shape=None)]
    )
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", shape=None)])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    report = lint_model(model([node], [vi("c", TensorProto.BOOL, []), vi("x")], [vi("y", shape=None)]))
    assert [(i.op_type, i.node) for i in errors(report)] == [("Unique", "branch/then_branch/uniq")]


def test_ir_version_above_10_warns():
    m = clean_model()
    m.ir_version = 11
    report = lint_model(m)
    assert report.ok and report.ir_version == 11
    assert any("IR version 11" in w.message for w in warnings_(report))
    assert lint_model(clean_model()).warnings == []


def test_double_warns_uint8_inside_fails():
    nodes = [
        helper.make_node("Cast", ["img"], ["f"], name="to_float", to=FLOAT),
        helper.make_node("Cast", ["f"], ["d"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["y"], name="back", to=FLOAT),
    ]
    report = lint_model(model(nodes, [vi("img", TensorProto.UINT8)], [vi("y")]))
    assert report.ok, report.format()  # uint8 network input is fine, double only warns
    assert [w.node for w in warnings_(report)] == ["to_double"]
    nodes = [
        helper.make_node("Cast", ["x"], ["u8"], name="to_u8", to=TensorProto.UINT8),
        helper.make_node("Cast", ["u8"], ["y"], name="back", to=FLOAT),
    ]
    report = lint_model(model(nodes, [vi("x")], [vi("y")]))
    assert [i.node for i in errors(report)] == ["to_u8"] and "UINT8" in errors(report)[0].message


def test_quantized_types_only_through_qdq():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    qdq = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq"),
    ]
    report = lint_model(model(qdq, [vi("x")], [vi("y")], [scale, zero]))
    assert report.ok, report.format()
    leak = [qdq[0], helper.make_node("Relu", ["q"], ["y"], name="relu")]
    report = lint_model(model(leak, [vi("x")], [vi("y", TensorProto.INT8)], [scale, zero]))
    assert not report.ok
    assert any("consumed by Relu" in i.message for i in errors(report)), report.format()
    nonzero = numpy_helper.from_array(np.array(3, np.int8), "zero")
    report = lint_model(model(qdq, [vi("x")], [vi("y")], [scale, nonzero]))
    assert {i.node for i in errors(report)} == {"q", "dq"}


def int4_model(*, opset=21, axis=0, block_size=4, weight_shape=(8, 4), scale=None, scale_shape=None,
               zero_point=None, weight_input=False, scale_input=False, consumer="MatMul1"):
    """x[B, 8] @ DequantizeLinear(w INT4 [8, 4], scale [2, 4], axis 0, block_size 4): the weight-only
    int4 form ``transprune-export --weights int4`` writes; each keyword breaks one thing."""
    k = weight_shape[0]
    w = helper.make_tensor("w", TensorProto.INT4, list(weight_shape), [1] * int(np.prod(weight_shape)))
    scale_shape = scale_shape or (k // (block_size or k), weight_shape[-1])
    scale_values = np.full(scale_shape, 0.1, np.float32) if scale is None else np.asarray(scale, np.float32)
    inits, inputs = [], [vi("x")]
    if weight_input:
        inputs.append(vi("w", TensorProto.INT4, list(weight_shape)))
    else:
        inits.append(w)
    if scale_input:
        inputs.append(vi("scale", FLOAT, list(scale_shape)))
    else:
        inits.append(numpy_helper.from_array(scale_values, "scale"))
    dq_inputs = ["w", "scale"]
    if zero_point is not None:
        count = int(np.prod(scale_shape))
        inits.append(helper.make_tensor("zp", TensorProto.INT4, list(scale_shape), [zero_point] * count))
        dq_inputs.append("zp")
    attrs = {"axis": axis} | ({"block_size": block_size} if block_size is not None else {})
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["wf"], name="dq", **attrs)]
    if consumer == "MatMul1":
        nodes.append(helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm"))
    else:  # the dequantized weight as MatMul's data input
        nodes.append(helper.make_node("MatMul", ["wf", "x8"], ["y"], name="mm"))
        inits.append(numpy_helper.from_array(np.ones((weight_shape[-1], 4), np.float32), "x8"))
    return model(nodes, inputs, [vi("y", shape=None)], inits, opset=opset)


def test_opset_21_is_accepted_only_for_blocked_int4_weights():
    report = lint_model(int4_model())
    assert report.ok, report.format()
    assert report.issues == [] and report.opset == 21
    (note,) = [n for n in report.notes if "opset 21 accepted" in n]
    assert "1 blocked INT4 DequantizeLinear" in note and "block_size from opset 21" in note
    # 22 is beyond what the int4 form needs; 21 without a blocked INT4 weight needs nothing of 21
    assert [i.message for i in errors(lint_model(int4_model(opset=22)))][0].startswith("default-domain opset 22")
    relu = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")], opset=21)
    (issue,) = errors(lint_model(relu))
    assert "opset 21 is outside the range" in issue.message and "holds none" in issue.message
    unblocked = errors(lint_model(int4_model(block_size=None)))
    assert any("opset 21 is outside the range" in i.message for i in unblocked)


@pytest.mark.parametrize("broken, expected", [
    ({"weight_input": True}, "x ('w') is a graph input: TensorRT takes INT4 only as weight-only quantization"),
    ({"zero_point": 3}, "x_zero_point must be zero"),
    ({"scale_input": True}, "x_scale ('scale') is a graph input: TensorRT needs weight-only INT4 scales"),
    ({"scale": [[0.1, -0.2, 0.1, 0.1], [0.1, 0.1, 0.0, 0.1]]}, "has 2 of 8 values that are not positive"),
    ({"axis": 1}, "axis=1: weight-only INT4 is blocked along the input channels"),
    ({"block_size": None}, "no block_size"),
    ({"block_size": 3, "scale_shape": (2, 4)}, "block_size=3 does not divide the weight's 8 input channels"),
    ({"scale_shape": (4, 4)}, "x_scale ('scale') has shape [4, 4], not [2, 4]"),
    ({"weight_shape": (2, 4, 4), "scale_shape": (1, 4, 4), "block_size": 2}, "weight-only INT4 needs a 2-D"),
])
def test_weight_only_int4_rules(broken, expected):
    report = lint_model(int4_model(**broken))
    assert any(expected in i.message for i in errors(report)), report.format()
    assert all(i.op_type == "DequantizeLinear" for i in errors(report) if i.node), report.format()


def test_int4_weight_feeding_anything_but_matmul_weights_warns():
    report = lint_model(int4_model(consumer="MatMul0"))
    assert report.ok, report.format()
    (warning,) = warnings_(report)
    assert warning.node == "dq" and "feeds MatMul input 0" in warning.message
    assert warnings_(lint_model(int4_model())) == []


def test_matmulnbits_says_it_is_onnxruntime_only():
    node = helper.make_node("MatMulNBits", ["x", "w", "scale"], ["y"], name="mm4", domain="com.microsoft",
                            K=8, N=4, bits=4, block_size=32)
    report = lint_model(model([node], [vi("x")], [vi("y", shape=None)], domains=["com.microsoft"]))
    (issue,) = errors(report)
    assert issue.op_type == "MatMulNBits"
    assert "onnxruntime's own 4-bit MatMul" in issue.message and "TensorRT builds need the QDQ form" in issue.message
