"""The token loop every backend shares: pick, record, stop at EOS or the token budget, step.

Backend-neutral: ``decode_step(picked_ids) -> logits`` hides the model, ``to_numpy`` turns the
backend's logits into what the numpy sampler reads.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .sampling import Sampler


def decode_loop(
    first_logits: Any,
    decode_step: Callable[[np.ndarray], Any],
    *,
    batch: int,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    eos_token_id: int | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
    to_numpy: Callable[[Any], np.ndarray] = np.asarray,
) -> tuple[list[list[int]], list[Any]]:
    """-> (generated ids per sample, EOS included when reached; logits of every step)."""
    sampler = sampler or Sampler()
    tokens: list[list[int]] = [[] for _ in range(batch)]
    step_logits, done, logits = [], [False] * batch, first_logits
    for step in range(max_new_tokens):
        step_logits.append(logits)
        picked = sampler(to_numpy(logits))
        for b, token in enumerate(picked.tolist()):
            if not done[b]:
                tokens[b].append(token)
                done[b] = token == eos_token_id
        if on_tokens is not None:
            on_tokens(picked.tolist())
        if all(done) or step == max_new_tokens - 1:
            break
        logits = decode_step(picked)
    return tokens, step_logits
