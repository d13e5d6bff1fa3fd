"""Writes one traced graph to ONNX from its spec, weights streamed from the checkpoint (tracing:
``export/tracing.py``, torch.onnx dynamo exporter, docs/DESIGN.md §6)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path

import numpy as np
import torch

from transprune.runtime.manifest import graph_identity, weights_label
from transprune.runtime.onnx_header import IDENTITY_KEY

from .int4 import DEQUANTIZE_OPSET, Int4Weights, QuantizedTensors, insert_dequantize
from .specs import GraphSpec
from .weight_layout import fold_weight_transposes
from .weights import MetaWeights

AXIS_RANGES = {"batch": (1, 64), "seq": (1, 8192), "past": (0, 8192), "gen": (0, 8192), "total": (1, 24576),
               "alive": (1, 8192),
               "tiles": (1, 320), "image": (1, 8192)}
# Every graph with checkpoint weights keeps them in ``<graph>.onnx.data``, whatever their size.
# onnxruntime reads weights stored inline by parsing the whole protobuf and then copying each
# tensor out of it, so a graph briefly costs twice its weights and loads at protobuf speed; from a
# .data file it reads (or maps) each tensor once. Measured on the bench paper build, 2 threads,
# all 11 sessions in one process: inline (the 1 GiB threshold used before) 4.9-5.8 s and a
# 2,279-2,328 MiB peak; external 2.85-2.89 s and 1,789 MiB.
EXTERNAL_DATA_BYTES = 0  # a graph with more weight bytes than this writes a .data file
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}  # the manifest's names of the export dtypes


def dynamic_shapes(spec: GraphSpec, module: torch.nn.Module):
    """torch.export's dynamic shapes for ``module.forward`` fed the spec's inputs in order.

    A forward names its first inputs and may take the rest as ``*args`` (a segment's caches, a
    scorer's optional TTV inputs): its named parameters must be the spec's first inputs, so a
    spec and its module cannot drift apart silently.
    """
    dims = {}

    def dim(name: str):
        if name not in dims:
            low, high = AXIS_RANGES[name]
            dims[name] = torch.export.Dim(name.replace(".", "_"), min=low, max=high)
        return dims[name]

    parameters = list(inspect.signature(module.forward).parameters.values())
    named = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    spec_names = [t.name for t in spec.inputs]
    if spec_names[:len(named)] != named or (not variadic and len(named) != len(spec_names)):
        raise ValueError(f"{spec.name}: {type(module).__name__}.forward takes {named}{' + *args' if variadic else ''} "
                         f"but the spec's inputs are {spec_names}")
    shapes = [{i: dim(a) for i, a in enumerate(t.axes) if isinstance(a, str)} for t in spec.inputs]
    if variadic and len(shapes) > len(named):  # forward(a, b, *rest) fed more than a, b: rest is one tuple
        shapes = [*shapes[:len(named)], tuple(shapes[len(named):])]
    return tuple(shapes)


@contextlib.contextmanager
def quiet_loggers(*loggers: str):
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_graph(module: torch.nn.Module, spec: GraphSpec, path: Path, *, args: tuple, opset: int,
                 weights: MetaWeights, int4: Int4Weights | None = None) -> int:
    """Traces ``module`` fed ``args`` and writes it (``write_graph``); returns the bytes of weights written.
    The exporter traces through one ``Tracer`` for the whole build instead, which reuses traces."""
    from .tracing import Tracer

    model = Tracer(opset=opset).trace(module, spec, args)
    return write_graph(model, spec, path, sources=parameter_sources(module, weights), weights=weights, int4=int4)


def parameter_sources(module: torch.nn.Module, weights: MetaWeights) -> dict:
    """{parameter name: the checkpoint tensor it is}: a traced graph's weight initializers carry
    the parameter names, and are filled from these when the graph is written."""
    return {name: weights.source(p) for name, p in module.named_parameters()}


def write_graph(model, spec: GraphSpec, path: Path, *, sources: dict, weights: MetaWeights,
                int4: Int4Weights | None = None) -> int:
    """Writes ``path`` (and ``path.data`` for its weights, if it has any) from a traced ``model``
    whose weights are value-less initializers named as in ``sources``; returns the bytes of weights written.

    The module was traced on shape-only ``meta`` weights, so tracing held no weights at all. Every
    weight initializer becomes a lazy tensor that reads its checkpoint tensor when the file is
    written, and the weights are written to external data a few tensors at a time: peak memory
    is about one layer, whatever the model size.

    Weights are stored in the layout MatMul reads (``weight_layout``); with ``int4`` the weights it
    quantizes become int4 values and scales behind a ``DequantizeLinear`` (``int4``), quantized
    while they stream into the file.
    """
    import onnx_ir as ir

    for name, value in model.graph.initializers.items():
        if value.const_value is None and sources.get(name) is None:
            raise RuntimeError(f"{spec.name}: initializer {name!r} is not a checkpoint tensor")
    values = _stream_weights(model, sources, weights, int4)
    weight_bytes = 0
    for name, value in model.graph.initializers.items():
        if name not in values:
            continue  # a constant the exporter computed (it has real values)
        value.const_value = ir.LazyTensor(values[name], dtype=value.dtype, shape=value.shape, name=name)
        weight_bytes += value.const_value.nbytes
    # which graph of which build this file is: the runtime refuses it anywhere else (runtime/manifest.py)
    identity = graph_identity(spec.to_dict(), _DTYPE_NAMES[weights.dtype], weights=weights_label(int4.to_dict() if int4 else None))
    model.metadata_props[IDENTITY_KEY] = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    if weight_bytes > EXTERNAL_DATA_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data", max_workers=1)
    else:
        ir.save(model, path)
    return weight_bytes


def _stream_weights(model, sources: dict, weights: MetaWeights, int4: Int4Weights | None) -> dict:
    """{initializer name: function giving its values} for every checkpoint weight of ``model``,
    after storing MatMul weights transposed and, with ``int4``, quantizing the ones it names.
    Nothing is read here: each function runs when the file is written."""
    import onnx_ir as ir

    graph = model.graph
    unset = {name for name, value in graph.initializers.items() if value.const_value is None}
    folded = fold_weight_transposes(graph, is_checkpoint_weight=lambda value: value.name in unset)
    values = {name: (lambda source=sources[name]: ir.tensor(weights.load(source).numpy()))
              for name in unset if name in graph.initializers}
    for name, original in folded.items():
        values[name] = lambda source=sources[original]: ir.tensor(weights.load(source).T.contiguous().numpy())
    if int4 is not None:
        float_type = ir.DataType.FLOAT16 if weights.dtype == torch.float16 else ir.DataType.FLOAT
        quantized = QuantizedTensors(lambda source: weights.weights[source].float().numpy(), int4,
                                     np.float16 if weights.dtype == torch.float16 else np.float32)
        made = insert_dequantize(graph, sources={name: sources[original] for name, original in folded.items()},
                                 scheme=int4, float_type=float_type)
        for name, (source, part) in made.items():
            if part == "values":
                values[name] = lambda name=name, source=source: ir.PackedTensor(
                    quantized.get(source, "values"), ir.DataType.INT4, shape=graph.initializers[name].shape)
            else:
                values[name] = lambda source=source: ir.tensor(quantized.get(source, "scales"))
        if made:  # blocked INT4 DequantizeLinear exists from opset 21 on; no op of ours changed meaning since 18
            graph.opset_imports[""] = max(graph.opset_imports.get("", 0), DEQUANTIZE_OPSET)
    return values
