"""The PyTorch reference: transformers' LlavaForConditionalGeneration with TransPrune in prefill.

Everything the exporter and runtime produce is checked against this module. It re-runs the
language model layer by layer with transformers' own submodules (norms, attention, MLP, rotary
embedding), so with schedule ``none`` it is plain transformers, and adds (docs/DESIGN.md §1):

    segment 0: layers 1..p1  --score+prune-->  segment 1: layers p1+1..p2  --> ... --> norm, lm_head

* TTV of the accumulation layers, summed over the image tokens alive, gathered with each prune;
* IGA from the NEXT layer's input norm and q/k projections on the current hidden states;
* after a prune the sequence is [prefix, kept image tokens, suffix] and positions are renumbered
  contiguously; a decoded token's position at segment s is its full position minus the tokens
  removed before s;
* the KV cache of a layer keeps whatever length its segment had in prefill (7 layers hold 576
  image tokens, 2 hold 504, ... for the paper schedule on LLaVA-1.5).

Batches are left-padded; every reduction is per sample and ignores padding.
Deliberate differences from the paper's reference code: per-sample TTV sums (it sums over the
whole batch), no TTV during decoding (it computes and discards it), no v_proj for IGA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import TransPruneError
from .family import family_of
from .generation import decode_loop
from .masks import additive_causal_mask, positions_from_mask
from .sampling import Sampler
from .schedule import Schedule
from . import scoring


class SegmentKVCache:
    """Per-layer keys/values; each layer grows independently, so lengths may differ by segment.

    Implements the one method transformers' attention calls on its cache: ``update``.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def length(self, layer_idx: int) -> int:
        key = self.keys[layer_idx]
        return 0 if key is None else key.shape[-2]


@dataclass
class PruneRecord:
    """What happened at one prune point (tensors are [B, N_before] or [B, keep])."""

    after_layer: int
    keep: int
    scored: torch.Tensor  # original image-token index of each token scored
    ttv: torch.Tensor | None  # normalised TTV of the scored tokens
    iga: torch.Tensor | None  # normalised IGA of the scored tokens
    score: torch.Tensor
    kept: torch.Tensor  # kept tokens as ORIGINAL image-token indices 0..n_image-1, ascending


@dataclass
class DecodeState:
    cache: SegmentKVCache
    key_masks: list[torch.Tensor]  # per segment [B, T_s]: 1 for real tokens, 0 for padding
    removed: list[int]  # image tokens removed before each segment
    next_position: torch.Tensor  # [B] full-sequence position of the next token


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, V] at the last prompt position
    records: list[PruneRecord]
    state: DecodeState


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # per sample, generated ids (EOS included when reached)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # [B, V] per step
    records: list[PruneRecord] = field(default_factory=list)


def locate_image_span(input_ids: torch.Tensor, image_token_id: int, n_image: int) -> torch.Tensor:
    """[B] start of each sample's image span; checks one contiguous run of n_image tokens."""
    is_image = input_ids == image_token_id
    counts = is_image.sum(-1)
    starts = is_image.long().argmax(-1)
    for b in range(input_ids.shape[0]):
        if int(counts[b]) != n_image:
            raise TransPruneError(
                f"sample {b} has {int(counts[b])} image tokens but the model produces {n_image} per "
                f"image; put exactly one image slot in the prompt (the processor expands it)"
            )
        span = is_image[b, int(starts[b]) : int(starts[b]) + n_image]
        if not bool(span.all()):
            raise TransPruneError(f"sample {b}: the image tokens are not one contiguous run")
    return starts


