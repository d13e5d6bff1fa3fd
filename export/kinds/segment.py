"""Decoder segments: the layers between two prune points, for prefill (no cache) and decode
alike. A segment that ends at a prune point also outputs the summed TTV of its accumulation
layers, which the scorer after it reads.

Each layer's cache comes in as two blocks, the prompt's (``past_*``) and the generated tokens'
(``gen_*``), and only the new tokens' keys/values go out (``new_*``): the host keeps one buffer per
cache holding both blocks and writes the new ones into it (runtime/kv_pool.py)."""

from __future__ import annotations

from transprune.schedule import Schedule

from ..specs import GraphSpec, TensorSpec
from .base import EXAMPLE_SIZES, Case, GraphKind


def kv_names(layer: int) -> list[tuple[str, str, str]]:
    """(prompt block input, generated block input, new output) of one layer's key, then value: the
    only place they are spelled."""
    return [(f"past_{part}.{layer}", f"gen_{part}.{layer}", f"new_{part}.{layer}") for part in ("key", "value")]


def spec(facts, schedule: Schedule, index: int) -> GraphSpec:
    """Segment ``index`` of the schedule: its layers, caches and (before a prune) TTV output."""
    d = facts.hidden_size
    segments = schedule.segments(facts.num_layers)
    first, last = segments[index]
    before_prune = index < len(segments) - 1
    ttv_layers = tuple(l for l in schedule.accumulate if first <= l <= last) if schedule.uses_ttv else ()
    kv = [pair for layer in range(first, last + 1) for pair in kv_names(layer)]

    def cache(name: str, length_axis: str) -> TensorSpec:
        return TensorSpec(name, "float", ("batch", facts.num_kv_heads, length_axis, facts.head_dim))

    inputs = [TensorSpec("hidden", "float", ("batch", "seq", d)),
              TensorSpec("position_ids", "int64", ("batch", "seq")),
              TensorSpec("attention_mask", "int64", ("batch", "total")),
              *(cache(past, "past") for past, _, _ in kv), *(cache(gen, "gen") for _, gen, _ in kv)]
    outputs = [TensorSpec("hidden_out", "float", ("batch", "seq", d)), *(cache(new, "seq") for _, _, new in kv)]
    if ttv_layers and before_prune:
        outputs.append(TensorSpec("ttv", "float32", ("batch", "seq")))
    # a decoded token's position in this segment: its full position minus the image tokens pruned
    # before the segment (the cached sequence here is that much shorter); anyres: per image
    if index == 0:
        shift = 0
    elif facts.anyres:
        shift = None
    else:
        shift = facts.n_image - schedule.keep_counts(facts.n_image)[index - 1]
    return GraphSpec(f"segment_{index}", "segment", tuple(inputs), tuple(outputs), layers=(first, last),
                     attrs={"ttv_layers": list(ttv_layers) if before_prune else [],
                            "kv": [list(pair) for pair in kv], "position_shift": shift})


def _one_layer(spec: GraphSpec, number: int, wants_ttv: bool) -> GraphSpec:
    """The spec of a segment of layer ``number`` alone (a layer pattern, export/layer_reuse.py)."""
    own = {name for triple in kv_names(number) for name in triple}
    inputs = tuple(t for t in spec.inputs if "." not in t.name or t.name in own)
    outputs = tuple(t for t in spec.outputs if (t.name != "ttv" and "." not in t.name) or t.name in own)
    if wants_ttv:
        outputs += (TensorSpec("ttv", "float32", ("batch", "seq")),)
    return GraphSpec(f"{spec.name}.layer_{number}", "segment", inputs, outputs, layers=(number, number),
                     attrs={"ttv_layers": [number] if wants_ttv else [], "kv": [list(p) for p in kv_names(number)],
                            "position_shift": spec.attrs["position_shift"]})


