"""Hand-built ONNX graphs and report filters shared by the lint tests (test_lint.py,
test_lint_models.py, test_operator_matrix.py). Only they import it, after skipping without onnx; a
conftest.py would make the folder's other tests, which need no onnx, import it too."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


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
