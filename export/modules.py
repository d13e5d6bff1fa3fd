"""Plain-torch LLaVA decoder pieces built from canonical weights, written to trace into ONNX.

Why not trace transformers' modules: their attention dispatch, cache objects and decorators are
built for eager/compiled PyTorch, not for a graph with past keys as inputs; these few lines are
easy to read, export cleanly with the dynamo exporter, and are checked against transformers (the
reference) by validation. Shapes: B batch, S new tokens, P past tokens, D hidden, E head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from transprune import scoring


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as LlamaRMSNorm: statistics in fp32, scale in the model dtype
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def linear(weights: dict, prefix: str) -> nn.Linear:
    weight = weights[f"{prefix}.weight"]
    bias = weights.get(f"{prefix}.bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, S, E] for integer positions [B, S] (Llama's default RoPE, fp32 math)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, E] rotated by cos/sin [B, S, E]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, weights: dict, prefix: str, *, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj = linear(weights, f"{prefix}.q_proj")
        self.k_proj = linear(weights, f"{prefix}.k_proj")
        self.v_proj = linear(weights, f"{prefix}.v_proj")
        self.o_proj = linear(weights, f"{prefix}.o_proj")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

    def project(self, x: torch.Tensor, proj: nn.Linear, heads: int) -> torch.Tensor:
        batch, seq, _ = x.shape
        return proj(x).view(batch, seq, heads, self.head_dim).transpose(1, 2)  # [B, H, S, E]

    def forward(self, x, cos, sin, mask, cached):
        """-> (attention output, the new tokens' keys and values [B, Hkv, S, E]).

        ``cached``: (keys, values) blocks [B, Hkv, P_i, E] in sequence order (the prompt's, then
        the generated tokens'), which the new tokens attend to after them. The blocks are attended
        to one by one and never concatenated, so the cache stays where the host keeps it (one
        buffer per cache, runtime/kv_pool.py) and a decode step reads it once instead of copying
        it into a longer tensor. Only the scores, [B, H, S, sum P_i + S], are joined.
        """
        q = apply_rotary(self.project(x, self.q_proj, self.num_heads), cos, sin)
        k = apply_rotary(self.project(x, self.k_proj, self.num_kv_heads), cos, sin)
        v = self.project(x, self.v_proj, self.num_kv_heads)
        batch, seq = x.shape[0], x.shape[1]
        group = self.num_heads // self.num_kv_heads
        blocks = [*cached, (k, v)]
        if group > 1:
            # grouped-query attention: query head h reads kv head h // group. The query heads are
            # grouped ([B, Hkv, group, S, E]) and the kv heads broadcast, instead of repeating the
            # cache per query head (a copy of it every call; and a reshape to -1 that an empty
            # prefill cache makes ambiguous)
            q = q.view(batch, self.num_kv_heads, group, seq, self.head_dim)
            blocks = [(key.unsqueeze(2), value.unsqueeze(2)) for key, value in blocks]
            mask = mask.unsqueeze(1)
        # the scale goes on the queries, [.., S, E], not on the scores, [.., S, P + S]: at prefill
        # that is one pass over S * E values per head instead of S * S (bitwise the same for a
        # power-of-two scale, head_dim 64; the last bit may differ for head_dim 128)
        q = q * self.head_dim ** -0.5
        scores = torch.cat([torch.matmul(q, key.transpose(-1, -2)) for key, _ in blocks], dim=-1) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out, start = None, 0
        for key, value in blocks:
            end = start + key.shape[-2]
            part = torch.matmul(probs[..., start:end], value)
            out, start = part if out is None else out + part, end
        out = out.reshape(batch, self.num_heads, seq, self.head_dim).transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, weights: dict, prefix: str) -> None:
        super().__init__()
        self.gate_proj = linear(weights, f"{prefix}.gate_proj")
        self.up_proj = linear(weights, f"{prefix}.up_proj")
        self.down_proj = linear(weights, f"{prefix}.down_proj")

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, weights: dict, prefix: str, *, eps: float, **heads) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(weights[f"{prefix}.input_layernorm.weight"], eps)
        self.self_attn = Attention(weights, f"{prefix}.self_attn", **heads)
        self.post_attention_layernorm = RMSNorm(weights[f"{prefix}.post_attention_layernorm.weight"], eps)
        self.mlp = MLP(weights, f"{prefix}.mlp")

    def forward(self, hidden, cos, sin, mask, cached, token_mask=None, want_ttv=False):
        attn_in = self.input_layernorm(hidden)
        attn_out, key, value = self.self_attn(attn_in, cos, sin, mask, cached)
        hidden = hidden + attn_out
        ffn_in = self.post_attention_layernorm(hidden)
        ffn_out = self.mlp(ffn_in)
        ttv = scoring.layer_ttv(attn_in, attn_out, ffn_in, ffn_out, token_mask) if want_ttv else None
        return hidden + ffn_out, key, value, ttv
