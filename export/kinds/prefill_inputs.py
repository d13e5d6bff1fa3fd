"""The prefill-inputs graph: writes the image features into the image slots of the embedded
prompt and derives positions and where each sample's image starts (no weights)."""

from __future__ import annotations

from ..specs import GraphSpec, TensorSpec
from .base import Case, GraphKind


def spec(facts) -> GraphSpec:
    d = facts.hidden_size
    n = "image" if facts.anyres else facts.n_image
    return GraphSpec("prefill_inputs", "prefill_inputs",
                     (TensorSpec("embeddings", "float", ("batch", "seq", d)),
                      TensorSpec("input_ids", "int64", ("batch", "seq")),
                      TensorSpec("attention_mask", "int64", ("batch", "seq")),
                      TensorSpec("image_features", "float", ("batch", n, d))),
                     (TensorSpec("hidden", "float", ("batch", "seq", d)),
                      TensorSpec("position_ids", "int64", ("batch", "seq")),
                      TensorSpec("image_start", "int64", ("batch",))),
                     attrs={"image_token_id": facts.image_token_id})


class PrefillInputs(GraphKind):
    name = "prefill_inputs"

    def module(self, spec, weights, config):
        from ..graphs import PrefillInputsGraph

        return PrefillInputsGraph(config.image_token_id)

    def example_inputs(self, spec, ex):
        embeddings, _, _, features = spec.inputs
        batch, _, hidden = ex.shape(embeddings)
        seq = ex.n_image + 12  # the prompt must hold a whole image span
        return {"embeddings": ex.default(embeddings)[:, :1].expand(-1, seq, -1).contiguous(),
                "input_ids": ex.ids_with_image(batch, seq), "attention_mask": ex.ones((batch, seq)),
                "image_features": ex.default(features)}

    def validation_cases(self, graph, cases):
        n_image = cases.n_image
        for batch, prefix, suffix in ((1, 1, 0), (2, 5, 9), (1, 35, 200)):
            seq = prefix + n_image + suffix
            ids = cases.randint(0, cases.vocab, (batch, seq))
            ids[ids == cases.image_token_id] = 0
            ids[:, prefix:prefix + n_image] = cases.image_token_id
            yield Case(f"batch {batch}, {seq} tokens", {
                "embeddings": cases.randn(batch, seq, cases.hidden), "input_ids": ids,
                "attention_mask": cases.left_padded_mask(batch, seq, pad=min(prefix, 3)),
                "image_features": cases.randn(batch, n_image, cases.hidden)})

    def trt_axes(self, graph, phase, ctx):
        return {"batch": ctx.batch, "seq": ctx.prompt, "image": ctx.alive[0]}

    def reference(self, graphs, name, t):
        return graphs.prefill_inputs(name, t)
