"""Attention masks and positions from a [B, T] key mask (1 real token, 0 left padding).

One definition for the PyTorch reference and the exported graphs, written with ops TensorRT
parses (no int64 CumSum, no integer Clip).
"""

from __future__ import annotations

import torch


def additive_causal_mask(key_mask: torch.Tensor, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """key_mask [B, P+S] -> [B, 1, S, P+S]: the last S positions attend causally to real tokens.

    0 where attention is allowed, the dtype's most negative value elsewhere (not -inf, so a
    padding row that sees nothing softmaxes to a uniform row instead of NaN).
    """
    total = key_mask.shape[1]
    query_at = torch.arange(new_tokens, device=key_mask.device) + (total - new_tokens)
    allowed = (torch.arange(total, device=key_mask.device)[None, :] <= query_at[:, None])[None, None]
    allowed = allowed & (key_mask[:, None, None, :] > 0)
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))


def positions_from_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """Contiguous positions of the real tokens (0..n-1 per sample); padding gets 0.

    CumSum in fp32: TensorRT's CumSum takes no int64 (exact for any realistic length < 2**24).
    """
    positions = key_mask.float().cumsum(-1) - 1.0
    return positions.clamp_min(0.0).to(torch.int64)
