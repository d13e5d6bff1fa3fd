"""A decoder segment's ONNX graph composed from one traced layer, instead of a trace of
every layer (``export/tracing.py`` says why: tracing is nearly all of an export's time).

A *layer pattern* is a traced one-layer segment: the preamble every layer shares (rotary cos/sin
from the positions, the causal mask, the token mask, the sizes read off the inputs) and the
layer's own nodes. A segment of n layers is the preamble once and the layer's nodes n times, each
copy wired to the previous copy's hidden state, its own caches and its own weights
(``layers.{i}.*``, the names the whole segment module gives them), and the TTV outputs summed in
layer order, as ``SegmentGraph.forward`` does. A segment with TTV layers is composed from a TTV
layer's pattern alone, its other layers copying only the nodes their hidden state and cache need:
a pattern traced without TTV has the same layer, but its preamble's size arithmetic comes out in
another (equal) form than the one a segment with a TTV layer is traced with.

What is preamble: a node none of whose inputs is the layer's data (its hidden-state input, its
caches, its weights, or a value computed from them). A ``Shape`` of an input is preamble too: it
reads only sizes, which every layer's input shares (the named axes). That is what a whole-segment
trace gives: torch.export computes each symbolic size once and every layer reads it, and the
ONNX optimizer's common-subexpression pass leaves one copy of each pure preamble computation.
``graph_canon`` checks the composed graph against a whole-segment trace
(tests/export/test_layer_reuse.py), and the build's validation checks every segment's numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

LAYER_PREFIX = "layers.0."  # the weights of a pattern's one layer (SegmentGraph's ModuleList names)


@dataclass
class LayerPattern:
    """A traced one-layer segment and which of its values are the layer's data."""

    model: object  # onnx_ir.Model
    hidden: object  # the hidden-state input Value
    caches: dict  # part ("past_key", "past_value", "gen_key", "gen_value") -> input Value
    weights: dict  # parameter name after ``layers.0.`` -> initializer Value
    body: set = field(default_factory=set)  # the nodes that are the layer's own (not preamble)

    @classmethod
    def of(cls, model, *, layer: int) -> "LayerPattern":
        graph = model.graph
        inputs = {value.name: value for value in graph.inputs}
        caches = {part: inputs[f"{part}.{layer}"] for part in ("past_key", "past_value", "gen_key", "gen_value")}
        weights = {name[len(LAYER_PREFIX):]: value for name, value in graph.initializers.items()
                   if name.startswith(LAYER_PREFIX)}
        pattern = cls(model, inputs["hidden"], caches, weights)
        data = {id(pattern.hidden), *(id(v) for v in caches.values()), *(id(v) for v in weights.values())}
        for node in graph:
            reads_sizes_only = node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.inputs[0] in graph.inputs
            if not reads_sizes_only and any(value is not None and id(value) in data for value in node.inputs):
                pattern.body.add(node)
                data.update(id(output) for output in node.outputs)
        return pattern


