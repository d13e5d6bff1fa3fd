"""The chain loop: prefill through vision, segments and scorers, then decode. numpy only.

This is the whole of what a host does between "pixels + token ids" and "logits"; every
computation is inside the graphs. The exporter's validation and the runtime share this loop.
Graphs are called through ``run(graph_name, feeds) -> {output_name: array}``, so any backend
(onnxruntime, TensorRT, the torch reference) can sit behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from transprune.generation import decode_loop
from transprune.sampling import Sampler

RunGraph = Callable[[str, dict], dict]


@dataclass
class StageResult:
    after_layer: int
    keep: int
    kept: np.ndarray  # [B, keep] original image-token indices, ascending
    score: np.ndarray  # [B, N] combined score of the tokens scored


@dataclass
class ChainState:
    caches: list[dict]  # per segment: {past input name: array}
    key_masks: list[np.ndarray]  # per segment [B, T_s]
    removed: list[int]
    next_position: np.ndarray  # [B]


@dataclass
class ChainOutput:
    tokens: list[list[int]]
    step_logits: list[np.ndarray] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)


class Chain:
    """Runs a build's graphs in order. ``graphs`` is the manifest's list of graph entries."""

    def __init__(self, graphs: list[dict], run: RunGraph, *, n_image: int) -> None:
        self.run = run
        self.n_image = n_image
        self.segments = [g for g in graphs if g["kind"] == "segment"]
        self.scorers = {i: g for i, g in enumerate(g for g in graphs if g["kind"] == "scorer")}
        # (past input spec, present output name) pairs per segment, read once from the manifest
        self.kv = []
        for segment in self.segments:
            inputs = {t["name"]: t for t in segment["inputs"]}
            self.kv.append([(inputs[past], present) for past, present in segment["attrs"]["kv"]])

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray):
        batch = input_ids.shape[0]
        features = self.run("vision", {"pixel_values": pixel_values})["image_features"]
        embeddings = self.run("embed", {"input_ids": input_ids})["embeddings"]
        prepared = self.run("prefill_inputs", {"embeddings": embeddings, "input_ids": input_ids,
                                               "attention_mask": attention_mask, "image_features": features})
        hidden, positions, image_start = prepared["hidden"], prepared["position_ids"], prepared["image_start"]
        mask = attention_mask
        alive = np.tile(np.arange(self.n_image, dtype=np.int64), (batch, 1))
        ttv_sum = np.zeros((batch, self.n_image), dtype=np.float32)
        state = ChainState([], [], [], attention_mask.sum(-1).astype(np.int64))
        stages = []
        for index, segment in enumerate(self.segments):
            feeds = {"hidden": hidden, "position_ids": positions, "attention_mask": mask}
            for t, _ in self.kv[index]:
                _, heads, _, head_dim = t["axes"]
                feeds[t["name"]] = np.zeros((batch, heads, 0, head_dim), dtype=hidden.dtype)
            out = self.run(segment["name"], feeds)
            state.caches.append({t["name"]: out[present] for t, present in self.kv[index]})
            state.key_masks.append(mask)
            state.removed.append(self.n_image - alive.shape[1])
            hidden = out["hidden_out"]
            scorer = self.scorers.get(index)
            if scorer is None:
                continue
            feeds = {"hidden": hidden, "position_ids": positions, "attention_mask": mask,
                     "image_start": image_start, "alive": alive,
                     "keep": np.array(scorer["attrs"]["keep"], dtype=np.int64)}
            if scorer["attrs"]["uses_ttv"]:
                feeds["ttv_sum"] = ttv_sum
                feeds["ttv"] = out.get("ttv", np.zeros(hidden.shape[:2], dtype=np.float32))
            result = self.run(scorer["name"], feeds)
            hidden, positions, mask = result["hidden_out"], result["position_ids_out"], result["attention_mask_out"]
            alive = result["kept"]
            ttv_sum = result.get("ttv_sum_out", ttv_sum)
            stages.append(StageResult(scorer["attrs"]["after_layer"], scorer["attrs"]["keep"], alive, result["score"]))
        logits = self.run("head", {"hidden": hidden})["logits"]
        return logits, stages, state

    def decode_step(self, state: ChainState, tokens: np.ndarray) -> np.ndarray:
        hidden = self.run("embed", {"input_ids": tokens[:, None].astype(np.int64)})["embeddings"]
        ones = np.ones((tokens.shape[0], 1), dtype=np.int64)
        for index, segment in enumerate(self.segments):
            state.key_masks[index] = np.concatenate([state.key_masks[index], ones], axis=1)
            positions = (state.next_position - state.removed[index])[:, None]
            feeds = {"hidden": hidden, "position_ids": positions, "attention_mask": state.key_masks[index],
                     **state.caches[index]}
            out = self.run(segment["name"], feeds)
            state.caches[index] = {t["name"]: out[present] for t, present in self.kv[index]}
            hidden = out["hidden_out"]
        state.next_position = state.next_position + 1
        return self.run("head", {"hidden": hidden})["logits"]

    def generate(self, input_ids, attention_mask, pixel_values, *, max_new_tokens: int,
                 sampler: Sampler | None = None, eos_token_id: int | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None) -> ChainOutput:
        logits, stages, state = self.prefill(input_ids, attention_mask, pixel_values)
        tokens, step_logits = decode_loop(
            logits, lambda picked: self.decode_step(state, picked), batch=input_ids.shape[0],
            max_new_tokens=max_new_tokens, sampler=sampler, eos_token_id=eos_token_id, on_tokens=on_tokens,
        )
        return ChainOutput(tokens=tokens, step_logits=step_logits, stages=stages)
