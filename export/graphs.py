"""The torch modules traced into the build directory's ONNX graphs, one class per graph kind.

    pixels -> [vision] -> image features --+     (LLaVA-NeXT: tiles + pack index -> [vision])
    ids ----> [embed] -> embeddings -------+-> [prefill_inputs] -> hidden, positions, image start
                                                     |
         [segment 0] -(ttv)-> [scorer 0] -> [segment 1] -> ... -> [segment K] -> [head] -> logits

Each class is built from canonical weights (export.weights) for just its own layers, so the
exporter holds one graph's weights at a time. Shapes: B batch, S tokens, P past tokens, N image
tokens alive, D hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from transprune import scoring

from transprune.masks import additive_causal_mask, positions_from_mask

from .modules import DecoderLayer, RMSNorm, apply_rotary, linear, rotary


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        approximate = "none" if name == "gelu" else "tanh"
        return lambda x: nn.functional.gelu(x, approximate=approximate)
    raise ValueError(f"unsupported activation {name!r}")


class VisionGraph(nn.Module):
    """pixel_values [B, 3, H, W] -> image_features [B, N, D]: CLIP up to the feature layer, CLS
    dropped, then the multi-modal projector (LLaVA's 'default' feature selection)."""

    def __init__(self, weights: dict, *, vision_config: dict, feature_layer: int, projector_act: str) -> None:
        super().__init__()
        v = vision_config
        self.patch = nn.Conv2d(3, v["hidden_size"], v["patch_size"], v["patch_size"], bias=False)
        self.patch.weight = nn.Parameter(weights["vision.embeddings.patch_embedding.weight"], requires_grad=False)
        self.class_embedding = nn.Parameter(weights["vision.embeddings.class_embedding"], requires_grad=False)
        self.position = nn.Parameter(weights["vision.embeddings.position_embedding.weight"], requires_grad=False)
        eps = v.get("layer_norm_eps", 1e-5)
        self.pre_norm = self._layer_norm(weights, "vision.pre_layrnorm", eps)
        total = v["num_hidden_layers"]
        # hidden_states[0] is the embedding output, hidden_states[i] the output of layer i
        self.num_run = feature_layer % (total + 1) if feature_layer < 0 else feature_layer
        self.layers = nn.ModuleList()
        for i in range(self.num_run):
            p = f"vision.encoder.layers.{i}"
            block = nn.Module()
            block.norm1 = self._layer_norm(weights, f"{p}.layer_norm1", eps)
            block.q, block.k, block.v = (linear(weights, f"{p}.self_attn.{n}_proj") for n in "qkv")
            block.out = linear(weights, f"{p}.self_attn.out_proj")
            block.norm2 = self._layer_norm(weights, f"{p}.layer_norm2", eps)
            block.fc1, block.fc2 = linear(weights, f"{p}.mlp.fc1"), linear(weights, f"{p}.mlp.fc2")
            self.layers.append(block)
        self.heads = v["num_attention_heads"]
        self.act = _activation(v.get("hidden_act", "quick_gelu"))
        self.proj1, self.proj2 = linear(weights, "projector.linear_1"), linear(weights, "projector.linear_2")
        self.proj_act = _activation(projector_act)

    @staticmethod
    def _layer_norm(weights: dict, prefix: str, eps: float) -> nn.LayerNorm:
        norm = nn.LayerNorm(weights[f"{prefix}.weight"].shape[0], eps=eps, dtype=weights[f"{prefix}.weight"].dtype)
        norm.weight = nn.Parameter(weights[f"{prefix}.weight"], requires_grad=False)
        norm.bias = nn.Parameter(weights[f"{prefix}.bias"], requires_grad=False)
        return norm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values.to(self.patch.weight.dtype)).flatten(2).transpose(1, 2)  # [B, N, Dv]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.pre_norm(torch.cat([cls, x], dim=1) + self.position)
        batch, seq, width = x.shape
        head_dim = width // self.heads
        for block in self.layers:
            h = block.norm1(x)
            q, k, v = (proj(h).view(batch, seq, self.heads, head_dim).transpose(1, 2) for proj in (block.q, block.k, block.v))
            probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)).float() * head_dim ** -0.5, dim=-1).to(q.dtype)
            x = x + block.out(torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, width))
            x = x + block.fc2(self.act(block.fc1(block.norm2(x))))
        return self.proj2(self.proj_act(self.proj1(x[:, 1:])))