class TransPruneReference:
    """Prefill with progressive pruning and decoding over per-segment KV caches."""

    def __init__(self, model, schedule: Schedule) -> None:
        family = family_of(model.config)
        # LLaVA-NeXT: the image-token count depends on each image's size (anyres tiles), so it and
        # the keep counts are set per prefill from the prompt (n_image / keep_counts below are
        # those of the last prefill); LLaVA-1.5 always has one grid of patches.
        self.anyres = family.anyres
        self.model = model
        self.config = model.config
        self.lm = model.model.language_model
        self.num_layers = self.config.text_config.num_hidden_layers
        vision = self.config.vision_config
        self.schedule = schedule
        self.segments = schedule.segments(self.num_layers)
        self.accumulate = set(schedule.accumulate)
        self._set_image_tokens((vision.image_size // vision.patch_size) ** 2)

    def _set_image_tokens(self, n_image: int) -> None:
        self.schedule.check_model(num_layers=self.num_layers, n_image=n_image)
        self.n_image = n_image
        self.keep_counts = self.schedule.keep_counts(n_image)

    # -- building blocks ----------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """Token embeddings with the projected image features written into the image slots."""
        embeds = self.lm.embed_tokens(input_ids)
        features = self.image_features(pixel_values, image_sizes).to(embeds.dtype)
        slots = (input_ids == self.config.image_token_id)[..., None]
        return embeds.masked_scatter(slots, features)

    def image_features(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """pixel_values [B, 3, H, W] (NeXT: [B, tiles, 3, H, W] with ``image_sizes``) -> projected image
        features [B, N, D], through transformers' own path (NeXT: tiles unpadded, newlines added)."""
        extra = {"image_sizes": image_sizes} if self.anyres else {}
        if self.anyres and image_sizes is None:
            raise TransPruneError("a LLaVA-NeXT model needs image_sizes with its pixel_values")
        features = self.model.model.get_image_features(
            pixel_values=pixel_values.to(self.lm.embed_tokens.weight.dtype),
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy, **extra,
        ).pooler_output
        if isinstance(features, (list, tuple)):  # one [N, D] per image (equal counts were checked for NeXT)
            return torch.stack(list(features))
        return features.reshape(pixel_values.shape[0], -1, features.shape[-1])

    def tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """LLaVA-NeXT tiles [T, 3, H, W] -> projected features [T, P, D] of each tile, CLS dropped: the
        anyres path before transformers unpads and packs them (the exported vision graph's first part)."""
        inner = self.model.model
        out = inner.vision_tower(pixel_values.to(self.lm.embed_tokens.weight.dtype), output_hidden_states=True,
                                 return_dict=True)
        selected = out.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return inner.multi_modal_projector(selected)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D] -> logits [B, V] of the last position (final norm + lm_head)."""
        return self.model.lm_head(self.lm.norm(hidden[:, -1:]))[:, -1]

    def run_layer(self, index, hidden, rope, mask, cache, token_mask=None, want_ttv=False):
        """One decoder layer exactly as LlamaDecoderLayer.forward, exposing TTV's four tensors."""
        layer = self.lm.layers[index]
        attn_in = layer.input_layernorm(hidden)
        attn_out, _ = layer.self_attn(
            hidden_states=attn_in, position_embeddings=rope, attention_mask=mask, **{_cache_keyword(layer.self_attn): cache}
        )
        hidden = hidden + attn_out
        ffn_in = layer.post_attention_layernorm(hidden)
        ffn_out = layer.mlp(ffn_in)
        ttv = scoring.layer_ttv(attn_in, attn_out, ffn_in, ffn_out, token_mask) if want_ttv else None
        return hidden + ffn_out, ttv

    def iga(self, next_layer_index, hidden, rope, mask, image_columns, instruction):
        """IGA with layer p+1's input norm and q/k projections on the hidden states after layer p."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer = self.lm.layers[next_layer_index]
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden)
        batch, seq, _ = normed.shape
        q = attn.q_proj(normed).view(batch, seq, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(normed).view(batch, seq, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        return scoring.instruction_attention(q, k, mask, instruction, image_columns, attn.scaling)

    def prune(self, stage, hidden, key_mask, image_start, alive, ttv_sum, rope, mask, keep: int | None = None):
        """Scores the alive image tokens after segment ``stage`` and keeps the top ``keep`` (default:
        the schedule's count for this prefill's image).

        hidden [B, S, D], key_mask [B, S], image_start [B], alive [B, N] (original indices),
        ttv_sum [B, N] (TTV summed so far); rope and mask as the segment's last layer used them.
        Returns the compacted hidden [B, S', D], key_mask [B, S'], ttv_sum [B, keep] and the record.
        """
        last = self.segments[stage][1]
        keep = self.keep_counts[stage] if keep is None else keep
        n_alive = alive.shape[1]
        columns = image_start[:, None] + torch.arange(n_alive)
        ttv_part = scoring.normalise(ttv_sum) if self.schedule.uses_ttv else None
        iga_part = None
        if self.schedule.uses_iga:
            after_image = torch.arange(hidden.shape[1])[None, :] >= (image_start + n_alive)[:, None]
            instruction = after_image & key_mask.bool()
            iga_part = scoring.normalise(self.iga(last, hidden, rope, mask, columns, instruction))
        score = scoring.combine(ttv_part, iga_part, self.schedule.alpha)
        kept_local = scoring.select_kept(score, keep)
        index = scoring.kept_sequence_index(hidden.shape[1], image_start, n_alive, kept_local)
        record = PruneRecord(after_layer=last, keep=keep, scored=alive, ttv=ttv_part, iga=iga_part, score=score,
                             kept=torch.gather(alive, 1, kept_local))
        hidden = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        return hidden, torch.gather(key_mask, 1, index), torch.gather(ttv_sum, 1, kept_local), record

    # -- prefill and decode --------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, pixel_values, image_sizes=None) -> PrefillOutput:
        batch = input_ids.shape[0]
        if self.anyres:
            counts = (input_ids == self.config.image_token_id).sum(-1).unique()
            if len(counts) != 1:
                raise TransPruneError(f"LLaVA-NeXT images of this batch have {sorted(counts.tolist())} image tokens; "
                                      f"a batch needs images with equal counts (run them one at a time)")
            self._set_image_tokens(int(counts[0]))
        hidden = self.embed(input_ids, pixel_values, image_sizes)
        image_start = locate_image_span(input_ids, self.config.image_token_id, self.n_image)
        key_mask = attention_mask.long()
        cache = SegmentKVCache(self.num_layers)
        alive = torch.arange(self.n_image).expand(batch, -1)  # original index of each image token
        ttv_sum = torch.zeros(batch, self.n_image)
        records, key_masks, removed = [], [], []
        for stage, (first, last) in enumerate(self.segments):
            n_alive = alive.shape[1]
            columns = image_start[:, None] + torch.arange(n_alive)
            positions = positions_from_mask(key_mask)
            rope = self.lm.rotary_emb(hidden, positions)
            mask = additive_causal_mask(key_mask, hidden.shape[1], hidden.dtype)
            for layer in range(first, last + 1):
                want_ttv = self.schedule.uses_ttv and layer in self.accumulate
                hidden, ttv = self.run_layer(layer - 1, hidden, rope, mask, cache, key_mask, want_ttv)
                if ttv is not None:
                    ttv_sum += torch.gather(ttv, 1, columns)
            key_masks.append(key_mask)
            removed.append(self.n_image - n_alive)
            if stage == len(self.segments) - 1:
                break
            hidden, key_mask, ttv_sum, record = self.prune(
                stage, hidden, key_mask, image_start, alive, ttv_sum, rope, mask)
            records.append(record)
            alive = record.kept
        logits = self.head(hidden)
        state = DecodeState(cache, key_masks, removed, attention_mask.long().sum(-1))
        return PrefillOutput(logits=logits, records=records, state=state)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] -> logits [B, V]; appends one position to every layer's cache."""
        hidden = self.lm.embed_tokens(tokens[:, None])
        for stage, (first, last) in enumerate(self.segments):
            key_mask = torch.cat([state.key_masks[stage], torch.ones_like(tokens)[:, None]], dim=1)
            state.key_masks[stage] = key_mask
            positions = (state.next_position - state.removed[stage])[:, None]
            rope = self.lm.rotary_emb(hidden, positions)
            mask = additive_causal_mask(key_mask, 1, hidden.dtype)
            for layer in range(first, last + 1):
                hidden, _ = self.run_layer(layer - 1, hidden, rope, mask, state.cache)
        state.next_position = state.next_position + 1
        return self.head(hidden)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        *,
        max_new_tokens: int = 32,
        sampler: Sampler | None = None,
        eos_token_id: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        image_sizes=None,
    ) -> GenerationOutput:
        """Prefill, then decode until every sample hit EOS or max_new_tokens."""
        out = self.prefill(input_ids, attention_mask, pixel_values, image_sizes)
        tokens, step_logits = decode_loop(
            out.logits, lambda picked: self.decode_step(out.state, torch.from_numpy(picked)),
            batch=input_ids.shape[0], max_new_tokens=max_new_tokens, sampler=sampler,
            eos_token_id=eos_token_id, on_tokens=on_tokens, to_numpy=lambda logits: logits.float().numpy(),
        )
        return GenerationOutput(tokens=tokens, step_logits=step_logits, records=out.records)


def encode_inputs(processor, images: list, prompts: list[str]) -> dict:
    """Chat-templated, left-padded model inputs for (image, prompt) pairs, through the processor."""
    if len(images) != len(prompts):
        raise TransPruneError(f"{len(images)} images but {len(prompts)} prompts; pair them one to one")
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True,
        )
        for prompt in prompts
    ]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def _cache_keyword(attention) -> str:
    """The name transformers' attention takes the KV cache by: ``cache`` from 5.25 on (it warns,
    once per call, that ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(attention.forward).parameters else "past_key_values"
