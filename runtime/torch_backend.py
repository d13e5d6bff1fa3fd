"""The torch backend: every graph of a build computed by the PyTorch reference, for comparisons.

``TorchGraphs`` answers ``run(graph, feeds)`` with transformers' own modules driven through
``transprune.reference.TransPruneReference`` -- the same computation the exported graph was
traced from, in fp32. The exporter's validation compares each ONNX graph against it, and
``--backend torch`` runs the runtime's chain on it. Only this module (and only when chosen)
imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

from .backend import Backend
from .build import Build


class TorchGraphs:
    """``run(graph name, numpy feeds) -> numpy outputs`` for every graph of ``build``."""

    def __init__(self, reference, build: Build) -> None:
        import torch

        self.torch, self.ref, self.build = torch, reference, build
        if reference.schedule.to_dict() != build.schedule.to_dict() or \
                [tuple(s) for s in reference.segments] != [s.layers for s in build.segments]:
            raise TransPruneError("the reference's schedule differs from the build's; construct it from the "
                                  "manifest's schedule")
        self.segment_of = {s.name: s for s in build.segments}
        self.scorer_of = {s.name: s for s in build.scorers.values()}

    def run(self, graph: str, feeds: dict) -> dict:
        kind = self.build.graphs[graph].kind
        torch = self.torch
        tensors = {k: self._tensor(v) for k, v in feeds.items()}
        with torch.no_grad():
            out = getattr(self, kind)(graph, tensors)
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
                for k, v in out.items()}

    def _tensor(self, value):
        t = self.torch.from_numpy(np.ascontiguousarray(value))
        return t.float() if t.is_floating_point() else t

    # one method per graph kind --------------------------------------------------------------
    def vision(self, graph, t):
        if not self.build.anyres:
            return {"image_features": self.ref.image_features(t["pixel_values"])}
        # LLaVA-NeXT: every tile's features, then each image token takes the row pack_index names
        # (or the learned image_newline at -1); the chain's validation checks these plans end to
        # end against transformers' own unpadding and packing
        torch = self.torch
        tiles = self.ref.tile_features(t["pixel_values"])
        rows = torch.cat([tiles.flatten(0, 1), self.ref.model.model.image_newline[None].to(tiles.dtype)])
        index = t["pack_index"]
        return {"image_features": rows[torch.where(index < 0, rows.shape[0] - 1, index)]}

    def embed(self, graph, t):
        return {"embeddings": self.ref.lm.embed_tokens(t["input_ids"])}

    def prefill_inputs(self, graph, t):
        from transprune.masks import positions_from_mask
        from transprune.reference import locate_image_span

        ids = t["input_ids"]
        slots = (ids == self.build.image_token_id)[..., None]
        return {"hidden": t["embeddings"].masked_scatter(slots, t["image_features"]),
                "position_ids": positions_from_mask(t["attention_mask"]),
                "image_start": locate_image_span(ids, self.build.image_token_id, t["image_features"].shape[1])}

    def segment(self, graph, t):
        from transprune.masks import additive_causal_mask
        from transprune.reference import SegmentKVCache

        segment, ref = self.segment_of[graph], self.ref
        first, last = segment.layers
        hidden, key_mask = t["hidden"], t["attention_mask"]
        seq = hidden.shape[1]
        past = key_mask.shape[1] - seq
        cache = SegmentKVCache(ref.num_layers)
        for layer in range(first, last + 1):
            key, value = t[f"past_key.{layer}"], t[f"past_value.{layer}"]
            if key.shape[2] != past:
                raise TransPruneError(f"{graph}: past length {key.shape[2]} but the mask covers {past} past positions")
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
        for layer in range(first, last + 1):
            out[f"present_key.{layer}"], out[f"present_value.{layer}"] = cache.keys[layer - 1], cache.values[layer - 1]
        if segment.has_ttv:
            out["ttv"] = ttv
        return out

    def scorer(self, graph, t):
        from transprune.masks import additive_causal_mask, positions_from_mask

        torch, scorer = self.torch, self.scorer_of[graph]
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


class TorchBackend(Backend):
    """The build's graphs computed by the PyTorch reference, loaded from the checkpoint the build
    was exported from (or ``checkpoint``), in fp32."""

    name = "torch"

    def __init__(self, build: Build, *, checkpoint: str | Path | None = None, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise TransPruneError("the torch backend needs PyTorch and transformers (pip install "
                                  "'transprune[export]'); the onnxruntime backend needs neither") from None
        from transprune.checkpoints import load_llava
        from transprune.export.builder import model_facts
        from transprune.reference import TransPruneReference
        from transprune.schedule import Schedule

        super().__init__(build)
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
            raise TransPruneError(f"checkpoint {source} is not the model this build was exported from ({', '.join(differ)} "
                                  f"differ); pass the right one with --checkpoint")
        self.source = source
        reference = TransPruneReference(loaded.model, Schedule.from_dict(build.manifest["schedule"]))
        self.graphs = TorchGraphs(reference, build)

    def run(self, graph: str, feeds: dict) -> dict:
        return self.graphs.run(graph, feeds)
