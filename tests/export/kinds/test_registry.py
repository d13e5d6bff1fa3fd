"""The graph-kind registry: a new kind is one entry, and export, validation and TensorRT profiles
take it from there without any other module knowing its name.

The kind added here, ``softmax`` (logits -> probabilities), is defined entirely in this file: its
spec, torch module, example inputs, validation cases, TensorRT axes and reference computation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.export.kinds import KINDS, graph_specs, kind_of, register, unregister
from transprune.export.kinds.base import Case, GraphKind
from transprune.export.specs import GraphSpec, TensorSpec


def softmax_spec(vocab: int) -> GraphSpec:
    return GraphSpec("softmax", "softmax", (TensorSpec("logits", "float32", ("batch", vocab)),),
                     (TensorSpec("probs", "float32", ("batch", vocab)),))


class Softmax(GraphKind):
    name = "softmax"

    def module(self, spec, weights, config):
        import torch

        class SoftmaxGraph(torch.nn.Module):
            def forward(self, logits):
                return torch.softmax(logits, dim=-1)

        return SoftmaxGraph()

    def validation_cases(self, graph, cases):
        for batch in (1, 3):
            yield Case(f"batch {batch}", {"logits": cases.randn(batch, cases.vocab).astype(np.float32)})

    def trt_axes(self, graph, phase, ctx):
        return {"batch": ctx.batch}

    def reference(self, graphs, name, t):
        import torch

        return {"probs": torch.softmax(t["logits"], dim=-1)}


@pytest.fixture
def softmax_kind():
    kind = register(Softmax())
    yield kind
    unregister(kind.name)


@pytest.fixture
def softmax_graph(softmax_kind, paper_build, tiny_checkpoint, tmp_path):
    """The softmax graph exported through the exporter's own path, and the tiny build with it added."""
    import onnxruntime as ort
    import torch

    from transprune.export.exporter import _concrete_dtypes
    from transprune.export.kinds.base import Examples
    from transprune.export.onnx_writer import export_graph
    from transprune.export.weights import CheckpointWeights, MetaWeights
    from transprune.runtime.build import Build, GraphInfo, _tensor

    build = Build.open(paper_build[0])
    spec = softmax_spec(build.manifest["model"]["facts"]["vocab_size"])
    weights = MetaWeights(CheckpointWeights(tiny_checkpoint), torch.float32)
    path = tmp_path / "softmax.onnx"
    args = Examples(torch.float32, n_image=build.n_image, image_token_id=build.image_token_id).inputs(softmax_kind, spec)
    export_graph(softmax_kind.module(spec, weights, None), spec, path, args=args, opset=18, weights=weights)
    entry = {**_concrete_dtypes(spec.to_dict(), "float32"), "file": path.name}
    info = GraphInfo(name=spec.name, kind=spec.kind, file=path, inputs=tuple(_tensor(t) for t in entry["inputs"]),
                     outputs=tuple(_tensor(t) for t in entry["outputs"]), attrs={}, layers=None)
    extended = dataclasses.replace(build, graphs={**build.graphs, spec.name: info})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return entry, extended, session


def test_a_new_kind_exports_and_validates_through_the_registry(softmax_graph, tiny_model):
    from transprune.export.validate import validate_graphs

    entry, build, session = softmax_graph

    def run(name, feeds):
        assert name == "softmax"
        return dict(zip(["probs"], session.run(None, feeds)))

    report = validate_graphs({"dtype": "fp32", "graphs": [entry]}, build=build, loaded=tiny_model,
                             schedule=build.schedule, run=run)
    assert report["softmax"]["cases"] == ["batch 1", "batch 3"]
    assert report["softmax"]["max_error"]["probs"] < 1e-6


def test_validation_of_a_new_kind_fails_when_its_graph_disagrees(softmax_graph, tiny_model):
    from transprune.export.validate import GraphMismatch, validate_graphs

    entry, build, session = softmax_graph

    def wrong(name, feeds):  # a broken export: every probability halved
        return {"probs": session.run(None, feeds)[0] / 2}

    with pytest.raises(GraphMismatch, match="graph 'softmax', output 'probs'"):
        validate_graphs({"dtype": "fp32", "graphs": [entry]}, build=build, loaded=tiny_model,
                        schedule=build.schedule, run=wrong)


def test_a_new_kind_gets_tensorrt_profiles_from_its_entry(softmax_graph):
    from transprune.export.tensorrt.profiles import ShapeLimits, graph_profiles

    _, build, _ = softmax_graph
    (profile,) = graph_profiles(build, build.graphs["softmax"], ShapeLimits(max_batch=4, max_text_tokens=64,
                                                                            max_new_tokens=16))
    vocab = build.manifest["model"]["facts"]["vocab_size"]
    logits = profile.input("logits")
    assert (profile.phase, logits.min, logits.opt, logits.max) == ("prefill", (1, vocab), (1, vocab), (4, vocab))


def test_the_registry_holds_every_kind_a_build_uses_and_refuses_unknown_ones(softmax_kind):
    from transprune.family import ModelFacts
    from transprune.schedule import preset

    facts = ModelFacts(hidden_size=64, num_layers=8, num_kv_heads=2, head_dim=16, vocab_size=100, image_size=56,
                       n_image=16, image_token_id=3)
    assert {spec.kind for spec in graph_specs(facts, preset("paper"))} <= set(KINDS)
    assert kind_of("softmax") is softmax_kind
    with pytest.raises(ValueError, match="registered already"):
        register(Softmax())
    with pytest.raises(TransPruneError, match="graph kind 'no-such-kind' is unknown"):
        kind_of("no-such-kind")


def test_a_module_whose_forward_differs_from_its_spec_is_refused_before_tracing():
    import torch

    from transprune.export.onnx_writer import dynamic_shapes

    class Swapped(torch.nn.Module):
        def forward(self, probs):
            return probs

    with pytest.raises(ValueError, match=r"forward takes \['probs'\] but the spec's inputs are \['logits'\]"):
        dynamic_shapes(softmax_spec(10), Swapped())
