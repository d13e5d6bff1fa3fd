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
# The one opset above the matrix's range the lint accepts, and only for a graph holding weight-only
# INT4 (a blocked INT4 DequantizeLinear): ONNX defines the INT4 type and DequantizeLinear's
# block_size from opset 21 on, and that is the form TensorRT 10 takes weight-only INT4 in
# (docs/DESIGN.md §4; the tiny and 7B int4 graphs parse and build with TensorRT-RTX).
INT4_DEQUANTIZE_OPSET = 21
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
        elif self.opset == INT4_DEQUANTIZE_OPSET and (int4 := self.blocked_int4_dequantizers()):
            self.notes.append(
                f"default-domain opset {self.opset} accepted although the matrix lists {lo}..{hi}: the graph holds "
                f"{len(int4)} blocked INT4 DequantizeLinear (weight-only int4), and ONNX defines INT4 and "
                f"DequantizeLinear's block_size from opset {INT4_DEQUANTIZE_OPSET} on; TensorRT 10 takes weight-only "
                "INT4 in this form (docs/DESIGN.md §4)")
        elif not lo <= self.opset <= hi:
            int4_hint = (f" (opset {INT4_DEQUANTIZE_OPSET} is accepted only for a graph holding blocked INT4 "
                         "DequantizeLinear weights, and this one holds none)"
                         if self.opset == INT4_DEQUANTIZE_OPSET else "")
            self.error(
                "", "",
                f"default-domain opset {self.opset} is outside the range TensorRT's ONNX parser accepts "
                f"({lo}..{hi}); export with opset_version in {max(lo, 18)}..{hi}{int4_hint}",
            )
        ir = self.report.ir_version
        if ir > MAX_IR_VERSION:
            self.warning("", "", f"IR version {ir} is newer than TensorRT 10.x's parser reads ({MAX_IR_VERSION}); "
                                 f"save the model with ir_version={MAX_IR_VERSION}")
        self.notes.append(f"IR version {ir} (TensorRT 10.x reads up to {MAX_IR_VERSION})")

    def check_node(self, node: onnx.NodeProto, label: str) -> None:
        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            if node.domain == "com.microsoft" and op == "MatMulNBits":
                self.error(label, op, "com.microsoft MatMulNBits is onnxruntime's own 4-bit MatMul (a contrib op "
                                      "only onnxruntime runs): TensorRT's parser cannot import it. TensorRT builds "
                                      "need the QDQ form, DequantizeLinear(INT4 weight, scale, axis=0, block_size) "
                                      "-> MatMul (transprune-export --weights int4 writes it)")
                return
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
        if self.types.get(node.input[0]) == TensorProto.INT4:
            self._check_weight_only_int4(node, label)

    def blocked_int4_dequantizers(self) -> list[onnx.NodeProto]:
        """Every DequantizeLinear of the graph whose input is INT4 and which has a ``block_size``."""
        return [node for node, _, _ in self.nodes
                if node.op_type == "DequantizeLinear" and node.domain in DEFAULT_DOMAINS and node.input
                and self.types.get(node.input[0]) == TensorProto.INT4 and attr_value(node, "block_size") is not None]

    def _check_weight_only_int4(self, node: onnx.NodeProto, label: str) -> None:
        """What TensorRT requires of a weight-only INT4 (blocked) DequantizeLinear: INT4 is a weight
        type only, so x is a constant INT4 [K, N] weight, blocked along its input channels (axis 0,
        ``block_size`` dividing K), with constant, strictly positive scales [K / block_size, N]
        (IDequantizeLayer: "All scale coefficients must have strictly positive values"), zero
        points zero (checked above), and the output is the weight (input 1) of a MatMul."""
        op, x = "DequantizeLinear", node.input[0]
        weight = self.initializers.get(x)
        if weight is None:
            origin = "a Constant node's output" if x in self.constant_nodes else (
                f"the output of {self.producers[x][0].op_type}" if x in self.producers else "a graph input")
            self.error(label, op, f"x ({x!r}) is {origin}: TensorRT takes INT4 only as weight-only quantization, "
                                  "so x must be an INT4 initializer")
            return
        dims = tuple(weight.dims)
        block = attr_value(node, "block_size")
        axis = attr_value(node, "axis", 1)
        if len(dims) != 2:
            self.error(label, op, f"x ({x!r}) has shape {list(dims)}: weight-only INT4 needs a 2-D [K, N] MatMul "
                                  "weight")
        elif axis not in (0, -2):
            self.error(label, op, f"axis={axis}: weight-only INT4 is blocked along the input channels of the [K, N] "
                                  "weight, axis 0 (ONNX's default is 1)")
        if block is None:
            self.error(label, op, "no block_size: TensorRT takes INT4 weights block-quantized (one scale per "
                                  "block of input channels), so block_size must be set")
        elif len(dims) == 2 and (block <= 0 or dims[0] % block):
            self.error(label, op, f"block_size={block} does not divide the weight's {dims[0]} input channels")
        self._check_int4_scale(node, label, dims, block)
        uses = [(consumer, [i for i, name in enumerate(consumer.input) if name == node.output[0]])
                for consumer in self.consumers.get(node.output[0], [])]
        others = sorted({f"{c.op_type} input {i}" for c, slots in uses for i in slots
                         if not (c.op_type == "MatMul" and i == 1)})
        if node.output[0] in self.graph_io:
            others.append("a graph output")
        if others or not uses:
            where = ", ".join(others) if others else "nothing"
            self.warning(label, op, f"its output feeds {where}: TensorRT's weight-only INT4 kernels take the "
                                    "dequantized weight as a MatMul's weight (input 1); elsewhere it may be "
                                    "dequantized to a float constant or not built")

    def _check_int4_scale(self, node: onnx.NodeProto, label: str, dims: tuple, block) -> None:
        op = "DequantizeLinear"
        if len(node.input) < 2 or not node.input[1]:
            self.error(label, op, "no x_scale")
            return
        name = node.input[1]
        if not self.is_constant(name):
            source = self.producers.get(name)
            origin = f"the output of {source[0].op_type} {source[1]!r}" if source else "a graph input"
            self.error(label, op, f"x_scale ({name!r}) is {origin}: TensorRT needs weight-only INT4 scales to be "
                                  "an initializer")
            return
        scale = self.initializers.get(name)
        if scale is not None and len(dims) == 2 and isinstance(block, int) and block > 0:
            expected = (dims[0] // block, dims[1])
            if tuple(scale.dims) != expected:
                self.error(label, op, f"x_scale ({name!r}) has shape {list(scale.dims)}, not {list(expected)}: "
                                      "one scale per block of input channels and output channel")
        value = self.constant_value(name)  # never read from external data
        if value is None or value is UNREADABLE:
            return
        values = np.asarray(value, dtype=np.float64)
        if values.size and not (np.all(np.isfinite(values)) and np.all(values > 0)):
            bad = int(np.count_nonzero(~(np.isfinite(values) & (values > 0))))
            self.error(label, op, f"x_scale ({name!r}) has {bad} of {values.size} values that are not positive "
                                  "and finite: TensorRT's dequantization needs strictly positive scales")

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
