"""The embedding graph: input_ids -> embeddings (prefill and every decode step)."""

from __future__ import annotations

from ..specs import GraphSpec, TensorSpec
from .base import Case, GraphKind


def spec(facts) -> GraphSpec:
    return GraphSpec("embed", "embed", (TensorSpec("input_ids", "int64", ("batch", "seq")),),
                     (TensorSpec("embeddings", "float", ("batch", "seq", facts.hidden_size)),))


class Embed(GraphKind):
    name = "embed"

    def module(self, spec, weights, config):
        from ..graphs import EmbedGraph

        return EmbedGraph(weights)

    def example_inputs(self, spec, ex):
        return {"input_ids": ex.ids_with_image(*ex.shape(spec.inputs[0]))}

    def validation_cases(self, graph, cases):
        for batch, seq in ((1, 1), (2, 13), (1, cases.n_image + 40)):
            yield Case(f"batch {batch}, {seq} tokens", {"input_ids": cases.randint(0, cases.vocab, (batch, seq))})

    def trt_axes(self, graph, phase, ctx):
        return {"batch": ctx.batch, "seq": ctx.prompt if phase == ctx.PREFILL else ctx.one}

    def reference(self, graphs, name, t):
        return graphs.embed(name, t)
