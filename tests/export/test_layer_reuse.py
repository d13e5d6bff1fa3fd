"""export/layer_reuse.py and export/tracing.py: a segment composed from one traced layer is the
graph a trace of the whole segment gives (graph_canon's canonical form), and a build traces
each distinct graph once."""

from __future__ import annotations

import pytest

from transprune.schedule import Schedule


def _written_form(model, spec, weights, module, tmp_path):
    """The canonical form of ``model`` written as the exporter writes it (weights streamed in)."""
    from transprune.export.graph_canon import load_form
    from transprune.export.onnx_writer import parameter_sources, write_graph

    path = tmp_path / f"{spec.name}-{len(list(tmp_path.iterdir()))}.onnx"
    write_graph(model, spec, path, sources=parameter_sources(module, weights), weights=weights)
    return load_form(path)


@pytest.mark.parametrize("schedule", [
    # layers 1-3 with TTV on 2 and 3: a non-TTV layer copied from a TTV layer's pattern, and a TTV sum
    Schedule(accumulate=(2, 3, 4, 5), prune=(3, 5), ratios=(0.5, 0.25), criterion="ttv+iga"),
    # no TTV at all: the pattern of a layer without it
    Schedule(prune=(2,), ratios=(0.5,), criterion="iga"),
], ids=["mixed-ttv", "no-ttv"])
def test_a_composed_segment_is_the_whole_segment_trace(schedule, tiny_checkpoint, tmp_path):
    import torch

    from transprune.export.kinds import graph_specs, kind_of
    from transprune.export.kinds.base import Examples
    from transprune.export.tracing import Tracer
    from transprune.export.weights import CheckpointWeights, MetaWeights
    from transprune.family import model_facts
    from transprune.presets import model_preset

    config = model_preset("tiny").family.transformers_class("config").from_pretrained(tiny_checkpoint, local_files_only=True)
    facts = model_facts(config)
    weights = MetaWeights(CheckpointWeights(tiny_checkpoint), torch.float32)
    spec = next(s for s in graph_specs(facts, schedule) if s.name == "segment_0")
    assert spec.layers[1] - spec.layers[0] >= 1  # more than one layer, or nothing is composed
    kind = kind_of("segment")
    examples = Examples(torch.float32, n_image=facts.n_image, image_token_id=facts.image_token_id)
    module = kind.module(spec, weights, config)

    # the process's traces: the session's tiny builds have usually traced this layer already
    tracer = Tracer.for_model(opset=18, config=config, dtype=torch.float32)
    composed = kind.onnx_model(spec, module, tracer=tracer, examples=examples, weights=weights, config=config)
    assert tracer.traces <= 1  # at most one layer traced, whatever the segment's length
    whole = Tracer(opset=18, shared=False).trace(module, spec, examples.inputs(kind, spec))

    composed_form = _written_form(composed, spec, weights, module, tmp_path)
    whole_form = _written_form(whole, spec, weights, module, tmp_path)
    assert composed_form.differences(whole_form) == []
    assert len(composed_form.nodes) == len(whole_form.nodes) > 100
