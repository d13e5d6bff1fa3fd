"""The TensorRT rules of the lint (listed in ``lint``'s docstring) and the report they fill.

``Linter`` is a ``lint_graph.LintGraph`` (the graph, read and indexed) with the checks: the model's
opset, IR version and domains, every node against the operator matrix (``operator_matrix``) and
docs/DESIGN.md §5's restrictions, and the tensor-wide type rules. ``lint.lint_model`` runs it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .lint_graph import (
    DEFAULT_DOMAINS,
    QDQ_OPS,
    UNREADABLE,
    LintGraph,
    attr_value,
    data_slots,
    is_data_slot,
    op_schema,
)
from .operator_matrix import OperatorMatrix, OperatorSupport

ERROR = "error"
WARNING = "warning"

MAX_IR_VERSION = 10  # the newest ONNX IR TensorRT 10.x's parser (onnx 1.16 era) reads
TOPK_K_LIMIT = 3840  # TopK: "K input must be less than 3840"
QUANTIZED_TYPES = frozenset({"INT8", "FP8", "INT4"})

# ONNX element type -> the matrix's type names. Unlisted types keep their ONNX name (INT16,
# FLOAT8E5M2, STRING...), which no matrix row lists, so they fail the type check.
_MATRIX_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8",
    TensorProto.FLOAT8E4M3FN: "FP8",  # TensorRT's FP8 is E4M3
    TensorProto.INT4: "INT4",
    TensorProto.DOUBLE: "DOUBLE",
}

# docs/DESIGN.md §5's constant-input rules; the matrix states the same, this keeps them if a future
# matrix rewords its Restrictions column.
_REDUCE_OPS = (
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
    "ReduceSum ReduceSumSquare"
).split()
_DESIGN_CONSTANT_INPUTS = {
    "Slice": ("axes",),
    "Squeeze": ("axes",),
    "Unsqueeze": ("axes",),
    "CumSum": ("axis",),
    **{op: ("axes",) for op in _REDUCE_OPS},
}

_RESIZE_ALLOWED = {
    "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"},
    "mode": {"nearest", "linear"},
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
}


def matrix_type_name(elem_type: int) -> str:
    """The matrix's name for an ONNX element type (``TensorProto.FLOAT`` -> ``"FP32"``)."""
    name = _MATRIX_TYPE_NAMES.get(elem_type)
    if name is not None:
        return name
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"TYPE{elem_type}"


@dataclass(frozen=True)
class LintIssue:
    severity: str  # "error" or "warning"
    node: str  # node name (subgraph nodes: "<if node>/<branch>/<node>"); "" for model-level issues
    op_type: str
    message: str

    def to_dict(self) -> dict:
        return {"severity": self.severity, "node": self.node, "op_type": self.op_type, "message": self.message}


