"""Traces one graph module to ONNX from its spec (torch.onnx dynamo exporter, DESIGN §6)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch

from .builder import MetaWeights
from .specs import GraphSpec, TensorSpec

# Concrete sizes for tracing. Distinct values above 1 so torch.export keeps every named axis
# symbolic instead of specialising it (0/1 and equal sizes get specialised).
EXAMPLE_SIZES = {"batch": 2, "seq": 37, "past": 5, "total": 42, "alive": 23, "tiles": 3, "image": 29}
AXIS_RANGES = {"batch": (1, 64), "seq": (1, 8192), "past": (0, 8192), "total": (1, 16384), "alive": (1, 8192),
               "tiles": (1, 320), "image": (1, 8192)}
EXTERNAL_DATA_BYTES = 1 << 30  # graphs with more weights than this keep them in a .data file


def _dtype(spec: TensorSpec, model_dtype: torch.dtype) -> torch.dtype:
    return {"float": model_dtype, "float32": torch.float32, "int64": torch.int64}[spec.dtype]


def example_inputs(spec: GraphSpec, model_dtype: torch.dtype, *, n_image: int | None, image_token_id: int) -> tuple:
    """Plausible example tensors (the scorer needs a consistent image span and keep count).
    ``n_image`` None: the image-token count is the dynamic ``image`` axis (anyres builds)."""
    gen = torch.Generator().manual_seed(0)
    n_image = n_image or EXAMPLE_SIZES["image"]
    values = []
    for tensor in spec.inputs:
        shape = [EXAMPLE_SIZES[a] if isinstance(a, str) else a for a in tensor.axes]
        dtype = _dtype(tensor, model_dtype)
        if tensor.name == "keep":
            values.append(torch.tensor(EXAMPLE_SIZES["alive"] // 2, dtype=torch.int64))
        elif tensor.name == "image_start":
            values.append(torch.tensor([3, 4][: shape[0]], dtype=torch.int64))
        elif tensor.name == "alive":
            values.append(torch.arange(shape[1]).expand(shape[0], -1).contiguous())
        elif tensor.name == "pack_index":  # rows of the tiles' features, -1 for a newline
            rows = EXAMPLE_SIZES["tiles"] * spec.attrs["tile_tokens"]
            values.append(torch.randint(-1, rows, shape, generator=gen))
        elif tensor.name == "attention_mask":
            values.append(torch.ones(shape, dtype=torch.int64))
        elif tensor.name == "position_ids":
            values.append(torch.arange(shape[1]).expand(shape[0], -1).contiguous())
        elif tensor.name == "input_ids":
            ids = torch.randint(5, 50, shape, generator=gen)
            ids[:, 3 : 3 + n_image] = image_token_id
            values.append(ids)
        elif dtype == torch.int64:
            values.append(torch.zeros(shape, dtype=torch.int64))
        else:
            values.append(torch.randn(shape, generator=gen).to(dtype))
    if spec.kind == "prefill_inputs":  # the prompt must hold a whole image span
        seq = n_image + 12
        values = [v[:, :1].expand(-1, seq, *v.shape[2:]).contiguous() if i < 3 else v for i, v in enumerate(values)]
        values[1] = torch.randint(5, 50, (values[1].shape[0], seq), generator=gen)
        values[1][:, 3 : 3 + n_image] = image_token_id
    return tuple(values)


def dynamic_shapes(spec: GraphSpec, *, variadic_from: int | None = None):
    dims = {}

    def dim(name: str):
        if name not in dims:
            low, high = AXIS_RANGES[name]
            dims[name] = torch.export.Dim(name.replace(".", "_"), min=low, max=high)
        return dims[name]

    shapes = [{i: dim(a) for i, a in enumerate(t.axes) if isinstance(a, str)} for t in spec.inputs]
    if variadic_from is not None and len(shapes) > variadic_from:  # forward(a, b, *rest): rest is one tuple
        shapes = [*shapes[:variadic_from], tuple(shapes[variadic_from:])]
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
                 weights: MetaWeights, variadic_from: int | None = None) -> int:
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
            dynamic_shapes=dynamic_shapes(spec, variadic_from=variadic_from),
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
    if weight_bytes > EXTERNAL_DATA_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data", max_workers=1)
    else:
        ir.save(model, path)
    return weight_bytes
