"""Check an ONNX graph against what TensorRT 10.x's ONNX parser accepts, with no TensorRT installed.

A graph that TensorRT cannot parse is found out on the target (a Jetson), after a long export;
this lint finds the known causes on the export machine, in well under a second per graph, from the
operator matrix (``operator_matrix``) and DESIGN.md §4. It reads only the graph: a path is loaded
with ``load_external_data=False``, so multi-GB weights are never read.

Checks, in order (each issue names the node, its op type and the rule):

1. model: the default-domain opset must lie in the matrix's range (9..20); nodes of any other
   domain (``com.microsoft``, ``pkg.onnxscript.torch_lib``, ``ai.onnx.ml``...) are errors, since
   TensorRT parses standard ops only, without plugins. Local functions (dynamo/onnxscript output)
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
   Q/DQ zero points are errors. Tensor rules: DOUBLE anywhere is a warning; UINT8 anywhere but a
   graph input/output is an error; INT8/FP8/INT4 outside Q/DQ (produced other than by
   QuantizeLinear/initializer/Constant/graph input, or consumed by anything but Q/DQ) is an error.

Usage: ``lint_model(model_or_path)`` -> ``LintReport`` (``.ok``, ``.format()``, ``.to_dict()``);
``lint_directory(paths)`` for many graphs; ``python -m transprune.export.trt_lint PATH...``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from transprune.export.operator_matrix import OperatorMatrix, OperatorSupport, load_matrix

ERROR = "error"
WARNING = "warning"

MAX_IR_VERSION = 10  # the newest ONNX IR TensorRT 10.x's parser (onnx 1.16 era) reads
TOPK_K_LIMIT = 3840  # TopK: "K input must be less than 3840"
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
QUANTIZED_TYPES = frozenset({"INT8", "FP8", "INT4"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

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

# DESIGN.md §4's constant-input rules; the matrix states the same, this keeps them if a future
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
# schema helpers (cached: a 30-layer graph has thousands of nodes but a few dozen op types)


@functools.lru_cache(maxsize=1024)
def _schema(op_type: str, opset: int) -> defs.OpSchema | None:
    try:
        return defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None


def _is_data_param(type_str: str, constraints: dict[str, frozenset[str]]) -> bool:
    allowed = constraints.get(type_str)
    if allowed is None:  # a fixed type, e.g. tensor(int64) for shapes and TopK's K
        return False
    if allowed <= {"tensor(int32)", "tensor(int64)"}:  # indices, shapes, axes
        return False
    if allowed == {"tensor(bool)"}:  # conditions and masks
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _data_slots(op_type: str, opset: int) -> tuple[tuple[bool, ...], bool, tuple[bool, ...], bool] | None:
    """(data flag per formal input, last input variadic, same for outputs), or None if no schema."""
    schema = _schema(op_type, opset)
    if schema is None:
        return None
    constraints = {tc.type_param_str: frozenset(tc.allowed_type_strs) for tc in schema.type_constraints}
    variadic = defs.OpSchema.FormalParameterOption.Variadic
    inputs = tuple(_is_data_param(p.type_str, constraints) for p in schema.inputs)
    outputs = tuple(_is_data_param(p.type_str, constraints) for p in schema.outputs)
    if op_type in QDQ_OPS:  # the matrix lists the quantized side's input type only
        inputs = (True,) + (False,) * (len(inputs) - 1)
        outputs = (False,) * len(outputs)
    in_var = bool(schema.inputs) and schema.inputs[-1].option == variadic
    out_var = bool(schema.outputs) and schema.outputs[-1].option == variadic
    return inputs, in_var, outputs, out_var


def _slot(flags: tuple[bool, ...], variadic: bool, index: int) -> bool:
    if index < len(flags):
        return flags[index]
    return bool(flags) and variadic and flags[-1]


# ---------------------------------------------------------------------------------------------
# model preparation


def _strip_large_initializers(model: onnx.ModelProto, limit: int = 1 << 20) -> onnx.ModelProto:
    """The model with in-memory initializers over ``limit`` bytes turned into data-less stubs.

    Shape inference serializes the model; an in-memory model with GBs of weights would be copied
    (or exceed protobuf's 2 GB). Types do not depend on weight values, so big weights are dropped.
    """
    graph = model.graph
    if not any(t.ByteSize() > limit for t in graph.initializer):
        return model
    stubs = []
    for tensor in graph.initializer:
        if tensor.ByteSize() > limit:
            stub = TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)
            stub.data_location = TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="<not loaded>")
            stubs.append(stub)
        else:
            stubs.append(tensor)
    light_graph = onnx.GraphProto(
        name=graph.name,
        node=graph.node,
        initializer=stubs,
        sparse_initializer=graph.sparse_initializer,
        input=graph.input,
        output=graph.output,
        value_info=graph.value_info,
        doc_string=graph.doc_string,
    )
    light = onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        producer_name=model.producer_name,
        functions=model.functions,
        graph=light_graph,
    )
    return light


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, graph in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", graph


def _walk(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[onnx.NodeProto, str, onnx.GraphProto]]:
    """Every node of ``graph`` and its subgraphs, with a readable label, depth first."""
    for index, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}#{index}")
        yield node, label, graph
        for attr_name, sub in _subgraphs(node):
            yield from _walk(sub, f"{label}/{attr_name}/")


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for _, sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _value_types(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """Element types declared in ``graph`` and its subgraphs (inputs, outputs, value_info, constants)."""
    for g in _all_graphs(graph):
        for tensor in g.initializer:
            types.setdefault(tensor.name, tensor.data_type)
        for value in (*g.input, *g.output, *g.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for node in g.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                elem = _constant_elem_type(node)
                if elem:
                    types.setdefault(node.output[0], elem)


_CONSTANT_ATTR_TYPES = {
    "value_int": TensorProto.INT64,
    "value_ints": TensorProto.INT64,
    "value_float": TensorProto.FLOAT,
    "value_floats": TensorProto.FLOAT,
    "value_string": TensorProto.STRING,
    "value_strings": TensorProto.STRING,
}


def _constant_elem_type(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t.data_type
        if attr.name == "sparse_value":
            return attr.sparse_tensor.values.data_type
        if attr.name in _CONSTANT_ATTR_TYPES:
            return _CONSTANT_ATTR_TYPES[attr.name]
    return 0


class _Unreadable:
    """A constant whose value lives outside the graph (external data, sparse)."""


UNREADABLE = _Unreadable()


def _tensor_value(tensor: TensorProto):
    if tensor.data_location == TensorProto.EXTERNAL:  # never read external files
        return UNREADABLE
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - malformed data: the value is simply unknown
        return UNREADABLE


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# ---------------------------------------------------------------------------------------------
# the linter


class _Linter:
    def __init__(self, model: onnx.ModelProto, matrix: OperatorMatrix, name: str, path: str | None) -> None:
        self.matrix = matrix
        self.issues: list[LintIssue] = []
        self.notes: list[str] = []
        default = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
        self.opset = max(default) if default else None
        self.report = LintReport(graph=name, opset=self.opset, ir_version=model.ir_version, path=path)

        self.model = self._inline(model)
        graph = self.model.graph
        self.graph_io = {v.name for v in (*graph.input, *graph.output)}
        self.graph_inputs = {v.name for v in graph.input}
        self.nodes = list(_walk(graph))
        self.initializers: dict[str, TensorProto] = {}
        for g in _all_graphs(graph):
            for tensor in g.initializer:
                self.initializers[tensor.name] = tensor
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        self.producers: dict[str, tuple[onnx.NodeProto, str]] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node, label, _ in self.nodes:
            for out in node.output:
                if out:
                    self.producers[out] = (node, label)
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                self.constant_nodes[node.output[0]] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.subgraph_inputs = {
            v.name for g in _all_graphs(graph) if g is not graph for v in g.input
        }
        self.types = self._infer_types()

    # -- preparation --------------------------------------------------------------------------

    def _inline(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if not model.functions:
            return model
        names = sorted({f"{f.domain}:{f.name}" if f.domain else f.name for f in model.functions})
        try:
            import onnx.inliner

            inlined = onnx.inliner.inline_local_functions(model)
        except Exception as exc:  # noqa: BLE001 - report it and lint what we have
            self.error("", "", f"could not inline the model's {len(names)} local functions ({exc}); linted as is")
            return model
        self.notes.append(f"inlined {len(names)} local functions before linting: {', '.join(names[:8])}"
                          + (" ..." if len(names) > 8 else ""))
        return inlined

    def _infer_types(self) -> dict[str, int]:
        types: dict[str, int] = {}
        _value_types(self.model.graph, types)
        try:
            inferred = onnx.shape_inference.infer_shapes(
                _strip_large_initializers(self.model), check_type=False, strict_mode=False, data_prop=False
            )
        except Exception as exc:  # noqa: BLE001 - fall back to the declared types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.notes.append(f"shape inference failed ({first_line}); type checks use declared types only")
            return types
        _value_types(inferred.graph, types)
        return types

    # -- issue recording ----------------------------------------------------------------------

    def error(self, node: str, op_type: str, message: str) -> None:
        self.issues.append(LintIssue(ERROR, node, op_type, message))

    def warning(self, node: str, op_type: str, message: str) -> None:
        self.issues.append(LintIssue(WARNING, node, op_type, message))

    # -- constants ----------------------------------------------------------------------------

    def is_constant(self, name: str) -> bool:
        """An initializer (any scope) or the output of a Constant node: TensorRT's 'weights'."""
        return name in self.initializers or name in self.constant_nodes

    def constant_value(self, name: str):
        """The value of a constant tensor (numpy), ``UNREADABLE``, or None if not a constant."""
        if name in self.initializers:
            return _tensor_value(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return _tensor_value(attr.t)
            if attr.name in ("value_int", "value_float"):
                return np.asarray(helper.get_attribute_value(attr))
            if attr.name in ("value_ints", "value_floats"):
                return np.asarray(list(helper.get_attribute_value(attr)))
        return UNREADABLE

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
        slots = _data_slots(node.op_type, opset)
        if slots is None:
            self.warning(label, node.op_type, f"no ONNX schema for {node.op_type} at opset {opset}: "
                                              "type and constant-input checks skipped")
            return
        in_flags, in_var, out_flags, out_var = slots
        bad = []
        for kind, names, flags, variadic in (("input", node.input, in_flags, in_var),
                                             ("output", node.output, out_flags, out_var)):
            for index, name in enumerate(names):
                if not name or not _slot(flags, variadic, index):
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
        schema = _schema(node.op_type, opset)
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
        sorted_attr = _attr(node, "sorted", 1)
        if sorted_attr != 1:
            self.error(label, "TopK", f"sorted={sorted_attr}: TensorRT's TopK needs sorted=1")
        if self.opset is not None and self.opset < 10:
            k = _attr(node, "k")
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
        dilations = _attr(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            self.error(label, node.op_type, f"dilations={list(dilations)}: TensorRT needs empty or all ones")

    def check_ScatterND(self, node: onnx.NodeProto, label: str) -> None:
        reduction = _attr(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction != "none":
            self.error(label, "ScatterND", f"reduction={reduction!r} is not supported by TensorRT")

    def check_Resize(self, node: onnx.NodeProto, label: str) -> None:
        if _attr(node, "antialias", 0):
            self.error(label, "Resize", "antialias=1 is not supported by TensorRT")
        for attr_name, allowed in _RESIZE_ALLOWED.items():
            value = _attr(node, attr_name)
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
    return _Linter(model, matrix, label, str(path) if path is not None else None).run()


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
        prog="python -m transprune.export.trt_lint",
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
