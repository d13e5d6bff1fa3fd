"""transprune.export.tensorrt.operator_matrix: the parsed TensorRT operator matrix, where it is found,
and the lint rules read from its Restrictions column, on hand-built graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from transprune.errors import TransPruneError  # noqa: E402
from transprune.export.tensorrt import operator_matrix  # noqa: E402
from transprune.export.tensorrt.lint import lint_model  # noqa: E402
from transprune.export.tensorrt.operator_matrix import (  # noqa: E402
    MATRIX_FILENAME,
    MatrixFormatError,
    load_matrix,
    parse_matrix,
)

from .onnx_graphs import INT64, errors, i64, model, vi  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
SHARED_MATRIX = REPO.parent / "shared" / "reference" / MATRIX_FILENAME


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
# rules read from the Restrictions column


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
