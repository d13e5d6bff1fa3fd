"""The chain loop: prefill through vision, segments and scorers, then decode. numpy only.

This is the whole of what a host does between "pixels + token ids" and "logits"; every
computation is inside the graphs, every cache inside the backend. The exporter's validation, the
runtime and the benchmarks share this loop, whatever backend runs the graphs.

Pruning shortens the sequence between segments, so each segment has its own KV cache length, its
own key mask (one column per cached position) and its own position numbering: a decoded token
sits at its full position minus the image tokens pruned before that segment (``position_shift``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from transprune.errors import TransPruneError
from transprune.generation import decode_loop, decode_steps
from transprune.sampling import Sampler

from .backend import Backend, KVCache
from .build import Build


def query_rows(seq: int, image_start: np.ndarray, n_alive: int) -> np.ndarray:
    """A scorer's ``query_rows`` input (0-d int64): how many trailing positions hold some sample's
    text after its image span (samples are left-padded, so every sample ends at ``seq``), at least
    1. IGA's queries are those rows only; a row that is not instruction text for a sample weighs 0."""
    return np.array(max(1, int(seq - np.min(image_start) - n_alive)), dtype=np.int64)


@dataclass
class StageResult:
    after_layer: int
    keep: int
    scored: np.ndarray  # [B, N] original image-token indices of the tokens scored (ascending)
    score: np.ndarray  # [B, N] their combined score
    kept: np.ndarray  # [B, keep] original image-token indices kept, ascending
    ttv: np.ndarray | None = None  # [B, N] the score's normalised TTV part (builds exported with it)
    iga: np.ndarray | None = None  # [B, N] the score's normalised IGA part


@dataclass
class ChainState:
    caches: list[KVCache]  # per segment, owned by the backend
    key_masks: list[np.ndarray]  # per segment [B, T_s]: 1 real token, 0 left padding
    next_position: np.ndarray  # [B] full-sequence position of the next token
    position_shifts: list[int] = field(default_factory=list)  # per segment: image tokens pruned before it


