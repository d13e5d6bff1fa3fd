"""TransPrune's scores as small pure tensor functions (docs/DESIGN.md §1), batched, per sample.

Shapes: B batch, S sequence, D hidden, N image tokens currently alive, H/Hkv heads, E head dim.
Every reduction that the paper's reference code does over "all tokens in the tensor" (which
silently mixes the batch) is done per sample here, and padding (token_mask == 0) is excluded.

These functions are the single definition of the math: the PyTorch reference calls them, and the
exporter traces them into the ONNX scorer graphs.
"""

from __future__ import annotations

import torch

NORMALISE_EPS = 1e-8  # the paper's +1e-8 in every "normalise to sum 1" denominator
COSINE_EPS = 1e-8


def transition_weight(before: torch.Tensor, after: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token Transition Variation of one (before, after) pair.

    before, after: [B, S, D] -> [B, S]
        w = (|after| / |before|) * exp(1 - cos(before, after)) / sum_over_tokens exp(1 - cos)
    The magnitude term says how much the block rescaled the token, the direction term how much it
    turned it; the direction term is normalised over the sample's tokens (padding excluded).
    Computed in fp32 whatever the model dtype.
    """
    before, after = before.float(), after.float()
    norm_before = torch.linalg.vector_norm(before, dim=-1)
    norm_after = torch.linalg.vector_norm(after, dim=-1)
    cosine = (before * after).sum(-1) / (norm_before * norm_after).clamp_min(COSINE_EPS)
    turn = torch.exp(1.0 - cosine)
    if token_mask is not None:
        turn = turn * token_mask.to(turn.dtype)
    return (norm_after / norm_before) * turn / turn.sum(-1, keepdim=True)


def layer_ttv(
    attn_before: torch.Tensor,
    attn_after: torch.Tensor,
    ffn_before: torch.Tensor,
    ffn_after: torch.Tensor,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """TTV of one decoder layer: attention pair + FFN pair. [B, S, D] x 4 -> [B, S]."""
    return transition_weight(attn_before, attn_after, token_mask) + transition_weight(ffn_before, ffn_after, token_mask)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N] summing to 1 per sample (+1e-8 in the denominator, as published)."""
    return scores / (scores.sum(-1, keepdim=True) + NORMALISE_EPS)


def instruction_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    additive_mask: torch.Tensor,
    query_weight: torch.Tensor,
    image_columns: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Instruction-Guided Attention, un-normalised: how much the instruction attends to each image token.

    query:         [B, H, Q, E]  RoPE'd queries of the query rows (instruction tokens, maybe more)
    key:           [B, Hkv, S, E] RoPE'd keys of every token
    additive_mask: [B, 1, Q, S]  0 where a query may attend, a large negative number elsewhere
    query_weight:  [B, Q]        1 for instruction-token rows, 0 for rows that are not queries
    image_columns: [B, N]        sequence index of each alive image token
    -> [B, N]: softmax over keys (fp32), mean over heads, image columns, mean over queries.
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    key = key.repeat_interleave(heads // kv_heads, dim=1)  # grouped-query attention
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling + additive_mask.float()
    probs = torch.softmax(logits, dim=-1).mean(dim=1)  # [B, Q, S]
    index = image_columns[:, None, :].expand(-1, probs.shape[1], -1)
    on_image = torch.gather(probs, 2, index)  # [B, Q, N]
    weight = query_weight.float()
    return (on_image * weight[..., None]).sum(1) / weight.sum(-1, keepdim=True).clamp_min(1.0)


def combine(ttv_norm: torch.Tensor | None, iga_norm: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """score = alpha * TTV_norm + (1 - alpha) * IGA_norm, from already normalised parts.

    Either part may be absent (the ``ttv`` and ``iga`` criteria); the score is then that part.
    """
    if ttv_norm is None and iga_norm is None:
        raise ValueError("combine() needs a TTV or an IGA score")
    if iga_norm is None:
        return ttv_norm
    if ttv_norm is None:
        return iga_norm
    return alpha * ttv_norm + (1.0 - alpha) * iga_norm


def select_kept(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Top-`keep` image tokens per sample, indices sorted ascending (spatial order kept).

    [B, N] -> [B, keep] int64. Ties break toward the lower index (a stable descending sort), which
    is also ONNX TopK's documented tie rule, so the exported scorer agrees with this function.
    """
    if not 1 <= keep <= score.shape[-1]:
        raise ValueError(f"keep={keep} is outside 1..{score.shape[-1]}")
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :keep]
    return torch.sort(order, dim=-1).values


def clamp_index(index: torch.Tensor, high) -> torch.Tensor:
    """index clamped to 0..high with Max/Min: an integer clamp exports as an int64 Clip, which
    TensorRT does not parse (its Clip takes floating types only)."""
    return torch.minimum(torch.maximum(index, torch.zeros_like(index)), torch.full_like(index, 0) + high)


def kept_sequence_index(seq_len: int, image_start: torch.Tensor, n_image: int, kept: torch.Tensor) -> torch.Tensor:
    """Sequence positions that survive a prune: [prefix, kept image tokens, suffix].

    image_start: [B] first image position per sample (samples may be left-padded differently)
    kept:        [B, K] kept image tokens, indices into the current image span
    -> [B, seq_len - n_image + K]; text tokens (and padding) are never dropped.
    """
    batch, keep = kept.shape
    new_len = seq_len - n_image + keep
    j = torch.arange(new_len, device=kept.device).expand(batch, -1)
    start = image_start[:, None]
    image_part = start + torch.gather(kept, 1, clamp_index(j - start, keep - 1))
    suffix_part = j + (n_image - keep)
    return torch.where(j < start, j, torch.where(j < start + keep, image_part, suffix_part))
