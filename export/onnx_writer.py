"""Traces one graph module to ONNX from its spec (torch.onnx dynamo exporter, docs/DESIGN.md §6)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import warnings
from pathlib import Path

import torch

from transprune.runtime.manifest import graph_identity
from transprune.runtime.onnx_header import IDENTITY_KEY

from .specs import GraphSpec
from .weights import MetaWeights

AXIS_RANGES = {"batch": (1, 64), "seq": (1, 8192), "past": (0, 8192), "total": (1, 16384), "alive": (1, 8192),
               "tiles": (1, 320), "image": (1, 8192)}
EXTERNAL_DATA_BYTES = 1 << 30  # graphs with more weights than this keep them in a .data file
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
def _quiet(*loggers: str):
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_graph(module: torch.nn.Module, spec: GraphSpec, path: Path, *, args: tuple, opset: int,
                 weights: MetaWeights) -> int:
    """Writes ``path`` (and ``path.data`` for large graphs); returns the bytes of weights written.

    ``module`` is built on shape-only ``meta`` weights, so tracing holds no weights at all. Every
    initializer that comes from a parameter becomes a lazy tensor that reads its checkpoint tensor
    when the file is written, and large graphs are written to external data a few tensors at a
    time: peak memory is about one layer, whatever the model size.
    """
    import onnx_ir as ir
    import onnxscript

    module.eval()
    meta_args = tuple(a.to("meta") for a in args)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        # optimize=False: the optimizer cannot run on meta initializers; it runs below
        program = torch.onnx.export(
            module, meta_args, dynamo=True, opset_version=opset, optimize=False, verbose=False,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic_shapes(spec, module),
        )
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned nothing for {spec.name}")
    model = program.model
    sources = {name: weights.source(p) for name, p in module.named_parameters()}
    # The optimizer runs while weight initializers have no value at all: it must neither try to
    # read a meta tensor nor read real weights (its de-duplication pass compares every
    # initializer's bytes, which for a 20-layer 7B segment would hold 8 GB at once).
    for name, value in model.graph.initializers.items():
        tensor = getattr(value.const_value, "raw", None)
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            if sources.get(name) is None:
                raise RuntimeError(f"{spec.name}: initializer {name!r} is not a checkpoint tensor")
            value.const_value = None
    with warnings.catch_warnings(), _quiet("onnx_ir", "onnxscript"):
        warnings.simplefilter("ignore")
        onnxscript.optimizer.optimize_ir(model)  # logs a warning per value-less initializer
    weight_bytes = 0
    for name, value in model.graph.initializers.items():
        if value.const_value is not None:
            continue  # a constant the exporter computed (it has real values)
        source = sources[name]
        value.const_value = ir.LazyTensor(lambda source=source: ir.tensor(weights.load(source).numpy()),
                                          dtype=value.dtype, shape=value.shape, name=name)
        weight_bytes += value.const_value.nbytes
    # which graph of which build this file is: the runtime refuses it anywhere else (runtime/manifest.py)
    identity = graph_identity(spec.to_dict(), _DTYPE_NAMES[weights.dtype])
    model.metadata_props[IDENTITY_KEY] = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    if weight_bytes > EXTERNAL_DATA_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data", max_workers=1)
    else:
        ir.save(model, path)
    return weight_bytes