class AnyresVisionGraph(VisionGraph):
    """LLaVA-NeXT: pixel_values [T, 3, H, W] (every tile of the batch), pack_index [B, N] ->
    image_features [B, N, D]. The tiles go through the LLaVA-1.5 path; each image token then takes
    the feature row ``pack_index`` names in the stack of all tiles' features ([T * P, D]), or the
    learned ``image_newline`` where it is -1 -- transformers' unpadding and newline packing, as a
    gather whose index the runtime computes from the image size (runtime.anyres.packing_plan)."""

    def __init__(self, weights: dict, **options) -> None:
        super().__init__(weights, **options)
        self.newline = nn.Parameter(weights["image_newline"], requires_grad=False)

    def forward(self, pixel_values: torch.Tensor, pack_index: torch.Tensor) -> torch.Tensor:
        tiles = super().forward(pixel_values)
        rows = torch.cat([tiles.reshape(-1, tiles.shape[-1]), self.newline.to(tiles.dtype)[None]], dim=0)
        newline_row = rows.shape[0] - 1
        return rows[torch.where(pack_index < 0, newline_row, pack_index)]


class EmbedGraph(nn.Module):
    """input_ids [B, S] -> embeddings [B, S, D] (prefill and every decode step)."""

    def __init__(self, weights: dict) -> None:
        super().__init__()
        self.table = nn.Parameter(weights["text.embed_tokens.weight"], requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


class PrefillInputsGraph(nn.Module):
    """Writes image features into the image slots and derives positions (no weights).

    embeddings [B, S, D], input_ids [B, S], attention_mask [B, S], image_features [B, N, D]
    -> hidden [B, S, D], position_ids [B, S], image_start [B]
    """

    def __init__(self, image_token_id: int) -> None:
        super().__init__()
        self.image_token_id = image_token_id

    def forward(self, embeddings, input_ids, attention_mask, image_features):
        is_image = input_ids == self.image_token_id
        image_start = torch.argmax(is_image.to(torch.int32), dim=1)
        n_image = image_features.shape[1]
        offset = (torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] - image_start[:, None])
        index = scoring.clamp_index(offset, n_image - 1)[..., None].expand(-1, -1, image_features.shape[2])
        placed = torch.gather(image_features.to(embeddings.dtype), 1, index)
        hidden = torch.where(is_image[..., None], placed, embeddings)
        return hidden, positions_from_mask(attention_mask), image_start


class SegmentGraph(nn.Module):
    """Decoder layers first..last (1-based) for prefill (P = 0) and decode alike.

    hidden [B, S, D], position_ids [B, S], attention_mask [B, P+G+S], then per layer past
    key/value [B, Hkv, P, E] (the prompt's), then per layer gen key/value [B, Hkv, G, E] (the
    tokens generated since) -> hidden [B, S, D], the new tokens' key/value per layer
    [B, Hkv, S, E], and, when the segment has TTV accumulation layers, ttv [B, S] (their summed
    Token Transition Variation).

    The host keeps each cache in one buffer: the prompt's block, which prefill (P = G = 0) writes
    as its output, then a block with room for every token to be generated, filled one slot per
    decode step; ``attention_mask`` marks its slots not written yet with 0 (runtime/kv_pool.py).
    """

    def __init__(self, weights: dict, *, first: int, last: int, text_config: dict, ttv_layers: tuple[int, ...]) -> None:
        super().__init__()
        t = text_config
        self.head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        heads = dict(num_heads=t["num_attention_heads"],
                     num_kv_heads=t.get("num_key_value_heads") or t["num_attention_heads"], head_dim=self.head_dim)
        self.layer_numbers = list(range(first, last + 1))
        self.layers = nn.ModuleList(
            DecoderLayer(weights, f"text.layers.{n - 1}", eps=t["rms_norm_eps"], **heads) for n in self.layer_numbers
        )
        self.theta = t["rope_theta"]
        self.ttv_layers = set(ttv_layers)

    @property
    def has_ttv(self) -> bool:
        return bool(self.ttv_layers)

    def forward(self, hidden, position_ids, attention_mask, *caches):
        new_tokens = hidden.shape[1]
        cos, sin = rotary(position_ids, self.head_dim, self.theta, hidden.dtype)
        mask = additive_causal_mask(attention_mask, new_tokens, hidden.dtype)
        token_mask = attention_mask[:, -new_tokens:]
        half = len(caches) // 2
        past, gen = caches[:half], caches[half:]
        new_kv, ttv = [], None
        for i, (number, layer) in enumerate(zip(self.layer_numbers, self.layers)):
            want = number in self.ttv_layers
            cached = [(past[2 * i], past[2 * i + 1]), (gen[2 * i], gen[2 * i + 1])]
            hidden, key, value, layer_ttv = layer(hidden, cos, sin, mask, cached, token_mask, want)
            new_kv += [key, value]
            if want:
                ttv = layer_ttv if ttv is None else ttv + layer_ttv
        outputs = (hidden, *new_kv)
        return (*outputs, ttv) if self.has_ttv else outputs


