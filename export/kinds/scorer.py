"""Scorers: between two segments, score the image tokens still alive (TTV + IGA), keep the top
``keep`` of them in their original order, and compact the sequence (prefill only)."""

from __future__ import annotations

import numpy as np

from transprune.errors import TransPruneError
from transprune.schedule import Schedule

from ..specs import GraphSpec, TensorSpec
from .base import EXAMPLE_SIZES, Case, GraphKind


def spec(facts, schedule: Schedule, index: int) -> GraphSpec:
    """The scorer after segment ``index``."""
    d = facts.hidden_size
    first, last = schedule.segments(facts.num_layers)[index]
    keep = None if facts.anyres else schedule.keep_counts(facts.n_image)[index]
    inputs = [TensorSpec("hidden", "float", ("batch", "seq", d)),
              TensorSpec("position_ids", "int64", ("batch", "seq")),
              TensorSpec("attention_mask", "int64", ("batch", "seq")),
              TensorSpec("image_start", "int64", ("batch",)),
              TensorSpec("alive", "int64", ("batch", "alive")),
              TensorSpec("keep", "int64", ())]
    if schedule.uses_iga:  # IGA queries only the last query_rows positions (runtime.chain.query_rows)
        inputs.append(TensorSpec("query_rows", "int64", ()))
    outputs = [TensorSpec("hidden_out", "float", ("batch", "kept_seq", d)),
               TensorSpec("position_ids_out", "int64", ("batch", "kept_seq")),
               TensorSpec("attention_mask_out", "int64", ("batch", "kept_seq")),
               TensorSpec("kept", "int64", ("batch", "keep")),
               TensorSpec("score", "float32", ("batch", "alive"))]
    if schedule.uses_ttv:
        inputs += [TensorSpec("ttv_sum", "float32", ("batch", "alive")),
                   TensorSpec("ttv", "float32", ("batch", "seq"))]
        outputs.append(TensorSpec("ttv_sum_out", "float32", ("batch", "keep")))
    # the two normalised parts of the score, for explanations (transprune-explain); with one
    # criterion the score is that part itself (and a second output of the same tensor would
    # come out of the exporter under another name)
    if schedule.uses_ttv and schedule.uses_iga:
        outputs += [TensorSpec("ttv_score", "float32", ("batch", "alive")),
                    TensorSpec("iga_score", "float32", ("batch", "alive"))]
    has_ttv_in = schedule.uses_ttv and any(first <= l <= last for l in schedule.accumulate)
    return GraphSpec(f"scorer_{index}", "scorer", tuple(inputs), tuple(outputs),
                     attrs={"after_layer": last, "keep": keep, "keep_ratio": schedule.ratios[index],
                            "uses_ttv": schedule.uses_ttv, "uses_iga": schedule.uses_iga,
                            "ttv_from_segment": has_ttv_in, "alpha": schedule.alpha})


