"""The token loop every backend shares: pick, record, stop at EOS or the token budget, step.

Backend-neutral: ``decode_step(picked_ids) -> logits`` hides the model, ``to_numpy`` turns the
backend's logits into what the numpy sampler reads. ``decode_steps`` yields step by step (for
streaming); ``decode_loop`` collects the whole generation.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from .sampling import Sampler


def decode_steps(
    first_logits: Any,
    decode_step: Callable[[np.ndarray], Any],
    *,
    batch: int,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    eos_token_id: int | None = None,
    to_numpy: Callable[[Any], np.ndarray] = np.asarray,
) -> Iterator[tuple[np.ndarray, list[bool], Any]]:
    """Yields ``(picked ids [B], active, logits picked from)`` per step; ``active[b]`` is False once
    sample b produced EOS at an earlier step (its later picks are padding, not output). Stops when
    every sample has produced EOS or after ``max_new_tokens`` steps; the last step costs no forward."""
    sampler = sampler or Sampler()
    done, logits = [False] * batch, first_logits
    for step in range(max_new_tokens):
        picked = sampler(to_numpy(logits))
        active = [not d for d in done]
        yield picked, active, logits
        done = [d or token == eos_token_id for d, token in zip(done, picked.tolist())]
        if all(done) or step == max_new_tokens - 1:
            return
        logits = decode_step(picked)


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
    tokens: list[list[int]] = [[] for _ in range(batch)]
    step_logits = []
    for picked, active, logits in decode_steps(first_logits, decode_step, batch=batch, max_new_tokens=max_new_tokens,
                                               sampler=sampler, eos_token_id=eos_token_id, to_numpy=to_numpy):
        step_logits.append(logits)
        for b, token in enumerate(picked.tolist()):
            if active[b]:
                tokens[b].append(token)
        if on_tokens is not None:
            on_tokens(picked.tolist())
    return tokens, step_logits
