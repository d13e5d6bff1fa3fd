"""``read_header`` reads what onnx reads (metadata, every external data location, wherever the
tensor sits) without onnx, and turns any malformed file into a typed error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from transprune.runtime.onnx_header import MAX_DEPTH, OnnxHeaderError, read_header


def _external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _model(depth: int = 1):
    """Externally stored tensors in an initializer, a Constant, a subgraph of an If (nested
    ``depth`` deep), a sparse initializer and a function; and metadata."""
    inner = helper.make_graph([helper.make_node("Constant", [], ["deep"], value=_external("d", "deep.bin"))],
                              "inner", [], [helper.make_tensor_value_info("deep", TensorProto.FLOAT, None)])
    for level in range(depth - 1):
        inner = helper.make_graph([helper.make_node("If", ["c"], [f"o{level}"], then_branch=inner)],
                                  f"level{level}", [], [helper.make_tensor_value_info(f"o{level}", TensorProto.FLOAT,
                                                                                      None)])
    sparse = helper.make_sparse_tensor(_external("sv", "sparse.bin"), numpy_helper.from_array(np.zeros(4, np.int64), "si"),
                                       [8])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c1"], value=_external("c", "constant.bin")),
         helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)],
        "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[_external("w", "weights.bin"), numpy_helper.from_array(np.ones(3, np.float32), "inline")],
        sparse_initializer=[sparse])
    function = helper.make_function("local", "f", [], ["z"], [helper.make_node("Constant", [], ["z"],
                                                                               value=_external("z", "function.bin"))],
                                    [helper.make_opsetid("", 18)])
    model = helper.make_model(graph, functions=[function])
    helper.set_model_props(model, {"transprune.graph": '{"name": "g"}', "other": "x"})
    return model


def test_every_external_location_and_the_metadata_are_read(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(depth=4).SerializeToString())
    header = read_header(path)
    assert header.external_data == {"deep.bin", "constant.bin", "weights.bin", "sparse.bin", "function.bin"}
    assert header.metadata == {"transprune.graph": '{"name": "g"}', "other": "x"}


def test_nesting_beyond_the_limit_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(depth=MAX_DEPTH // 3 + 2).SerializeToString())  # 3 messages per level
    with pytest.raises(OnnxHeaderError, match="nested deeper"):
        read_header(path)


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"\x0a\xff\xff\xff\xff\x0f", "truncated"),
                                           (b"\x0b", "wire type"), (b"\x3a\x80", "varint")])
def test_malformed_files_are_typed_errors(tmp_path, data, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(OnnxHeaderError, match=message):
        read_header(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_random_bytes_never_raise_anything_but_a_typed_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(data)
    try:
        read_header(path)
    except OnnxHeaderError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=2000))
def test_truncated_models_are_refused_or_read(tmp_path_factory, cut):
    full = _model().SerializeToString()
    path = tmp_path_factory.mktemp("cut") / "m.onnx"
    path.write_bytes(full[:cut])
    try:
        read_header(path)
    except OnnxHeaderError:
        pass