class Segment(GraphKind):
    name = "segment"

    def module(self, spec, weights, config):
        from transprune.family import text_config_dict

        from ..graphs import SegmentGraph

        first, last = spec.layers
        return SegmentGraph(weights, first=first, last=last, text_config=text_config_dict(config),
                            ttv_layers=tuple(spec.attrs["ttv_layers"]))

    def onnx_model(self, spec, module, *, tracer, examples, weights, config):
        # one traced layer, copied for every layer (export/layer_reuse.py): a TTV layer's where the
        # segment has TTV layers
        from ..layer_reuse import LayerPattern, compose_segment
        from ..tracing import parameter_signature

        first, last = spec.layers
        ttv = [n for n in range(first, last + 1) if n in set(spec.attrs["ttv_layers"])]
        number = ttv[0] if ttv else first
        layer_spec = _one_layer(spec, number, bool(ttv))
        layer = self.module(layer_spec, weights, config)
        key = ("layer", bool(ttv), layer_spec.inputs[:3], parameter_signature(layer))
        pattern = tracer.once(key, lambda: LayerPattern.of(
            tracer.trace(layer, layer_spec, examples.inputs(self, layer_spec)), layer=number), copy=False)
        return compose_segment(spec, pattern)

    def example_inputs(self, spec, ex):
        batch, seq = ex.shape(spec.inputs[0])[:2]
        total = EXAMPLE_SIZES["past"] + EXAMPLE_SIZES["gen"] + seq  # the mask covers both blocks and the new tokens
        return {"position_ids": ex.positions(batch, seq), "attention_mask": ex.ones([batch, total])}

    def validation_cases(self, graph, cases):
        segment = next(s for s in cases.build.segments if s.name == graph.name)
        # prefill with a whole image span, one decode step over a long prompt, a short chunk, and a
        # decode step as the runtime makes it: over the prompt's block and a generated block whose
        # last slots are not written yet (mask 0)
        for batch, seq, past, gen, unwritten in ((2, cases.n_image + 30, 0, 0, 0), (2, 1, cases.n_image + 29, 0, 0),
                                                 (1, 17, 5, 0, 0), (2, 1, cases.n_image + 29, 9, 6)):
            key_mask = cases.left_padded_mask(batch, past + gen + seq, pad=3)
            key_mask[:, past + gen - unwritten:past + gen] = 0
            feeds = {"hidden": cases.randn(batch, seq, cases.hidden),
                     "position_ids": cases.positions(key_mask)[:, past + gen:], "attention_mask": key_mask}
            for past_name, gen_name, _ in segment.kv:
                feeds[past_name] = cases.randn(batch, segment.kv_heads, past, segment.head_dim)
                feeds[gen_name] = cases.randn(batch, segment.kv_heads, gen, segment.head_dim)
            # padding rows attend to nothing; their values are never read, so only real tokens count
            rows = {"": key_mask[:, past + gen:] > 0}
            label = (f"batch {batch}, {seq} new tokens, {past} past" +
                     (f", {gen} generated ({unwritten} not written)" if gen else ""))
            yield Case(label, feeds, rows=rows)

    def trt_axes(self, graph, phase, ctx):
        image = ctx.alive[ctx.segment(graph).index]
        if phase == ctx.PREFILL:
            seq = ctx.text.plus(image)
            return {"batch": ctx.batch, "seq": seq, "past": ctx.fixed(0), "gen": ctx.fixed(0), "total": seq}
        # the prompt's block, then the generated block: room for every token of the answer (the
        # runtime sizes it at prefill; its slots not written yet are masked). A host that keeps the
        # generated block at its exact length (scripts/standalone_chain.py) starts it empty: min 0
        past = ctx.text.plus(image)
        gen = ctx.range(0, ctx.generated.opt, ctx.generated.max)
        return {"batch": ctx.batch, "seq": ctx.one, "past": past, "gen": gen, "total": past.plus(gen).plus(1)}

    def reference(self, graphs, name, t):
        return graphs.segment(name, t)

    def describe(self, spec):
        return f"{spec.name} (layers {spec.layers[0]}-{spec.layers[1]})"