class ScorerGraph(nn.Module):
    """Scores the alive image tokens after layer p and compacts the sequence (prefill only).

    hidden [B, S, D], position_ids [B, S], attention_mask [B, S], image_start [B],
    alive [B, N] (original indices), keep (0-d int64), with IGA: query_rows (0-d int64, T), and
    with TTV: ttv_sum [B, N], ttv [B, S]
    -> hidden [B, S', D], position_ids [B, S'], attention_mask [B, S'], kept [B, K] (original
       indices, ascending), score [B, N], and with TTV: ttv_sum [B, K]   (S' = S - N + K),
       then, with both criteria, the score's normalised parts: ttv_score [B, N], iga_score [B, N]
    IGA uses layer p+1's input norm and q/k projections (weights passed in for that layer only).
    Its queries are the last T rows only (T >= every sample's text after the image span; the rest
    weigh 0), its keys every row: the softmax runs over all keys.
    """

    def __init__(self, weights: dict | None, *, next_layer: int, text_config: dict, uses_ttv: bool,
                 uses_iga: bool, alpha: float) -> None:
        super().__init__()
        t = text_config
        self.uses_ttv, self.uses_iga, self.alpha = uses_ttv, uses_iga, alpha
        self.head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        self.num_heads = t["num_attention_heads"]
        self.num_kv_heads = t.get("num_key_value_heads") or self.num_heads
        self.theta = t["rope_theta"]
        if uses_iga:
            p = f"text.layers.{next_layer - 1}"
            self.norm = RMSNorm(weights[f"{p}.input_layernorm.weight"], t["rms_norm_eps"])
            self.q_proj = linear(weights, f"{p}.self_attn.q_proj")
            self.k_proj = linear(weights, f"{p}.self_attn.k_proj")

    def iga(self, hidden, position_ids, attention_mask, columns, instruction, rows):
        batch, seq, _ = hidden.shape
        start = seq - rows
        normed = self.norm(hidden)
        cos, sin = rotary(position_ids, self.head_dim, self.theta, hidden.dtype)
        k = self.k_proj(normed).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        k = apply_rotary(k, cos, sin)
        # only the trailing rows can be instruction tokens: no queries, logits or softmax for the rest
        q = self.q_proj(normed.narrow(1, start, rows)).view(batch, rows, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos.narrow(1, start, rows), sin.narrow(1, start, rows))
        mask = additive_causal_mask(attention_mask, rows, torch.float32)  # [B, 1, T, S]: the last T rows
        return scoring.instruction_attention(q, k, mask, instruction.narrow(1, start, rows), columns,
                                             self.head_dim ** -0.5)

    def forward(self, hidden, position_ids, attention_mask, image_start, alive, keep, *rest):
        seq, n_alive = hidden.shape[1], alive.shape[1]
        k = keep.item()
        torch._check(k >= 1)
        torch._check(k <= n_alive)
        ttv_inputs = rest
        if self.uses_iga:
            query_rows, *ttv_inputs = rest
            rows = query_rows.item()
            torch._check(rows >= 1)
            torch._check(rows <= seq)
        columns = image_start[:, None] + torch.arange(n_alive, device=hidden.device)[None, :]
        ttv_norm = iga_norm = None
        if self.uses_ttv:
            ttv_sum, ttv = ttv_inputs
            ttv_sum = ttv_sum + torch.gather(ttv, 1, columns)
            ttv_norm = scoring.normalise(ttv_sum)
        if self.uses_iga:
            after_image = torch.arange(seq, device=hidden.device)[None, :] >= (image_start + n_alive)[:, None]
            instruction = after_image & (attention_mask > 0)
            iga_norm = scoring.normalise(self.iga(hidden, position_ids, attention_mask, columns, instruction, rows))
        score = scoring.combine(ttv_norm, iga_norm, self.alpha)
        # TopK (ties -> lower index, ONNX's documented rule), then ascending to keep spatial order
        kept_local = torch.sort(torch.topk(score, k, dim=-1, sorted=True).indices, dim=-1).values
        index = scoring.kept_sequence_index(seq, image_start, n_alive, kept_local)
        hidden = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        attention_mask = torch.gather(attention_mask, 1, index)
        outputs = (hidden, positions_from_mask(attention_mask), attention_mask,
                   torch.gather(alive, 1, kept_local), score)
        if self.uses_ttv:
            outputs += (torch.gather(ttv_sum, 1, kept_local),)
        if self.uses_ttv and self.uses_iga:
            outputs += (ttv_norm, iga_norm)
        return outputs


class HeadGraph(nn.Module):
    """hidden [B, S, D] -> logits [B, V] of the last position (final norm + lm_head)."""

    def __init__(self, weights: dict, *, text_config: dict) -> None:
        super().__init__()
        self.norm = RMSNorm(weights["text.norm.weight"], text_config["rms_norm_eps"])
        self.lm_head = linear(weights, "lm_head")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden[:, -1])).float()
