"""transprune.export.tensorrt.lint and operator_matrix on real graphs: hand-built and dynamo-exported."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from transprune.errors import TransPruneError  # noqa: E402
from transprune.export.tensorrt import operator_matrix  # noqa: E402
from transprune.export.tensorrt.operator_matrix import (  # noqa: E402
    MATRIX_FILENAME,
    MatrixFormatError,
    load_matrix,
    parse_matrix,
)
from transprune.export.tensorrt.lint import lint_directory, lint_model  # noqa: E402

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
REPO = Path(__file__).resolve().parents[3]
SHARED_MATRIX = REPO.parent / "shared" / "reference" / MATRIX_FILENAME


def model(nodes, inputs, outputs, initializers=(), opset=18, ir_version=10, domains=(), functions=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, ir_version=ir_version, opset_imports=opsets, functions=list(functions))


def vi(name, elem=FLOAT, shape=("B", 8)):
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def i64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def errors(report):
    return [i for i in report.issues if i.severity == "error"]


def warnings_(report):
    return [i for i in report.issues if i.severity == "warning"]


def clean_model():
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["a"], name="add"),
        helper.make_node("Softmax", ["a"], ["y"], name="sm", axis=-1),
    ]
    return model(nodes, [vi("x")], [vi("y")], [w, b])


def topk_model(k=None, sorted_=1):
    """TopK over x[B, 8]; K an initializer of value k, or the graph input 'k' when k is None."""
    inputs = [vi("x")] + ([vi("k", INT64, [1])] if k is None else [])
    inits = [] if k is None else [i64("k", [k])]
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1, sorted=sorted_)
    return model([node], inputs, [vi("v", shape=("B", "K")), vi("i", INT64, ("B", "K"))], inits)


# ---------------------------------------------------------------------------------------------
# operator matrix


def test_matrix_parses_every_row_and_the_opset_range():
    matrix = load_matrix()
    assert matrix.opset_range == (9, 20)
    assert len(matrix) == 196
    assert matrix["AffineGrid"].supported is False and matrix["AffineGrid"].types == frozenset()
    assert matrix["CumSum"].types == {"FP32", "FP16", "BF16"}
    assert matrix["CumSum"].constant_inputs == ("axis",)
    assert "INT64" in matrix["ConstantOfShape"].types  # the file's "INF64" typo
    assert matrix["Selu"].types == {"FP32", "FP16", "BF16"}  # trailing comma
    assert matrix["NonZero"].types == {"FP32", "FP16"}  # row without closing pipe
    assert matrix["TopK"].restrictions.startswith("`sorted` must be 1")
    assert matrix["Unsqueeze"].constant_inputs == ("axes",)  # "must be a constant tensor"
    assert matrix["OneHot"].constant_inputs == ("depth",)
    assert matrix["Dropout"].constant_inputs == ("training_mode",)  # "is_traning" typo
    assert matrix["Hardmax"].constant_inputs == ()  # about a dimension, not an input
    assert load_matrix() is matrix  # cached


def test_matrix_format_errors_are_loud():
    table = "| Operator | Supported | Supported Types | Restrictions |\n|---|---|---|---|\n| Abs | Y | FP32 |\n"
    with pytest.raises(MatrixFormatError, match="inclusive range"):
        parse_matrix(table)
    head = "TensorRT supports operators in the inclusive range of opset 11 to opset 17.\n\n"
    assert parse_matrix(head + table).opset_range == (11, 17)
    with pytest.raises(MatrixFormatError, match="unknown type"):
        parse_matrix(head + table.replace("FP32", "FP33"))
    with pytest.raises(MatrixFormatError, match="Y or N"):
        parse_matrix(head + table.replace("| Y |", "| maybe |"))
    with pytest.raises(MatrixFormatError, match="no .* table"):
        parse_matrix(head)


def test_matrix_path_env_var_then_packaged_copy(tmp_path, monkeypatch):
    monkeypatch.delenv(operator_matrix.ENV_VAR, raising=False)
    assert operator_matrix.default_matrix_path() == operator_matrix.packaged_matrix_path()
    custom = tmp_path / "ops.md"
    custom.write_text("opsets: inclusive range of opset 13 to opset 19\n\n| Operator | Supported |\n|--|--|\n| Abs | N |\n")
    monkeypatch.setenv(operator_matrix.ENV_VAR, str(custom))
    assert operator_matrix.default_matrix_path() == custom
    assert load_matrix().opset_range == (13, 19)
    monkeypatch.setenv(operator_matrix.ENV_VAR, str(tmp_path / "missing.md"))
    with pytest.raises(TransPruneError, match=operator_matrix.ENV_VAR):
        operator_matrix.default_matrix_path()


def test_packaged_matrix_is_the_shared_reference():
    packaged = operator_matrix.packaged_matrix_path()
    assert packaged.read_text().startswith("<!--- SPDX-License-Identifier: Apache-2.0 -->")
    if not SHARED_MATRIX.is_file():
        pytest.skip(f"{SHARED_MATRIX} not present")
    assert packaged.read_bytes() == SHARED_MATRIX.read_bytes()


def test_pyproject_ships_the_matrix():
    text = (REPO / "pyproject.toml").read_text()
    assert '"transprune.export.tensorrt" = ["data/*.md"]' in text


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


def test_generic_constant_input_rule_from_the_matrix():
    # Pad's `axes` and OneHot's `depth`: not in docs/DESIGN.md §5 list, read from the Restrictions column
    pad = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="pad")
    inputs = [vi("x"), vi("axes", INT64, [1])]
    report = lint_model(model([pad], inputs, [vi("y", shape=None)], [i64("pads", [1, 1])]))
    assert [(i.op_type, i.node) for i in errors(report)] == [("Pad", "pad")]
    report = lint_model(model([pad], [vi("x")], [vi("y", shape=None)], [i64("pads", [1, 1]), i64("axes", [1])]))
    assert report.ok

    onehot = helper.make_node("OneHot", ["idx", "depth", "values"], ["y"], name="oh")
    values = numpy_helper.from_array(np.array([0, 1], np.float32), "values")
    out = [vi("y", shape=None)]
    report = lint_model(model([onehot], [vi("idx", INT64), vi("depth", INT64, [])], out, [values]))
    assert [(i.op_type, i.node) for i in errors(report)] == [("OneHot", "oh")]
    assert "'depth'" in errors(report)[0].message
    report = lint_model(model([onehot], [vi("idx", INT64)], out, [values, i64("depth", 10)]))
    assert report.ok, report.format()


def test_generic_constant_input_rule_follows_the_matrix_text():
    # a matrix that restricts Gather's `indices` makes the lint enforce it, by ONNX input name
    text = (
        "inclusive range of opset 9 to opset 20\n\n| Operator | Supported | Supported Types | Restrictions |\n"
        "|---|---|---|---|\n| Gather | Y | FP32, INT64 | `indices` must be an initializer |\n"
    )
    matrix = parse_matrix(text)
    node = helper.make_node("Gather", ["x", "idx"], ["y"], name="gather")
    report = lint_model(model([node], [vi("x"), vi("idx", INT64, [2])], [vi("y", shape=None)]), matrix=matrix)
    assert [i.node for i in errors(report)] == ["gather"] and "'indices'" in errors(report)[0].message
    report = lint_model(model([node], [vi("x")], [vi("y", shape=None)], [i64("idx", [0, 1])]), matrix=matrix)
    assert report.ok


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


def test_path_is_linted_without_reading_external_weights(tmp_path):
    m = clean_model()
    big = numpy_helper.from_array(np.ones((8, 512), np.float32), "big")
    m.graph.initializer.append(big)
    m.graph.node.append(helper.make_node("MatMul", ["y", "big"], ["z"], name="mm2"))
    m.graph.output.append(vi("z", shape=("B", 512)))
    path = tmp_path / "seg.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="seg.data", size_threshold=0)
    (tmp_path / "seg.data").unlink()  # proves the weights are never read
    report = lint_model(path)
    assert report.ok and report.path == str(path) and report.graph == "g", report.format()


def test_in_memory_weights_are_not_fed_to_shape_inference():
    # a 4 MiB weight is stubbed out before inference; types still flow through MatMul and Cast
    w = numpy_helper.from_array(np.zeros((8, 131072), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Cast", ["h"], ["hi"], to=INT64),
        helper.make_node("CumSum", ["hi", "axis"], ["y"], name="cs"),
    ]
    m = model(nodes, [vi("x")], [vi("y", INT64, None)], [w, i64("axis", 1)])
    report = lint_model(m)
    assert [i.node for i in errors(report)] == ["cs"], report.format()
    assert len(m.graph.initializer[0].raw_data) == 8 * 131072 * 4  # the caller's model is untouched


def test_matrix_restrictions_on_outputs_and_attributes():
    pool = helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2])
    report = lint_model(model([pool], [vi("x", shape=(1, 1, 4, 4))], [vi("y", shape=None), vi("idx", INT64, None)]))
    assert any("Indices" in i.message for i in errors(report))
    scatter = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="sc", reduction="add")
    report = lint_model(model([scatter], [vi("x"), vi("i", INT64, (1, 1)), vi("u", shape=(1, 8))], [vi("y")]))
    assert [i.node for i in errors(report)] == ["sc"] and "reduction" in errors(report)[0].message
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="ln")
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "s")]
    report = lint_model(model([ln], [vi("x")], [vi("y"), vi("mean", shape=None)], inits))
    assert [i.node for i in errors(report)] == ["ln"] and "first output" in errors(report)[0].message


def test_lint_directory(tmp_path):
    onnx.save(clean_model(), tmp_path / "a.onnx")
    (tmp_path / "sub").mkdir()
    onnx.save(topk_model(k=5000), tmp_path / "sub" / "b.onnx")
    reports = lint_directory(tmp_path)
    assert [(r.graph, r.ok) for r in reports] == [("a", True), ("b", False)]
    assert [r.graph for r in lint_directory([tmp_path / "a.onnx"])] == ["a"]


def test_cli_exit_status(tmp_path, capsys):
    from transprune.export.tensorrt.lint import main

    onnx.save(clean_model(), tmp_path / "a.onnx")
    assert main([str(tmp_path)]) == 0
    onnx.save(topk_model(k=5000), tmp_path / "b.onnx")
    assert main([str(tmp_path), "--json"]) == 1
    assert '"ok": false' in capsys.readouterr().out


def decoder_like(layers=30, hidden=64, heads=4):
    """A Llama-ish decoder built node by node: ~45 nodes a layer, dynamic B and S."""
    nodes, inits = [], []
    f32 = lambda name, arr: inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))  # noqa: E731
    inits += [i64("axes_last", [-1]), i64("qkv_shape", [0, 0, heads, hidden // heads]), i64("flat", [0, 0, hidden])]
    f32("eps", 1e-6)
    f32("two", 2.0)
    h = "x"
    for n in range(layers):
        p = f"l{n}_"
        f32(p + "ln", np.ones(hidden))
        for w in ("q", "k", "v", "o", "up", "gate", "down"):
            f32(p + w, np.zeros((hidden, hidden)))
        nodes += [
            helper.make_node("Pow", [h, "two"], [p + "sq"]),
            helper.make_node("ReduceMean", [p + "sq", "axes_last"], [p + "ms"]),
            helper.make_node("Add", [p + "ms", "eps"], [p + "mse"]),
            helper.make_node("Sqrt", [p + "mse"], [p + "rt"]),
            helper.make_node("Reciprocal", [p + "rt"], [p + "inv"]),
            helper.make_node("Mul", [h, p + "inv"], [p + "nx"]),
            helper.make_node("Mul", [p + "nx", p + "ln"], [p + "n"]),
        ]
        for w in ("q", "k", "v"):
            nodes += [
                helper.make_node("MatMul", [p + "n", p + w], [p + w + "p"]),
                helper.make_node("Reshape", [p + w + "p", "qkv_shape"], [p + w + "r"]),
                helper.make_node("Transpose", [p + w + "r"], [p + w + "t"], perm=[0, 2, 1, 3]),
            ]
        nodes += [
            helper.make_node("Transpose", [p + "kt"], [p + "kT"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "qt", p + "kT"], [p + "s"]),
            helper.make_node("Softmax", [p + "s"], [p + "a"], axis=-1),
            helper.make_node("MatMul", [p + "a", p + "vt"], [p + "c"]),
            helper.make_node("Transpose", [p + "c"], [p + "ct"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [p + "ct", "flat"], [p + "cf"]),
            helper.make_node("MatMul", [p + "cf", p + "o"], [p + "op"]),
            helper.make_node("Add", [h, p + "op"], [p + "h1"]),
            helper.make_node("MatMul", [p + "h1", p + "up"], [p + "u"]),
            helper.make_node("MatMul", [p + "h1", p + "gate"], [p + "g"]),
            helper.make_node("Sigmoid", [p + "g"], [p + "sg"]),
            helper.make_node("Mul", [p + "g", p + "sg"], [p + "silu"]),
            helper.make_node("Mul", [p + "silu", p + "u"], [p + "gu"]),
            helper.make_node("MatMul", [p + "gu", p + "down"], [p + "d"]),
            helper.make_node("Add", [p + "h1", p + "d"], [p + "out"]),
        ]
        h = p + "out"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    x = vi("x", shape=("B", "S", hidden))
    return model(nodes, [x], [vi("y", shape=("B", "S", hidden))], inits)


def test_large_graph_is_fast():
    m = decoder_like()
    assert len(m.graph.node) > 900
    lint_model(m)  # warm the schema caches
    start = time.perf_counter()
    report = lint_model(m)
    elapsed = time.perf_counter() - start
    assert report.ok, report.format()
    assert elapsed < 2.0, f"lint took {elapsed:.2f} s on {len(m.graph.node)} nodes"


# ---------------------------------------------------------------------------------------------
# a real dynamo export


def test_dynamo_export_lints_clean(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 16), requires_grad=False)

        def forward(self, x, k_tensor):
            # RMSNorm-like statistics, a float cumsum, then top-k with a runtime k, sorted indices
            x32 = x.float()
            normed = self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6))
            scores = torch.cumsum(normed.sum(-1), dim=-1)
            k = k_tensor.item()
            torch._check(k >= 1)
            torch._check(k <= x.shape[1])
            _, idx = torch.topk(scores, k)
            kept, _ = torch.sort(idx, dim=-1)
            return normed, kept

    x = torch.randn(2, 10, 16)
    k = torch.tensor(4, dtype=torch.int64)
    seq = torch.export.Dim("seq", min=2, max=4096)
    path = tmp_path / "scorer.onnx"
    torch.onnx.export(
        Scorer().eval(), (x, k), str(path), dynamo=True, opset_version=18,
        dynamic_shapes=({1: seq}, None), verbose=False,
    )
    m = onnx.load(path, load_external_data=False)
    start = time.perf_counter()
    report = lint_model(m)
    elapsed = time.perf_counter() - start
    print(report.format(), f"\n({elapsed * 1000:.1f} ms)")
    assert report.ok, report.format()
    assert {"TopK", "CumSum", "ReduceMean"} <= set(report.op_counts)
    topk_warnings = [w for w in warnings_(report) if w.op_type == "TopK"]
    assert topk_warnings and all("run time" in w.message for w in topk_warnings)
    assert all(w.op_type == "TopK" for w in warnings_(report)), report.format()