@dataclass
class Timings:
    """Seconds spent per graph in prefill, and per decode step."""

    prefill: dict[str, float] = field(default_factory=dict)
    decode: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Milliseconds, rounded: {graph: ms, ..., prefill_total, decode_per_token, decode_steps}."""
        out = {name: round(s * 1e3, 3) for name, s in self.prefill.items()}
        out["prefill_total"] = round(sum(self.prefill.values()) * 1e3, 3)
        out["decode_steps"] = len(self.decode)
        out["decode_per_token"] = round(float(np.median(self.decode)) * 1e3, 3) if self.decode else None
        return out


@dataclass
class ChainOutput:
    tokens: list[list[int]]
    step_logits: list[np.ndarray] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


def _score_parts(scorer, result: dict) -> tuple:
    """(TTV part, IGA part) of a scorer's score: its own outputs with both criteria, the score
    itself with one, None for builds exported before scorers output them."""
    if scorer.uses_ttv and scorer.uses_iga:
        return result.get("ttv_score"), result.get("iga_score")
    return (result["score"], None) if scorer.uses_ttv else (None, result["score"])


class Chain:
    """Runs ``build``'s graphs in order on ``backend``."""

    def __init__(self, build: Build, backend: Backend) -> None:
        self.build, self.backend = build, backend
        self.timings = Timings()

    def _timed(self, name: str, call: Callable, *args):
        started = time.perf_counter()
        out = call(*args)
        self.timings.prefill[name] = self.timings.prefill.get(name, 0.0) + time.perf_counter() - started
        return out

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray, *,
                max_new_tokens: int = 1, pack_index: np.ndarray | None = None):
        """-> (logits [B, V] of the last prompt position, stage results, state for decoding).

        Caches are sized for ``max_new_tokens`` more positions. Anyres (LLaVA-NeXT) builds take every
        image's tiles as ``pixel_values`` and their ``pack_index`` (runtime.inputs.ImageInputs); the
        image-token count, and with it what each prune keeps, then follows the images.
        """
        build, backend, run = self.build, self.backend, self.backend.run
        self.timings = Timings()
        backend.start_generation()
        batch = input_ids.shape[0]
        vision_feeds = {"pixel_values": pixel_values}
        if build.anyres:
            if pack_index is None:
                raise TransPruneError("an anyres (LLaVA-NeXT) build needs the pack_index of its tiles; prepare "
                                      "images with transprune.runtime.inputs.ImageInputs")
            vision_feeds["pack_index"] = pack_index
        features = self._timed("vision", run, "vision", vision_feeds)["image_features"]
        n_image = features.shape[1]
        keep_counts = iter(build.keep_counts_for(n_image))
        slots = (input_ids == build.image_token_id).sum(-1)
        if np.any(slots != n_image):
            raise TransPruneError(f"the prompts hold {slots.tolist()} image tokens but the images give {n_image} "
                                  f"each; expand each prompt's image slot to its image's count")
        embeddings = self._timed("embed", run, "embed", {"input_ids": input_ids})["embeddings"]
        prepared = self._timed("prefill_inputs", run, "prefill_inputs", {
            "embeddings": embeddings, "input_ids": input_ids, "attention_mask": attention_mask,
            "image_features": features})
        hidden, positions, image_start = prepared["hidden"], prepared["position_ids"], prepared["image_start"]
        mask = attention_mask
        # which ORIGINAL image tokens are still in the sequence, and their running TTV sums
        alive = np.tile(np.arange(n_image, dtype=np.int64), (batch, 1))
        ttv_sum = np.zeros((batch, n_image), dtype=np.float32)
        state = ChainState([], [], attention_mask.sum(-1).astype(np.int64))
        stages = []
        for segment in build.segments:
            shift = n_image - alive.shape[1]
            if segment.position_shift is not None and shift != segment.position_shift:
                raise TransPruneError(f"{segment.name}: {shift} image tokens were pruned "
                                      f"before it, the manifest says {segment.position_shift}; re-export the build")
            state.position_shifts.append(shift)
            cache = backend.new_cache(segment, batch=batch, capacity=hidden.shape[1] + max_new_tokens)
            out = self._timed(segment.name, backend.run_segment, segment,
                              {"hidden": hidden, "position_ids": positions, "attention_mask": mask}, cache)
            state.caches.append(cache)
            state.key_masks.append(mask)
            hidden = out["hidden_out"]
            scorer = build.scorers.get(segment.index)
            if scorer is None:
                continue
            keep = next(keep_counts)
            feeds = {"hidden": hidden, "position_ids": positions, "attention_mask": mask,
                     "image_start": image_start, "alive": alive, "keep": np.array(keep, dtype=np.int64)}
            if any(t.name == "query_rows" for t in scorer.graph.inputs):  # absent in builds exported before it
                feeds["query_rows"] = query_rows(hidden.shape[1], image_start, alive.shape[1])
            if scorer.uses_ttv:
                feeds["ttv_sum"] = ttv_sum
                feeds["ttv"] = out.get("ttv", np.zeros(hidden.shape[:2], dtype=np.float32))
            result = self._timed(scorer.name, run, scorer.name, feeds)
            stages.append(StageResult(scorer.after_layer, keep, alive, result["score"], result["kept"],
                                      *_score_parts(scorer, result)))
            hidden, positions, mask = result["hidden_out"], result["position_ids_out"], result["attention_mask_out"]
            alive = result["kept"]
            ttv_sum = result.get("ttv_sum_out", ttv_sum)
        logits = self._timed("head", run, "head", {"hidden": hidden})["logits"]
        return logits, stages, state

    def decode_step(self, state: ChainState, tokens: np.ndarray) -> np.ndarray:
        """tokens [B] -> logits [B, V]; every segment's cache and key mask grow by one position."""
        started = time.perf_counter()
        run = self.backend.run
        hidden = run("embed", {"input_ids": tokens[:, None].astype(np.int64)})["embeddings"]
        ones = np.ones((tokens.shape[0], 1), dtype=np.int64)
        for segment, cache in zip(self.build.segments, state.caches):
            key_mask = state.key_masks[segment.index] = np.concatenate([state.key_masks[segment.index], ones], axis=1)
            positions = (state.next_position - state.position_shifts[segment.index])[:, None]
            out = self.backend.run_segment(segment, {"hidden": hidden, "position_ids": positions,
                                                     "attention_mask": key_mask}, cache)
            hidden = out["hidden_out"]
        state.next_position = state.next_position + 1
        logits = run("head", {"hidden": hidden})["logits"]
        self.timings.decode.append(time.perf_counter() - started)
        return logits

    def steps(self, input_ids, attention_mask, pixel_values, *, max_new_tokens: int,
              sampler: Sampler | None = None, eos_token_id: int | None = None,
              pack_index: np.ndarray | None = None) -> Iterator:
        """Prefill, then yield ``(picked [B], active [B] bool, logits)`` per generated position
        (``active``: the sample had not reached EOS before this step). ``self.stages`` holds the
        prefill's stage results once the first step is out."""
        logits, self.stages, state = self.prefill(input_ids, attention_mask, pixel_values,
                                                  max_new_tokens=max_new_tokens, pack_index=pack_index)
        yield from decode_steps(logits, lambda picked: self.decode_step(state, picked), batch=input_ids.shape[0],
                                max_new_tokens=max_new_tokens, sampler=sampler, eos_token_id=eos_token_id)

    def generate(self, input_ids, attention_mask, pixel_values, *, max_new_tokens: int,
                 sampler: Sampler | None = None, eos_token_id: int | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None,
                 pack_index: np.ndarray | None = None) -> ChainOutput:
        logits, stages, state = self.prefill(input_ids, attention_mask, pixel_values, max_new_tokens=max_new_tokens,
                                             pack_index=pack_index)
        tokens, step_logits = decode_loop(
            logits, lambda picked: self.decode_step(state, picked), batch=input_ids.shape[0],
            max_new_tokens=max_new_tokens, sampler=sampler, eos_token_id=eos_token_id, on_tokens=on_tokens,
        )
        return ChainOutput(tokens=tokens, step_logits=step_logits, stages=stages, timings=self.timings)
