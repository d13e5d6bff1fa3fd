"""Traces graph modules into ONNX IR models without weights, doing each distinct trace once.

Tracing (torch.export, then the decomposition to ATen's core ops) is nearly all of an export's
time, and most of it repeated the same work: every decoder layer of every segment is the same
computation on other weights, and a schedule's scorers differ only in which layer's weights they
read. A ``Tracer`` lives for one export and keeps what it traced by a key that names everything
the trace depends on; ``once`` returns a fresh copy of a model traced before, and segments are
composed from one traced layer (``export/layer_reuse.py``).

The traces are kept for the process, not only the build (a small bounded cache, keyed also by the
model's whole configuration, the example dtype, the opset and the torch and onnxscript versions):
exporting one model with several schedules or weight formats in one process (the benchmarks,
the test suite, a Python caller) traces each graph kind once. A trace holds no weights, so the
cache is the size of the graphs' structure (kilobytes for tiny, a few MB for a 7B layer). The
cache is not locked: exports in one process run one at a time. ``graph_canon`` proves the results
equal to whole-module traces (tests/export/test_layer_reuse.py).

The ONNX function registry (torchlib) is built once per process too: ``torch.onnx.export`` builds
it again for every graph (0.3-0.8 s each here). That uses the exporter's own entry point behind
``torch.onnx.export`` (torch is pinned exactly, pyproject.toml), and falls back to the public
function where it is not there.
"""

from __future__ import annotations

import collections
import json
import logging
import warnings
from typing import Callable, Hashable

import torch

from .specs import GraphSpec


def parameter_signature(module: torch.nn.Module) -> tuple:
    """(name, shape, dtype) of every parameter: with the module's class and settings, what its
    trace depends on (the weights' values are never read: they are on the meta device)."""
    return tuple((name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters())


_SHARED_TRACES: collections.OrderedDict = collections.OrderedDict()  # least recently used first
_MAX_SHARED_TRACES = 64
_registries: dict[int, object] = {}  # opset -> torchlib registry, built once per process


class Tracer:
    """Traces for one export. ``context`` is what every trace of the export depends on besides
    the module's structure (the model configuration, the example dtype): part of every key.
    ``shared=False`` keeps the traces to this tracer (the tests count real traces)."""

    def __init__(self, *, opset: int, context: Hashable = (), shared: bool = True) -> None:
        import onnxscript

        self.opset = opset
        self._context = (opset, torch.__version__, onnxscript.__version__, context)
        self._traced = _SHARED_TRACES if shared else collections.OrderedDict()
        self.traces = 0  # how many modules were really traced

    @classmethod
    def for_model(cls, *, opset: int, config, dtype, shared: bool = True) -> "Tracer":
        """A tracer for graphs of the model ``config`` (a transformers config) traced in ``dtype``."""
        return cls(opset=opset, shared=shared,
                   context=(json.dumps(config.to_dict(), sort_keys=True, default=str), str(dtype)))

    def trace(self, module: torch.nn.Module, spec: GraphSpec, args: tuple):
        """The optimised ONNX IR model of ``module`` fed ``args``, its weights value-less
        initializers named by the module's parameter names (``onnx_writer.write_graph`` fills them)."""
        import onnxscript

        from .onnx_writer import dynamic_shapes, quiet_loggers

        module.eval()
        meta_args = tuple(a.to("meta") for a in args)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            # optimize=False: the optimizer cannot run on meta initializers; it runs below
            program = self._export(module, meta_args, input_names=[t.name for t in spec.inputs],
                                   output_names=[t.name for t in spec.outputs],
                                   dynamic_shapes=dynamic_shapes(spec, module))
        if program is None:
            raise RuntimeError(f"torch.onnx.export returned nothing for {spec.name}")
        self.traces += 1
        model = program.model
        parameters = {name for name, _ in module.named_parameters()}
        # The optimizer runs while weight initializers have no value at all: it must neither try to
        # read a meta tensor nor read real weights (its de-duplication pass compares every
        # initializer's bytes, which for a 20-layer 7B segment would hold 8 GB at once).
        for name, value in model.graph.initializers.items():
            tensor = getattr(value.const_value, "raw", None)
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                if name not in parameters:
                    raise RuntimeError(f"{spec.name}: initializer {name!r} is not a checkpoint tensor")
                value.const_value = None
        with warnings.catch_warnings(), quiet_loggers("onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")
            onnxscript.optimizer.optimize_ir(model)  # logs a warning per value-less initializer
        return model

    def once(self, key: Hashable, make: Callable[[], object], *, copy: bool = True):
        """What ``make()`` gave for ``key``, made now if this is the first time; a copy of it with
        ``copy`` (a model to write: writing a graph changes it, weight layout and int4
        DequantizeLinear), else the thing itself (a layer pattern, only ever read)."""
        key = (self._context, key)
        if key in self._traced:
            self._traced.move_to_end(key)
        else:
            self._traced[key] = make()
            while len(self._traced) > _MAX_SHARED_TRACES:
                self._traced.popitem(last=False)
        found = self._traced[key]
        return found.clone() if copy else found

    def _export(self, module, args, **options):
        try:
            from torch.onnx._internal.exporter import _compat, _core, _dynamic_shapes, _registration
        except ImportError:  # another torch: the public function, which builds the registry itself
            return torch.onnx.export(module, args, dynamo=True, opset_version=self.opset, optimize=False,
                                     verbose=False, **options)
        if self.opset not in _registries:  # what torch.onnx.export builds: torchlib at no lower an opset than its own
            from torch.onnx._internal.exporter import _constants

            _registries[self.opset] = _registration.ONNXRegistry.from_torchlib(
                opset_version=max(self.opset, _constants.TORCHLIB_OPSET))
        args, kwargs = _compat._get_torch_export_args(args, None)
        named = options["dynamic_shapes"]
        options["dynamic_shapes"], rename = _dynamic_shapes.convert_str_to_export_dim(named)
        program = _core.export(module, args, kwargs, registry=_registries[self.opset], verbose=False, optimize=False,
                               opset_version=self.opset, **options)
        if rename:  # the graph's axes take the spec's names (batch, seq, ...), as torch.onnx.export does
            program._rename_dynamic_axes(named)
        return program