class _Composer:
    """Builds one segment graph: shared preamble and constants, then each layer's copy."""

    def __init__(self) -> None:
        import onnx_ir as ir

        self.ir = ir
        self.nodes, self.initializers = [], {}
        self.shared: dict = {}  # structural key of a preamble node -> its composed node's outputs
        self.keys: dict = {}  # id(composed value) -> structural key, for preamble/constant/input values
        self.constants: dict = {}  # content key of a constant -> its composed initializer
        self.inputs: dict = {}  # name -> composed graph input
        self.first_caches: dict | None = None  # the first layer's caches: where preamble Shapes read sizes

    def graph_input(self, name: str, like) -> object:
        if name not in self.inputs:
            value = self.ir.Value(name=name, type=like.type, shape=_shape(like))
            self.inputs[name] = value
            self.keys[id(value)] = ("input", name)
        return self.inputs[name]

    def constant(self, value) -> object:
        tensor = value.const_value
        key = ("constant", str(value.dtype), tuple(value.shape.dims) if value.shape else None,
               hashlib.sha256(tensor.tobytes()).hexdigest())
        if key not in self.constants:
            name = value.name if value.name not in self.initializers else f"{value.name}_{len(self.initializers)}"
            copy = self.ir.Value(name=name, type=value.type, shape=_shape(value),
                                 const_value=tensor)
            self.initializers[name] = copy
            self.constants[key] = copy
            self.keys[id(copy)] = key
        return self.constants[key]

    def weight(self, name: str, like) -> object:
        value = self.ir.Value(name=name, type=like.type, shape=_shape(like))
        self.initializers[name] = value
        return value

    def add_layer(self, pattern: LayerPattern, *, index: int, hidden, caches: dict, ttv: bool) -> dict:
        """Copies ``pattern``'s layer as layer ``index`` of the segment, without the nodes that
        only its TTV output needs unless ``ttv``; returns {pattern output name: composed value}."""
        ir = self.ir
        graph = pattern.model.graph
        wanted = [v for v in graph.outputs if ttv or v.name != "ttv"]
        live = _needed(graph, wanted)
        mapping = {id(pattern.hidden): hidden, **{id(pattern.caches[part]): value for part, value in caches.items()}}
        if self.first_caches is None:
            self.first_caches = dict(caches)
        # a preamble Shape of the layer's inputs reads the segment's own inputs: the sizes are the same
        sizes_from = {id(pattern.hidden): self.inputs["hidden"],
                      **{id(pattern.caches[part]): value for part, value in self.first_caches.items()}}
        for value in graph.inputs:
            if id(value) not in mapping:  # position_ids, attention_mask
                mapping[id(value)] = self.graph_input(value.name, value)
        for name, value in graph.initializers.items():
            if name.startswith(LAYER_PREFIX):
                mapping[id(value)] = self.weight(f"layers.{index}.{name[len(LAYER_PREFIX):]}", value)
            else:
                mapping[id(value)] = self.constant(value)
        for node in graph:
            if node not in live:
                continue
            body = node in pattern.body
            inputs = [None if v is None else (mapping[id(v)] if body else sizes_from.get(id(v), mapping[id(v)]))
                      for v in node.inputs]
            if not body:
                key = (node.domain, node.op_type, _attributes(node),
                       tuple(None if v is None else self.keys[id(v)] for v in inputs))
                if key in self.shared:
                    for output, composed in zip(node.outputs, self.shared[key]):
                        mapping[id(output)] = composed
                    continue
            copy = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                           overload=node.overload, num_outputs=len(node.outputs), version=node.version,
                           name=f"{f'layers.{index}' if body else 'preamble'}/{node.name}",
                           doc_string=node.doc_string, metadata_props=dict(node.metadata_props))
            for output, composed in zip(node.outputs, copy.outputs):
                composed.name = f"{f'layers.{index}' if body else 'preamble'}/{output.name}"
                composed.type, composed.shape = output.type, _shape(output)
                mapping[id(output)] = composed
            if not body:
                self.shared[key] = list(copy.outputs)
                for number, composed in enumerate(copy.outputs):
                    self.keys[id(composed)] = (key, number)
            self.nodes.append(copy)
        return {output.name: mapping[id(output)] for output in wanted}

    def add(self, first, second, *, name: str) -> object:
        """first + second (the TTV sum), typed like ``first``."""
        node = self.ir.Node("", "Add", [first, second], num_outputs=1, name=f"{name}/Add")
        node.outputs[0].name, node.outputs[0].type = f"{name}/sum", first.type
        node.outputs[0].shape = _shape(first)
        self.nodes.append(node)
        return node.outputs[0]


def _needed(graph, outputs) -> set:
    """The nodes of ``graph`` that ``outputs`` depend on."""
    needed, stack = set(), [v.producer() for v in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in needed:
            continue
        needed.add(node)
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return needed


def _shape(value):
    """A copy of ``value``'s shape (a scalar's is ``()``, which is not "unknown")."""
    return None if value.shape is None else value.shape.copy()


def _attributes(node) -> tuple:
    return tuple(sorted((name, repr(attr.value)) for name, attr in node.attributes.items()))


def compose_segment(spec, pattern: LayerPattern) -> object:
    """The ONNX IR model of segment ``spec`` from ``pattern`` (a TTV layer's if the segment has
    TTV layers), its weights value-less initializers named as ``SegmentGraph``'s parameters."""
    import onnx_ir as ir

    first, last = spec.layers
    ttv_layers = set(spec.attrs["ttv_layers"])
    template = pattern.model
    if template.functions:
        raise RuntimeError(f"{spec.name}: a traced layer holds ONNX functions; segments cannot be composed from it")
    composer = _Composer()
    hidden = composer.graph_input("hidden", pattern.hidden)
    cache_inputs = {}
    for tensor in spec.inputs:
        part, _, _ = tensor.name.rpartition(".")
        if part in pattern.caches:
            cache_inputs[tensor.name] = composer.graph_input(tensor.name, pattern.caches[part])
    outputs, ttv = {}, None
    for index, number in enumerate(range(first, last + 1)):
        wants = number in ttv_layers
        caches = {part: cache_inputs[f"{part}.{number}"] for part in pattern.caches}
        made = composer.add_layer(pattern, index=index, hidden=hidden, caches=caches, ttv=wants)
        hidden = made["hidden_out"]
        for name, value in made.items():
            if name.startswith(("new_key.", "new_value.")):
                outputs[f"{name.rpartition('.')[0]}.{number}"] = value
        if wants:
            ttv = made["ttv"] if ttv is None else composer.add(ttv, made["ttv"], name=f"layers.{index}/ttv")
    outputs["hidden_out"] = hidden
    if ttv is not None:
        outputs["ttv"] = ttv
    graph_outputs = []
    for tensor in spec.outputs:
        value = outputs[tensor.name]
        value.name = tensor.name
        graph_outputs.append(value)
    graph = ir.Graph([composer.inputs[t.name] for t in spec.inputs], graph_outputs, nodes=composer.nodes,
                     initializers=list(composer.initializers.values()),
                     opset_imports=dict(template.graph.opset_imports), name=template.graph.name,
                     doc_string=template.graph.doc_string, metadata_props=dict(template.graph.metadata_props))
    return ir.Model(graph, ir_version=template.ir_version, producer_name=template.producer_name,
                    producer_version=template.producer_version, domain=template.domain,
                    model_version=template.model_version, doc_string=template.doc_string,
                    metadata_props=dict(template.metadata_props))