class Scorer(GraphKind):
    name = "scorer"

    def module(self, spec, weights, config):
        from transprune.family import text_config_dict

        from ..graphs import ScorerGraph

        a = spec.attrs
        return ScorerGraph(weights if a["uses_iga"] else None, next_layer=a["after_layer"] + 1,
                           text_config=text_config_dict(config), uses_ttv=a["uses_ttv"], uses_iga=a["uses_iga"],
                           alpha=a["alpha"])

    def onnx_model(self, spec, module, *, tracer, examples, weights, config):
        # the scorers of a schedule are one computation on another layer's q/k weights (or none):
        # traced once, by what the module is made of
        from ..tracing import parameter_signature

        a = spec.attrs
        key = ("scorer", spec.inputs, spec.outputs, a["uses_ttv"], a["uses_iga"], a["alpha"],
               parameter_signature(module))
        return tracer.once(key, lambda: tracer.trace(module, spec, examples.inputs(self, spec)))

    def example_inputs(self, spec, ex):
        batch, seq = ex.shape(spec.inputs[0])[:2]
        # a consistent image span and keep count: ``alive`` tokens from position 3 or 4, half kept
        examples = {"position_ids": ex.positions(batch, seq), "attention_mask": ex.ones((batch, seq)),
                    "image_start": ex.torch.tensor([3, 4][:batch], dtype=ex.torch.int64),
                    "alive": ex.positions(batch, EXAMPLE_SIZES["alive"]),
                    "keep": ex.torch.tensor(EXAMPLE_SIZES["alive"] // 2, dtype=ex.torch.int64)}
        if spec.attrs["uses_iga"]:  # the text after the earliest image span
            examples["query_rows"] = ex.torch.tensor(seq - 3 - EXAMPLE_SIZES["alive"], dtype=ex.torch.int64)
        return examples

    def validation_cases(self, graph, cases):
        from transprune.runtime.chain import query_rows

        scorer = next(s for s in cases.build.scorers.values() if s.name == graph.name)
        keep_counts = cases.build.keep_counts_for(cases.n_image)
        n_alive = cases.n_image if scorer.after_segment == 0 else keep_counts[scorer.after_segment - 1]
        # (batch, prefix, suffix, image span start per sample): the second sample is left-padded by
        # 3, and its image starts 2 later / 3 earlier, so its text after the image differs in length
        for batch, prefix, suffix, starts in ((2, 6, 5, (6, 8)), (2, 4, 20, (7, 4)), (1, 35, 60, (35,))):
            seq = prefix + n_alive + suffix
            key_mask = cases.left_padded_mask(batch, seq, pad=3)
            alive = np.stack([np.sort(cases.torch.randperm(cases.n_image, generator=cases.gen)[:n_alive].numpy())
                              for _ in range(batch)])
            image_start = np.array(starts, dtype=np.int64)
            feeds = {"hidden": cases.randn(batch, seq, cases.hidden), "position_ids": cases.positions(key_mask),
                     "attention_mask": key_mask, "image_start": image_start,
                     "alive": alive, "keep": np.array(keep_counts[scorer.after_segment], dtype=np.int64)}
            if scorer.uses_iga:
                feeds["query_rows"] = query_rows(seq, image_start, n_alive)
            if scorer.uses_ttv:
                feeds["ttv_sum"] = np.abs(cases.randn(batch, n_alive)).astype(np.float32)
                feeds["ttv"] = np.abs(cases.randn(batch, seq)).astype(np.float32)
            # fp16 may flip a near-tie in `kept`, and every other output follows it: scores only
            outputs = ("score", "kept") if cases.float_type == np.float16 else None
            yield Case(f"batch {batch}, {seq} tokens, {n_alive} image tokens alive", feeds, outputs=outputs)

    def trt_axes(self, graph, phase, ctx):
        image = ctx.alive[ctx.stage(graph)]  # what the segment before it saw
        return {"batch": ctx.batch, "seq": ctx.text.plus(image), "alive": image}

    def trt_values(self, graph, ctx):
        """``keep`` is TopK's K: its fixed count, or int(n * ratio) over the image range, which
        TensorRT needs below 3840. ``query_rows`` (IGA) is the text after the image span, 1 at
        least: up to the whole text, plus, when the image count varies (anyres), the room a
        smaller image leaves in the ``seq`` axis."""
        stage = ctx.stage(graph)
        keep = ctx.alive[stage + 1]
        if keep.max >= ctx.topk_k_limit:
            raise TransPruneError(f"{graph.name} keeps up to {keep.max} image tokens, but TensorRT's TopK needs K < "
                                  f"{ctx.topk_k_limit}; lower the first keep ratio for TensorRT builds")
        values = {"keep": keep}
        if any(t.name == "query_rows" for t in graph.inputs):
            image = ctx.alive[stage]
            values["query_rows"] = ctx.range(1, ctx.text.opt, ctx.text.max + image.max - image.min)
        return values

    def reference(self, graphs, name, t):
        return graphs.scorer(name, t)

    def describe(self, spec):
        keep = spec.attrs["keep"]
        return f"{spec.name} (after layer {spec.attrs['after_layer']}, keep " + (
            f"{keep})" if keep is not None else f"{spec.attrs['keep_ratio']:g} of each image's tokens)")
