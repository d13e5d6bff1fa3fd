"""A canonical form of an ONNX graph: what it computes, independent of names and node order.

Why: graphs traced once and composed (``export/tracing.py``) must be the graphs a whole-module
trace gives. Their node and value names differ (the exporter numbers them as it goes), so
``canonical_form`` names every value by what produces it instead:

- a graph input by its name, an initializer by its dtype, shape and bytes (a weight's name is
  also kept: the runtime and the int4 tools read weights by name);
- a node output by its op, domain, attributes and the canonical names of its inputs, hashed.

Two graphs have equal forms when they have the same inputs, outputs, initializers and the same
multiset of nodes wired the same way, whatever the names and order. One exporter choice is not
structure and is canonicalised: which input a ``Shape`` node reads a named axis from, when several
inputs share that axis (a segment's caches all have ``past`` and ``gen``). torch.export binds each
symbolic size to one of them by an internal rule; the graphs promise, and the runtime feeds,
equal sizes along one named axis, so ``Shape(past_key.3)[2]`` and ``Shape(past_value.1)[2]`` are
the same value: both become "the ``past`` axis".

Nodes are compared as a set: two nodes with one canonical name compute one value, and a
whole-module trace sometimes computes an int64 size twice (``Add(past, gen)`` and ``Add(gen,
past)`` from two layers: the optimizer's CSE does not know ``Add`` commutes), which a graph
composed from one traced layer computes once. ``duplicates`` counts such repeats (it is
reported, not compared).

Two more spellings are canonicalised, both from the order in which torch.export numbers its
symbolic sizes (sympy orders a sum's terms by symbol name, so another trace orders them another
way): the operands of a commutative operator (``Add(seq, past)`` is ``Add(past, seq)``, in
floating point too) and a symbolic axis expression in a value's recorded type (``gen + past +
seq`` is ``past + gen + seq``), normalised by sympy.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from pathlib import Path

# ONNX operators whose result does not depend on the order of their inputs
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd",
                         "BitwiseOr", "BitwiseXor"})
# node metadata the exporter writes for people (stack traces, FX node text, module scopes):
# not part of what a graph computes, and different for a layer copied from another
_IGNORED_NODE_FIELDS = ("name", "metadata_props", "doc_string")


@dataclass(frozen=True)
class CanonicalForm:
    inputs: tuple  # (name, type) in order
    outputs: tuple  # (name, type, canonical value) in order
    nodes: tuple  # sorted canonical node records
    initializers: tuple  # sorted (canonical value, weight name or "")
    value_types: tuple  # sorted (canonical value, type) of every value with a recorded type
    model: tuple  # opsets, IR version, graph-level metadata
    duplicates: int = 0  # nodes that repeat another's computation (not compared)

    def differences(self, other: "CanonicalForm", *, limit: int = 5) -> list[str]:
        """What differs, in words (empty when the forms are equal)."""
        found = []
        for field in ("model", "inputs", "outputs", "initializers", "nodes", "value_types"):  # not duplicates
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine == theirs:
                continue
            if field in ("nodes", "initializers", "value_types"):
                a, b = collections.Counter(mine), collections.Counter(theirs)
                only_a, only_b = list((a - b).elements()), list((b - a).elements())
                found.append(f"{field}: {len(only_a)} only in the first, {len(only_b)} only in the second, "
                             f"e.g. {only_a[:limit]} / {only_b[:limit]}")
            else:
                found.append(f"{field}: {mine} != {theirs}")
        return found


def _type(value_info) -> tuple:
    t = value_info.type.tensor_type
    dims = tuple(_axis(d.dim_param) if d.HasField("dim_param") else d.dim_value for d in t.shape.dim) \
        if t.HasField("shape") else None
    return (t.elem_type, dims)


_AXES: dict[str, str] = {}


def _axis(expression: str) -> str:
    """A symbolic axis as sympy prints it once parsed (a plain name stays itself)."""
    if expression.isidentifier():
        return expression
    if expression not in _AXES:
        import sympy

        try:
            _AXES[expression] = sympy.srepr(sympy.sympify(expression, locals={"Max": sympy.Max, "Min": sympy.Min}))
        except (sympy.SympifyError, TypeError, SyntaxError):
            _AXES[expression] = expression
    return _AXES[expression]


def _tensor_digest(tensor, directory: Path | None = None) -> str:
    """A hash of a tensor's bytes; a tensor in an external data file is read from it piece by
    piece (a 7B segment's weights are gigabytes: never all in memory)."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_location != TensorProto.EXTERNAL:
        return hashlib.sha256(numpy_helper.to_array(tensor).tobytes()).hexdigest()[:20]
    if directory is None:
        raise ValueError(f"tensor {tensor.name!r} is stored in an external file: pass the graph's directory")
    where = {entry.key: entry.value for entry in tensor.external_data}
    digest, left = hashlib.sha256(), int(where["length"])
    with open(directory / where["location"], "rb") as file:
        file.seek(int(where.get("offset", 0)))
        while left:
            chunk = file.read(min(left, 1 << 24))
            if not chunk:
                raise ValueError(f"{where['location']} ends before tensor {tensor.name!r} does")
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()[:20]


def _attribute(attr) -> tuple:
    from onnx import AttributeProto, helper

    if attr.type == AttributeProto.TENSOR:
        return (attr.name, "tensor", attr.t.data_type, tuple(attr.t.dims), _tensor_digest(attr.t))
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise ValueError(f"attribute {attr.name!r} holds a subgraph; the canonical form has no subgraphs")
    value = helper.get_attribute_value(attr)
    if isinstance(value, (list, tuple)):
        value = tuple(value)
    return (attr.name, value)


def canonical_form(model, directory: Path | None = None) -> CanonicalForm:
    """The canonical form of ``model`` (an ``onnx.ModelProto``; weights in external files are
    read from ``directory``)."""
    graph = model.graph
    names: dict[str, str] = {"": ""}  # value name -> canonical name ("" is an omitted optional input)
    axes: dict[str, tuple] = {}  # graph input name -> its declared axes
    for value in graph.input:
        names[value.name] = f"input:{value.name}"
        axes[value.name] = _type(value)[1]
    initializers = []
    for tensor in graph.initializer:
        digest = f"init:{tensor.data_type}:{tuple(tensor.dims)}:{_tensor_digest(tensor, directory)}"
        names[tensor.name] = digest
        # the exporter's own constants are named val_N, mul_N...; checkpoint weights by their module path
        initializers.append((digest, tensor.name if "." in tensor.name else ""))
    nodes = []
    for node in graph.node:  # ONNX files are topologically sorted
        attributes = tuple(sorted(_attribute(a) for a in node.attribute))
        inputs = tuple(names[name] for name in node.input)
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] in axes:
            picked = _shape_axes(axes[node.input[0]], dict((a[0], a[1]) for a in attributes))
            if picked is not None:  # only named axes: which input they are read from is not structure
                inputs, attributes = (f"axes:{picked}",), ()
        if node.op_type in COMMUTATIVE and node.domain in ("", "ai.onnx"):
            inputs = tuple(sorted(inputs))
        record = (node.domain or "", node.op_type, attributes, inputs)
        digest = hashlib.sha256(repr(record).encode()).hexdigest()[:24]
        for index, output in enumerate(node.output):
            if output:
                names[output] = f"{digest}:{index}"
        nodes.append((node.domain or "", node.op_type, attributes, inputs, digest))
    outputs = tuple((o.name, _type(o), names[o.name]) for o in graph.output)
    value_types = sorted({(names[v.name], _type(v)) for v in graph.value_info if v.name in names})
    opsets = tuple(sorted((o.domain, o.version) for o in model.opset_import))
    metadata = tuple(sorted((p.key, p.value) for p in model.metadata_props))
    return CanonicalForm(inputs=tuple((i.name, _type(i)) for i in graph.input), outputs=outputs,
                         nodes=tuple(sorted(set(nodes), key=repr)), initializers=tuple(sorted(initializers)),
                         value_types=tuple(value_types), model=(opsets, model.ir_version, metadata),
                         duplicates=len(nodes) - len(set(nodes)))


def _shape_axes(declared: tuple | None, attributes: dict):
    """The named axes a ``Shape`` node reads from an input of ``declared`` axes, or None when it
    reads a fixed axis too (then the input read from is kept in the form)."""
    if declared is None:
        return None
    rank = len(declared)
    start, end = attributes.get("start", 0), attributes.get("end", rank)
    start, end = max(0, start + rank if start < 0 else start), min(rank, end + rank if end < 0 else end)
    picked = declared[start:end]
    return picked if picked and all(isinstance(axis, str) and axis for axis in picked) else None


def load_form(path: Path) -> CanonicalForm:
    """The canonical form of the graph file ``path`` (its weights hashed from their data file)."""
    import onnx

    return canonical_form(onnx.load(str(path), load_external_data=False), Path(path).parent)
