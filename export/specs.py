"""The declarative spec of one graph: names, dtypes and named axes of every input and output.

The same specs drive the ONNX export (dynamic shapes), the manifest, validation, TensorRT
profiles and the runtime's feeds, so a tensor's name and axes are written down exactly once.
Each kind's spec is made by its module in ``export/kinds/``; ``kinds.graph_specs`` lists a
build's graphs in chain order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" (the model dtype), "int64", "float32"
    axes: tuple  # each an int (fixed) or a str (named dynamic axis)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # also the file stem: <name>.onnx
    kind: str  # a registered graph kind (export/kinds): vision | embed | prefill_inputs | segment | scorer | head
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[int, int] | None = None  # decoder layers (1-based, inclusive) a segment runs
    attrs: dict = field(default_factory=dict)  # kind-specific facts (prune layer, TTV layers, ...)

    def to_dict(self) -> dict:
        return asdict(self)
