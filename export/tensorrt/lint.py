"""Check an ONNX graph against what TensorRT 10.x's ONNX parser accepts, with no TensorRT installed.

A graph that TensorRT cannot parse is found out on the target (a Jetson), after a long export;
this lint finds the known causes on the export machine, in well under a second per graph, from the
operator matrix (``operator_matrix``) and docs/DESIGN.md §5. It reads only the graph: a path is loaded
with ``load_external_data=False``, so multi-GB weights are never read.

Checks, in order (each issue names the node, its op type and the rule):

1. model: the default-domain opset must lie in the matrix's range (9..20), or be 21 in a graph that
   holds blocked INT4 DequantizeLinear weights (weight-only int4: ONNX defines INT4 and
   ``block_size`` from opset 21; a note says why it was accepted); nodes of any other
   domain (``com.microsoft``, ``pkg.onnxscript.torch_lib``, ``ai.onnx.ml``...) are errors, since
   TensorRT parses standard ops only, without plugins (``com.microsoft`` ``MatMulNBits`` says it
   is onnxruntime's own and that TensorRT builds need the QDQ form). Local functions (dynamo/onnxscript output)
   are inlined first (``onnx.inliner``) and the inlined graph is linted. IR version > 10 is a
   warning (newer than TensorRT 10.x's parser knows).
2. operators: every node (subgraphs of If/Loop/Scan included) must be in the matrix and marked Y.
3. element types, after ``onnx.shape_inference`` (declared types if inference fails; tensors of
   unknown type are skipped). Only *data* tensors are held to the matrix's type list, chosen from
   the op's ONNX schema so that every op category follows one rule:

   - an input/output whose schema type is a type variable (``T``, ``T1``...) is data, unless that
     variable allows only int32/int64 (indices, shapes, axes: Gather's indices, Slice's
     starts/ends/axes/steps) or only bool (conditions and masks: Where's condition, Equal's output);
   - a fixed schema type (``tensor(int64)``: Reshape/Expand/Tile shapes, TopK's K,
     ConstantOfShape's input, Resize's scales) is never data;
   - so elementwise ops, Concat, Where (X, Y), Range and Clip check all their data inputs and
     outputs, Cast/CastLike check input and output, comparisons check inputs only, shape-taking
     ops check their data input and output only;
   - QuantizeLinear/DequantizeLinear check input 0 only (the list is their input's type);
   - DOUBLE counts as FP32 here (TensorRT casts it down; it gets its own warning), and a Constant
     node's INT8/FP8/INT4 output is left to the quantized-type rule below.
4. restrictions: TopK needs ``sorted`` = 1 and K < 3840 (a constant K is checked, a run-time K is
   a warning: it must stay < 3840 at run time); inputs that the matrix says "must be an
   initializer / a constant tensor / a build-time constant" (Slice/Squeeze/Unsqueeze/Reduce*/Pad
   ``axes``, CumSum ``axis``, OneHot ``depth``, Dropout ``training_mode``), matched by the op's
   ONNX schema input names, must be initializers or Constant-node outputs; Constant's sparse/string
   values, LayerNormalization's Mean/InvStdDev in use, MaxPool's Indices, ScatterND's
   ``reduction``, pooling ``dilations`` other than ones, unsupported Resize modes and non-zero
   Q/DQ zero points are errors. Weight-only INT4 (a DequantizeLinear of an INT4 input): x must be a
   2-D INT4 initializer [K, N], ``axis`` 0 with a ``block_size`` dividing K, the scale an
   initializer of shape [K / block_size, N] with positive values (where it is in the file, not in
   external data); an output that feeds anything but a MatMul's weight (input 1) is a warning.
   Tensor rules: DOUBLE anywhere is a warning; UINT8 anywhere but a
   graph input/output is an error; INT8/FP8/INT4 outside Q/DQ (produced other than by
   QuantizeLinear/initializer/Constant/graph input, or consumed by anything but Q/DQ) is an error.

Usage: ``lint_model(model_or_path)`` -> ``LintReport`` (``.ok``, ``.format()``, ``.to_dict()``);
``lint_directory(paths)`` for many graphs; ``python -m transprune.export.tensorrt.lint PATH...``.

Where: this module is the entry point (``lint_model``, ``lint_directory``, the command line);
``lint_rules`` holds the checks above and the report, ``lint_graph`` reads and indexes the graph
(schemas, subgraphs, types, constants), ``operator_matrix`` parses the matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import onnx

from .lint_rules import ERROR, WARNING, LintIssue, Linter, LintReport, matrix_type_name
from .operator_matrix import OperatorMatrix, load_matrix

__all__ = ["ERROR", "WARNING", "LintIssue", "LintReport", "lint_directory", "lint_model", "main", "matrix_type_name"]


# ---------------------------------------------------------------------------------------------
# public API


def lint_model(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    matrix: OperatorMatrix | None = None,
    name: str | None = None,
) -> LintReport:
    """Lint one ONNX model (a ModelProto, or a path loaded without its external weights)."""
    path = None
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        model = onnx.load(path, load_external_data=False)
    if matrix is None:
        matrix = load_matrix()
    label = name or model.graph.name or (path.stem if path is not None else "model")
    return Linter(model, matrix, label, str(path) if path is not None else None).run()


def _onnx_files(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            files.extend(sorted(entry.rglob("*.onnx")))
        else:
            files.append(entry)
    return files


def lint_directory(
    paths: Iterable[str | os.PathLike] | str | os.PathLike, *, matrix: OperatorMatrix | None = None
) -> list[LintReport]:
    """Lint many graphs: files as given, directories searched for ``*.onnx`` (sorted, recursive)."""
    matrix = matrix if matrix is not None else load_matrix()
    return [lint_model(path, matrix=matrix, name=path.stem) for path in _onnx_files(paths)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transprune.export.tensorrt.lint",
        description="Check ONNX graphs against TensorRT 10.x's ONNX parser (no TensorRT needed).",
    )
    parser.add_argument("paths", nargs="+", help="ONNX files or directories of them")
    parser.add_argument("--json", action="store_true", help="print one JSON list of reports")
    parser.add_argument("--matrix", help="operators.md to use (default: $TRANSPRUNE_TRT_OPERATORS or the packaged copy)")
    args = parser.parse_args(argv)
    matrix = load_matrix(args.matrix) if args.matrix else None
    reports = lint_directory(args.paths, matrix=matrix)
    if not reports:
        print("no .onnx files found", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n".join(r.format() for r in reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
