"""The ONNX side of the TensorRT lint: one graph, read without its weights, indexed for the rules.

No TensorRT rule lives here (those are ``lint_rules``); this is what the rules ask of a graph:
which inputs and outputs of an op carry data (from the op's ONNX schema), every node with its
subgraphs (If/Loop/Scan) and a readable label, who produces and consumes each tensor, element
types (declared, then inferred by ``onnx.shape_inference`` on a copy with the big weights
stubbed out) and the values of constant tensors (never read from external data files).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


# ---------------------------------------------------------------------------------------------
# schema helpers (cached: a 30-layer graph has thousands of nodes but a few dozen op types)


@functools.lru_cache(maxsize=1024)
def op_schema(op_type: str, opset: int) -> defs.OpSchema | None:
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
def data_slots(op_type: str, opset: int) -> tuple[tuple[bool, ...], bool, tuple[bool, ...], bool] | None:
    """(data flag per formal input, last input variadic, same for outputs), or None if no schema."""
    schema = op_schema(op_type, opset)
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


def is_data_slot(flags: tuple[bool, ...], variadic: bool, index: int) -> bool:
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


def attr_value(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# ---------------------------------------------------------------------------------------------
# the indexed graph


class LintGraph:
    """``model`` with its local functions inlined, indexed: nodes (subgraphs included), producers
    and consumers of every tensor, initializers and Constant outputs, element types. What could not
    be read is kept for the report: ``notes`` (said in passing) and ``read_errors`` (issues)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.notes: list[str] = []
        self.read_errors: list[str] = []
        default = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
        self.opset = max(default) if default else None
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
            self.read_errors.append(f"could not inline the model's {len(names)} local functions ({exc}); "
                                    "linted as is")
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
