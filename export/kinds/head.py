"""The head graph: final norm and lm_head on the last position -> logits."""

from __future__ import annotations

from ..specs import GraphSpec, TensorSpec
from .base import Case, GraphKind


def spec(facts) -> GraphSpec:
    return GraphSpec("head", "head", (TensorSpec("hidden", "float", ("batch", "seq", facts.hidden_size)),),
                     (TensorSpec("logits", "float32", ("batch", facts.vocab_size)),))


class Head(GraphKind):
    name = "head"

    def module(self, spec, weights, config):
        from transprune.family import text_config_dict

        from ..graphs import HeadGraph

        return HeadGraph(weights, text_config=text_config_dict(config))

    def validation_cases(self, graph, cases):
        for batch, seq in ((1, 1), (2, 7), (1, 40)):
            yield Case(f"batch {batch}, {seq} tokens", {"hidden": cases.randn(batch, seq, cases.hidden)})

    def trt_axes(self, graph, phase, ctx):
        # prefill: the prompt as the last segment left it
        return {"batch": ctx.batch, "seq": ctx.text.plus(ctx.alive[-1]) if phase == ctx.PREFILL else ctx.one}

    def reference(self, graphs, name, t):
        return graphs.head(name, t)
