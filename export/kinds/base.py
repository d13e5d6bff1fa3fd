"""What a graph kind defines, and the small toolkits its definitions use.

A ``GraphKind`` says everything the exporter and the TensorRT planner need to know about one kind
of graph (vision, embed, prefill_inputs, segment, scorer, head, or a new one):

    spec(...)                    its inputs/outputs (names, dtypes, named axes) -- on the kind module
    module(spec, weights, config)  the torch module traced into ONNX, on shape-only weights
    onnx_model(spec, module, ...)  its traced ONNX model (default: a trace of ``module``; a kind
                                 whose graphs repeat reuses traces, ``export/tracing.py``)
    example_inputs(spec, ex)     example tensors for tracing, by input name
    validation_cases(graph, c)   inputs at several sizes, checked against the reference
    trt_axes(graph, phase, ctx)  a TensorRT (min, opt, max) range per named axis and phase
    trt_values(graph, ctx)       ranges of shape-tensor *values* (a scorer's keep count)
    reference(graphs, name, t)   the PyTorch computation it must equal (transprune.graph_reference)
    describe(spec)               the progress label

The toolkits (``Examples`` for tracing, ``CaseMaker`` and ``Case`` for validation) carry what is
shared between kinds, so a kind's definition reads as the few lines that are its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..specs import GraphSpec

# Concrete sizes for tracing. Distinct values above 1 so torch.export keeps every named axis
# symbolic instead of specialising it (0/1 and equal sizes get specialised).
EXAMPLE_SIZES = {"batch": 2, "seq": 37, "past": 5, "gen": 11, "total": 53, "alive": 23, "tiles": 3, "image": 29}


class GraphKind:
    """One kind of graph. Subclasses override what differs from these defaults."""

    name: str = "?"

    def module(self, spec: GraphSpec, weights, config):
        raise NotImplementedError(f"graph kind {self.name!r} has no module factory")

    def onnx_model(self, spec: GraphSpec, module, *, tracer, examples: "Examples", weights, config):
        """The optimised ONNX IR model of ``spec``, weights as value-less initializers named by
        ``module``'s parameters (``onnx_writer.write_graph`` fills them): traced once per
        spec and parameter shapes (``export/tracing.py``)."""
        import json

        from ..tracing import parameter_signature

        key = (self.name, json.dumps(spec.to_dict(), sort_keys=True), parameter_signature(module))
        return tracer.once(key, lambda: tracer.trace(module, spec, examples.inputs(self, spec)))

    def example_inputs(self, spec: GraphSpec, ex: "Examples") -> dict:
        """Example tensors by input name; inputs left out get ``ex.default``."""
        return {}

    def validation_cases(self, graph, cases: "CaseMaker") -> Iterator["Case"]:
        raise NotImplementedError(f"graph kind {self.name!r} has no validation cases")

    def trt_axes(self, graph, phase: str, ctx) -> dict:
        raise NotImplementedError(f"graph kind {self.name!r} has no TensorRT profile")

    def trt_values(self, graph, ctx) -> dict:
        """{input name: Range} of the inputs TensorRT reads as shape-tensor values."""
        return {}

    def reference(self, graphs, name: str, tensors: dict) -> dict:
        """The PyTorch computation the graph must equal: ``graphs`` is a
        ``transprune.graph_reference.ReferenceGraphs``; torch tensors in and out, by name."""
        raise NotImplementedError(f"graph kind {self.name!r} has no reference computation")

    def describe(self, spec: GraphSpec) -> str:
        return spec.name


class Examples:
    """Example tensors for tracing one graph: seeded, at ``EXAMPLE_SIZES``."""

    def __init__(self, dtype, *, n_image: int | None, image_token_id: int) -> None:
        import torch

        self.torch, self.dtype, self.image_token_id = torch, dtype, image_token_id
        self.n_image = n_image or EXAMPLE_SIZES["image"]  # None: the dynamic ``image`` axis (anyres)
        self.gen = torch.Generator().manual_seed(0)

    def shape(self, tensor) -> list[int]:
        return [EXAMPLE_SIZES[a] if isinstance(a, str) else a for a in tensor.axes]

    def default(self, tensor):
        """Random model-dtype floats, or zeros for integer inputs."""
        shape = self.shape(tensor)
        if tensor.dtype == "int64":
            return self.torch.zeros(shape, dtype=self.torch.int64)
        dtype = self.dtype if tensor.dtype == "float" else self.torch.float32
        return self.torch.randn(shape, generator=self.gen).to(dtype)

    def positions(self, batch: int, seq: int):
        return self.torch.arange(seq).expand(batch, -1).contiguous()

    def ones(self, shape):
        return self.torch.ones(shape, dtype=self.torch.int64)

    def ids_with_image(self, batch: int, seq: int):
        """Token ids with one whole image span at position 3."""
        ids = self.torch.randint(5, 50, (batch, seq), generator=self.gen)
        ids[:, 3 : 3 + self.n_image] = self.image_token_id
        return ids

    def inputs(self, kind: GraphKind, spec: GraphSpec) -> tuple:
        """The example tensors of every input of ``spec``, in its order."""
        chosen = kind.example_inputs(spec, self)
        unknown = set(chosen) - {t.name for t in spec.inputs}
        if unknown:
            raise ValueError(f"{spec.name}: example inputs {sorted(unknown)} are not inputs of the spec")
        return tuple(chosen[t.name] if t.name in chosen else self.default(t) for t in spec.inputs)


@dataclass
class Case:
    label: str
    feeds: dict  # numpy inputs of the graph (model-dtype floats already cast)
    rows: dict | None = None  # output name prefix -> [B, T] bool: compare only these tokens (real, not padding)
    outputs: tuple | None = None  # compare only these outputs (None: all)


class CaseMaker:
    """Random validation inputs for one build (the reference computes what they should give)."""

    def __init__(self, build, float_type, *, n_image: int) -> None:
        import torch

        self.torch, self.build, self.float_type = torch, build, float_type
        facts = build.manifest["model"]["facts"]
        self.hidden, self.image_size = facts["hidden_size"], facts["image_size"]
        self.image_token_id, self.vocab = facts["image_token_id"], facts["vocab_size"]
        self.gen = torch.Generator().manual_seed(1234)
        self.n_image = n_image  # image tokens of the image the cases are made for

    def randn(self, *shape, scale=1.0) -> np.ndarray:
        """Random floats in the build's dtype (both sides see exactly these values)."""
        return (self.torch.randn(*shape, generator=self.gen) * scale).numpy().astype(self.float_type)

    def randint(self, low: int, high: int, shape) -> np.ndarray:
        return self.torch.randint(low, high, shape, generator=self.gen).numpy()

    def left_padded_mask(self, batch: int, length: int, pad: int) -> np.ndarray:
        mask = np.ones((batch, length), dtype=np.int64)
        if batch > 1:
            mask[1, :pad] = 0  # the second sample is shorter (left padding)
        return mask

    def positions(self, key_mask: np.ndarray) -> np.ndarray:
        """Position ids of left-padded rows (what the chain derives from the mask)."""
        from transprune.masks import positions_from_mask

        return positions_from_mask(self.torch.from_numpy(key_mask)).numpy()
