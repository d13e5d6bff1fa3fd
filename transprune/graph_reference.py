"""Every graph of a build computed by the PyTorch reference: the oracle of export validation and
the engine behind ``--backend torch``.

``ReferenceGraphs.run(graph, feeds)`` answers numpy feeds with numpy outputs, computed by
transformers' own modules driven through ``transprune.reference.TransPruneReference`` -- the
same computation each exported graph was traced from, in fp32. There is one method per graph
kind, named after the kind; the exporter's graph-kind registry (``transprune.export.kinds``)
points each kind at its method, and ``run`` finds it by the graph's kind.

It reads a build through the attributes the runtime's ``Build`` has (segments, scorers, graph
kinds) without importing the runtime: the core imports neither the runtime nor the exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import TransPruneError
from .masks import additive_causal_mask, positions_from_mask
from .reference import SegmentKVCache, TransPruneReference, locate_image_span
from .schedule import Schedule

# compute(graphs, graph name, {input: tensor}) -> {output: tensor}
Compute = Callable[["ReferenceGraphs", str, dict], dict]


class ReferenceGraphs:
    """``run(graph name, numpy feeds) -> numpy outputs`` for every graph of ``build``."""

    def __init__(self, reference: TransPruneReference, build) -> None:
        self.ref, self.build = reference, build
        if reference.schedule.to_dict() != build.schedule.to_dict() or \
                [tuple(s) for s in reference.segments] != [s.layers for s in build.segments]:
            raise TransPruneError("the reference's schedule differs from the build's; construct it from the "
                                  "manifest's schedule")
        self.segment_of = {s.name: s for s in build.segments}
        self.scorer_of = {s.name: s for s in build.scorers.values()}

    def run(self, graph: str, feeds: dict, compute: Compute | None = None) -> dict:
        """Runs ``graph`` on numpy ``feeds``; ``compute`` defaults to the method named after its kind."""
        if compute is None:
            method = getattr(type(self), self.build.graphs[graph].kind, None)
            if method is None:
                raise TransPruneError(f"graph {graph!r} has kind {self.build.graphs[graph].kind!r}, which the "
                                      f"PyTorch reference does not compute")
            compute = method
        tensors = {k: _tensor(v) for k, v in feeds.items()}
        with torch.no_grad():
            out = compute(self, graph, tensors)
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
                for k, v in out.items()}

    # one method per graph kind ------------------------------------------------------------------
    def vision(self, graph, t):
        if not self.build.anyres:
            return {"image_features": self.ref.image_features(t["pixel_values"])}
        # LLaVA-NeXT: every tile's features, then each image token takes the row pack_index names
        # (or the learned image_newline at -1); the chain's validation checks these plans end to
        # end against transformers' own unpadding and packing
        tiles = self.ref.tile_features(t["pixel_values"])
        rows = torch.cat([tiles.flatten(0, 1), self.ref.model.model.image_newline[None].to(tiles.dtype)])
        index = t["pack_index"]
        return {"image_features": rows[torch.where(index < 0, rows.shape[0] - 1, index)]}

    def embed(self, graph, t):
        return {"embeddings": self.ref.lm.embed_tokens(t["input_ids"])}

    def prefill_inputs(self, graph, t):
        ids = t["input_ids"]
        slots = (ids == self.build.image_token_id)[..., None]
        return {"hidden": t["embeddings"].masked_scatter(slots, t["image_features"]),
                "position_ids": positions_from_mask(t["attention_mask"]),
                "image_start": locate_image_span(ids, self.build.image_token_id, t["image_features"].shape[1])}

    def segment(self, graph, t):
        segment, ref = self.segment_of[graph], self.ref
        first, last = segment.layers
        hidden, key_mask = t["hidden"], t["attention_mask"]
        seq = hidden.shape[1]
        past = key_mask.shape[1] - seq
        cache = SegmentKVCache(ref.num_layers)
        # the segment's cache triples in layer order, key then value (the manifest's ``kv``): the
        # prompt block and the generated block, one after the other, are this layer's past
        triples = list(zip(segment.kv[0::2], segment.kv[1::2]))
        for layer, ((past_key, gen_key, _), (past_value, gen_value, _)) in zip(range(first, last + 1), triples):
            key = torch.cat([t[past_key], t[gen_key]], dim=2)
            value = torch.cat([t[past_value], t[gen_value]], dim=2)
            if key.shape[2] != past:
                raise TransPruneError(f"{graph}: cached length {key.shape[2]} but the mask covers {past} past positions")
            if past:
                cache.update(key, value, layer - 1)
        rope = ref.lm.rotary_emb(hidden, t["position_ids"])
        mask = additive_causal_mask(key_mask, seq, hidden.dtype)
        ttv_layers = set(segment.graph.attrs["ttv_layers"]) if segment.has_ttv else set()
        ttv = None
        for layer in range(first, last + 1):
            hidden, layer_ttv = ref.run_layer(layer - 1, hidden, rope, mask, cache, key_mask[:, past:],
                                              layer in ttv_layers)
            if layer_ttv is not None:
                ttv = layer_ttv if ttv is None else ttv + layer_ttv
        out = {"hidden_out": hidden}
        for layer, ((_, _, new_key), (_, _, new_value)) in zip(range(first, last + 1), triples):  # new tokens only
            out[new_key], out[new_value] = cache.keys[layer - 1][:, :, past:], cache.values[layer - 1][:, :, past:]
        if segment.has_ttv:
            out["ttv"] = ttv
        return out

    def scorer(self, graph, t):
        # IGA builds also feed query_rows; not read: every row is a query here, non-instruction rows weigh 0
        scorer = self.scorer_of[graph]
        hidden, key_mask, image_start, alive = t["hidden"], t["attention_mask"], t["image_start"], t["alive"]
        ttv_sum = t["ttv_sum"] if scorer.uses_ttv else torch.zeros(alive.shape)
        if scorer.uses_ttv:  # this segment's TTV of the alive image tokens joins the running sum
            ttv_sum = ttv_sum + torch.gather(t["ttv"], 1, image_start[:, None] + torch.arange(alive.shape[1]))
        rope = self.ref.lm.rotary_emb(hidden, t["position_ids"])
        mask = additive_causal_mask(key_mask, hidden.shape[1], hidden.dtype)
        hidden, key_mask, ttv_sum, record = self.ref.prune(scorer.after_segment, hidden, key_mask, image_start,
                                                           alive, ttv_sum, rope, mask, keep=int(t["keep"]))
        out = {"hidden_out": hidden, "position_ids_out": positions_from_mask(key_mask),
               "attention_mask_out": key_mask, "kept": record.kept, "score": record.score}
        if scorer.uses_ttv:
            out["ttv_sum_out"] = ttv_sum
        if record.ttv is not None and record.iga is not None:
            out["ttv_score"], out["iga_score"] = record.ttv, record.iga
        return out

    def head(self, graph, t):
        return {"logits": self.ref.head(t["hidden"])}


def _tensor(value) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(value))
    return t.float() if t.is_floating_point() else t


def open_reference_graphs(build, *, checkpoint: str | Path | None = None,
                          threads: int | None = None) -> ReferenceGraphs:
    """The reference for ``build``, loaded from the checkpoint it was exported from (or
    ``checkpoint``), checked to be that model (its facts equal the manifest's)."""
    from .checkpoints import load_llava
    from .family import model_facts

    if threads:
        torch.set_num_threads(threads)
    model = build.manifest["model"]
    source = str(checkpoint) if checkpoint else model.get("checkpoint") or model["id"]
    if not checkpoint and model.get("checkpoint") and not Path(model["checkpoint"]).is_dir():
        source = model["id"]  # the build was copied away from its checkpoint: try the model name
    loaded = load_llava(source)
    facts = model_facts(loaded.model.config).__dict__
    differ = sorted(k for k, v in model["facts"].items() if facts.get(k) != v)
    if differ:
        raise TransPruneError(f"checkpoint {source} is not the model this build was exported from "
                              f"({', '.join(differ)} differ); pass the right one with --checkpoint")
    reference = TransPruneReference(loaded.model, Schedule.from_dict(build.manifest["schedule"]))
    return ReferenceGraphs(reference, build)