@dataclass
class LintReport:
    graph: str
    opset: int | None
    ir_version: int
    issues: list[LintIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    path: str | None = None

    @property
    def errors(self) -> list[LintIssue]:
        return [issue for issue in self.issues if issue.severity == ERROR]

    @property
    def warnings(self) -> list[LintIssue]:
        return [issue for issue in self.issues if issue.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing stops TensorRT from parsing the graph (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "graph": self.graph,
            "path": self.path,
            "opset": self.opset,
            "ir_version": self.ir_version,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [issue.to_dict() for issue in self.issues],
            "notes": list(self.notes),
            "op_counts": dict(self.op_counts),
        }

    def format(self) -> str:
        verdict = "OK" if self.ok else "FAIL"
        nodes = sum(self.op_counts.values())
        lines = [
            f"{self.graph}: {verdict} for TensorRT 10.x ({len(self.errors)} errors, {len(self.warnings)} warnings; "
            f"opset {self.opset}, IR {self.ir_version}, {nodes} nodes)"
        ]
        for issue in sorted(self.issues, key=lambda i: i.severity != ERROR):
            where = f"{issue.op_type} {issue.node!r}" if issue.node or issue.op_type else "model"
            lines.append(f"  {issue.severity:<7} {where}: {issue.message}")
        lines.extend(f"  note    {note}" for note in self.notes)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the linter


class Linter(LintGraph):
    def __init__(self, model: onnx.ModelProto, matrix: OperatorMatrix, name: str, path: str | None) -> None:
        self.matrix = matrix
        self.issues: list[LintIssue] = []
        super().__init__(model)
        self.report = LintReport(graph=name, opset=self.opset, ir_version=model.ir_version, path=path)
        for message in self.read_errors:  # the model could not be read as a whole (functions not inlined)
            self.error("", "", message)

    # -- issue recording ----------------------------------------------------------------------

    def error(self, node: str, op_type: str, message: str) -> None:
        self.issues.append(LintIssue(ERROR, node, op_type, message))

    def warning(self, node: str, op_type: str, message: str) -> None:
        self.issues.append(LintIssue(WARNING, node, op_type, message))

    # -- checks -------------------------------------------------------------------------------

    def run(self) -> LintReport:
        self.check_model()
        counts: Counter[str] = Counter()
        for node, label, _ in self.nodes:
            domain = node.domain if node.domain not in DEFAULT_DOMAINS else ""
            counts[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
            self.check_node(node, label)
        self.check_tensors()
        self.report.issues = self.issues
        self.report.notes = self.notes
        self.report.op_counts = dict(sorted(counts.items()))
        return self.report

    def check_model(self) -> None:
        lo, hi = self.matrix.opset_range
        if self.opset is None:
            self.error("", "", "the model imports no default-domain ('ai.onnx') opset")
        elif not lo <= self.opset <= hi:
            self.error(
                "", "",
                f"default-domain opset {self.opset} is outside the range TensorRT's ONNX parser accepts "
                f"({lo}..{hi}); export with opset_version in {max(lo, 18)}..{hi}",
            )
        ir = self.report.ir_version
        if ir > MAX_IR_VERSION:
            self.warning("", "", f"IR version {ir} is newer than TensorRT 10.x's parser reads ({MAX_IR_VERSION}); "
                                 f"save the model with ir_version={MAX_IR_VERSION}")
        self.notes.append(f"IR version {ir} (TensorRT 10.x reads up to {MAX_IR_VERSION})")

    def check_node(self, node: onnx.NodeProto, label: str) -> None:
        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            self.error(label, op, f"domain {node.domain!r} is not standard ONNX: TensorRT's parser takes only "
                                  "default-domain ops (no plugins)")
            return
        support = self.matrix.get(op)
        if support is None:
            self.error(label, op, f"{op} is not in TensorRT's ONNX operator matrix ({Path(self.matrix.source).name})")
            return
        if not support.supported:
            self.error(label, op, f"{op} is not supported by TensorRT's ONNX parser")
            return
        opset = self.opset if self.opset is not None else self.matrix.max_opset
        self.check_types(node, label, support, opset)
        self.check_constant_inputs(node, label, support, opset)
        special = getattr(self, f"check_{op}", None)
        if special is not None:
            special(node, label)

    def check_types(self, node: onnx.NodeProto, label: str, support: OperatorSupport, opset: int) -> None:
        slots = data_slots(node.op_type, opset)
        if slots is None:
            self.warning(label, node.op_type, f"no ONNX schema for {node.op_type} at opset {opset}: "
                                              "type and constant-input checks skipped")
            return
        in_flags, in_var, out_flags, out_var = slots
        bad = []
        for kind, names, flags, variadic in (("input", node.input, in_flags, in_var),
                                             ("output", node.output, out_flags, out_var)):
            for index, name in enumerate(names):
                if not name or not is_data_slot(flags, variadic, index):
                    continue
                elem = self.types.get(name)
                if not elem:
                    continue  # unknown type: skip silently
                type_name = matrix_type_name(elem)
                if type_name == "DOUBLE":  # cast down to FP32 by TensorRT; warned once per tensor
                    type_name = "FP32"
                if node.op_type == "Constant" and type_name in QUANTIZED_TYPES:
                    continue  # quantized weights: the Q/DQ rule decides
                if type_name not in support.types:
                    bad.append(f"{kind} {index} {name!r} is {type_name}")
        if bad:
            allowed = ", ".join(sorted(support.types))
            self.error(label, node.op_type,
                       f"{'; '.join(bad)}: TensorRT supports {node.op_type} on {allowed} only")

    def check_constant_inputs(self, node: onnx.NodeProto, label: str, support: OperatorSupport, opset: int) -> None:
        wanted = set(support.constant_inputs) | set(_DESIGN_CONSTANT_INPUTS.get(node.op_type, ()))
        if not wanted:
            return
        schema = op_schema(node.op_type, opset)
        if schema is None:
            return
        for index, param in enumerate(schema.inputs):
            if param.name not in wanted or index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            if not self.is_constant(name):
                source = self.producers.get(name)
                origin = f"output of {source[0].op_type} {source[1]!r}" if source else "a graph input"
                self.error(label, node.op_type,
                           f"input {param.name!r} ({name!r}, {origin}) must be an initializer or a Constant "
                           f"output for TensorRT (matrix: {support.restrictions or 'constant'})")

    # op-specific rules: check_<OpType>(node, label)

    def check_TopK(self, node: onnx.NodeProto, label: str) -> None:
        sorted_attr = attr_value(node, "sorted", 1)
        if sorted_attr != 1:
            self.error(label, "TopK", f"sorted={sorted_attr}: TensorRT's TopK needs sorted=1")
        if self.opset is not None and self.opset < 10:
            k = attr_value(node, "k")
            if k is not None and k >= TOPK_K_LIMIT:
                self.error(label, "TopK", f"k={k}: TensorRT needs K < {TOPK_K_LIMIT}")
            return
        if len(node.input) < 2 or not node.input[1]:
            return
        name = node.input[1]
        value = self.constant_value(name)
        if value is None:
            self.warning(label, "TopK", f"K ({name!r}) is computed at run time: TensorRT needs K < {TOPK_K_LIMIT}, "
                                        f"so K must stay below {TOPK_K_LIMIT} at run time")
        elif value is UNREADABLE or np.size(value) != 1:
            self.warning(label, "TopK", f"K ({name!r}) is a constant whose value could not be read: "
                                        f"TensorRT needs K < {TOPK_K_LIMIT}")
        else:
            k = int(np.asarray(value).reshape(-1)[0])
            if k >= TOPK_K_LIMIT:
                self.error(label, "TopK", f"K = {k}: TensorRT needs K < {TOPK_K_LIMIT}")

    def check_Constant(self, node: onnx.NodeProto, label: str) -> None:
        for attr in node.attribute:
            if attr.name in ("sparse_value", "value_string", "value_strings"):
                self.error(label, "Constant", f"attribute {attr.name!r} is not supported by TensorRT")

    def check_LayerNormalization(self, node: onnx.NodeProto, label: str) -> None:
        for name in node.output[1:]:
            if name and (self.consumers.get(name) or name in self.graph_io):
                self.error(label, "LayerNormalization",
                           f"output {name!r} is used, but TensorRT supports only the first output Y")

    def check_MaxPool(self, node: onnx.NodeProto, label: str) -> None:
        if len(node.output) > 1 and node.output[1]:
            self.error(label, "MaxPool", "the Indices output is not supported by TensorRT")
        self._check_dilations(node, label)

    def check_AveragePool(self, node: onnx.NodeProto, label: str) -> None:
        self._check_dilations(node, label)

    def check_LpPool(self, node: onnx.NodeProto, label: str) -> None:
        self._check_dilations(node, label)

    def _check_dilations(self, node: onnx.NodeProto, label: str) -> None:
        dilations = attr_value(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            self.error(label, node.op_type, f"dilations={list(dilations)}: TensorRT needs empty or all ones")

    def check_ScatterND(self, node: onnx.NodeProto, label: str) -> None:
        reduction = attr_value(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction != "none":
            self.error(label, "ScatterND", f"reduction={reduction!r} is not supported by TensorRT")

    def check_Resize(self, node: onnx.NodeProto, label: str) -> None:
        if attr_value(node, "antialias", 0):
            self.error(label, "Resize", "antialias=1 is not supported by TensorRT")
        for attr_name, allowed in _RESIZE_ALLOWED.items():
            value = attr_value(node, attr_name)
            if value is None:
                continue
            value = value.decode() if isinstance(value, bytes) else value
            if value not in allowed:
                self.error(label, "Resize", f"{attr_name}={value!r} is not supported by TensorRT "
                                            f"(supported: {', '.join(sorted(allowed))})")

    def check_QuantizeLinear(self, node: onnx.NodeProto, label: str) -> None:
        self._check_zero_point(node, label, "y_zero_point")

    def check_DequantizeLinear(self, node: onnx.NodeProto, label: str) -> None:
        self._check_zero_point(node, label, "x_zero_point")

    def _check_zero_point(self, node: onnx.NodeProto, label: str, what: str) -> None:
        if len(node.input) < 3 or not node.input[2]:
            return
        value = self.constant_value(node.input[2])
        if value is None:
            self.error(label, node.op_type, f"{what} must be a constant zero for TensorRT; it is computed at run time")
        elif value is not UNREADABLE and np.any(np.asarray(value).astype(np.float64) != 0):
            self.error(label, node.op_type, f"{what} must be zero for TensorRT")

    def check_tensors(self) -> None:
        """Type rules that hold for tensors wherever they are: DOUBLE, UINT8, quantized types."""
        for name, elem in self.types.items():
            type_name = matrix_type_name(elem)
            if type_name not in ("DOUBLE", "UINT8") and type_name not in QUANTIZED_TYPES:
                continue
            producer = self.producers.get(name)
            node_label, op_type = (producer[1], producer[0].op_type) if producer else ("", "")
            if type_name == "DOUBLE":
                self.warning(node_label, op_type, f"tensor {name!r} is DOUBLE: TensorRT casts DOUBLE to FLOAT, "
                                                  "clamping to +-FLT_MAX")
            elif type_name == "UINT8":
                if name not in self.graph_io:
                    self.error(node_label, op_type, f"tensor {name!r} is UINT8: TensorRT allows UINT8 only as a "
                                                    "network input or output")
            else:
                self._check_quantized(name, type_name, producer, node_label, op_type)

    def _check_quantized(self, name, type_name, producer, node_label, op_type) -> None:
        problems = []
        if producer is not None and producer[0].op_type not in ("QuantizeLinear", "Constant"):
            problems.append(f"produced by {producer[0].op_type}")
        elif producer is None and not (name in self.initializers or name in self.graph_inputs
                                       or name in self.subgraph_inputs):
            return  # a name we know only from value_info: nothing to say
        others = sorted({c.op_type for c in self.consumers.get(name, []) if c.op_type not in QDQ_OPS})
        if others:
            problems.append(f"consumed by {', '.join(others)}")
        if problems:
            self.error(node_label, op_type, f"tensor {name!r} is {type_name} ({'; '.join(problems)}): TensorRT "
                                            "takes quantized types only through QuantizeLinear/DequantizeLinear")
