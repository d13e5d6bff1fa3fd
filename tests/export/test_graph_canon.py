"""export/graph_canon.py: equal forms for the same computation however named and ordered, and
different forms for any change in what a graph computes."""

from __future__ import annotations

import numpy as np
import pytest


def _model(*, order=(0, 1, 2), names=("a", "b", "c"), weight=1.0, sub_order=("x", "w"), add_order=("s", "y"),
           axis=-1, shape_from="x"):
    from onnx import TensorProto, helper, numpy_helper

    a, b, c = names
    nodes = [
        helper.make_node("Sub", list(sub_order), [a], name=f"n_{a}"),
        helper.make_node("Softmax", [a], [b], axis=axis, name=f"n_{b}"),
        helper.make_node("Shape", [shape_from], ["s"], start=1, end=2, name="n_s"),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT, name="n_sf"),
        helper.make_node("Add", [b if add_order[1] == "y" else "sf", "sf" if add_order[1] == "y" else b], [c],
                         name=f"n_{c}"),
        helper.make_node("Identity", [c], ["out"], name="n_out"),
    ]
    nodes = [nodes[i] for i in (*order, 3, 4, 5)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq"]) for n in ("x", "x2")]
    weights = [numpy_helper.from_array(np.full((1, 1), weight, np.float32), "w")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _form(**kwargs):
    from transprune.export.graph_canon import canonical_form

    return canonical_form(_model(**kwargs))


def test_names_order_commutative_operands_and_the_input_a_shared_axis_is_read_from_do_not_count():
    base = _form()
    assert base.differences(_form(names=("p", "q", "r"))) == []
    assert base.differences(_form(order=(2, 0, 1))) == []  # another topological order
    assert base.differences(_form(add_order=("y", "s"))) == []  # Add is commutative
    assert base.differences(_form(shape_from="x2")) == []  # x2 has the same named axes


@pytest.mark.parametrize("change", [dict(weight=2.0), dict(sub_order=("w", "x")), dict(axis=0)],
                         ids=["weight value", "operand order of Sub", "attribute"])
def test_any_change_in_what_is_computed_counts(change):
    assert _form().differences(_form(**change))


def test_a_node_that_repeats_another_is_the_same_value_and_is_counted():
    from onnx import helper

    from transprune.export.graph_canon import canonical_form

    model = _model()
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    model.graph.node.insert(list(model.graph.node).index(cast) + 1,
                            helper.make_node("Cast", ["s"], ["sf_again"], to=cast.attribute[0].i, name="again"))
    add = next(n for n in model.graph.node if n.op_type == "Add")
    add.input[list(add.input).index("sf")] = "sf_again"
    twice = canonical_form(model)
    assert twice.differences(_form()) == [] and (twice.duplicates, _form().duplicates) == (1, 0)
