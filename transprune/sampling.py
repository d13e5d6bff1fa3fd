"""Next-token choice shared by every backend: greedy, or seeded temperature / top-p sampling.

numpy only, so the torch reference and the torch-free runtime pick tokens with the same code and,
given the same logits and seed, the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TransPruneError


@dataclass
class Sampler:
    """temperature 0 means greedy (argmax; the lowest id wins a tie, as torch.argmax)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (_is_real(self.temperature) and self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise TransPruneError(f"temperature {self.temperature!r} must be a number >= 0 (0 = greedy)")
        if not (_is_real(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise TransPruneError(f"top_p {self.top_p!r} must be a number in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or not 0 <= self.seed < 2**63):
            raise TransPruneError(f"seed {self.seed!r} must be an integer from 0 to 2**63 - 1 (or none)")
        self._rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits [B, V] -> token ids [B] (int64)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.greedy:
            return logits.argmax(-1).astype(np.int64)
        return np.array([self._sample_row(row) for row in logits], dtype=np.int64)

    def _sample_row(self, row: np.ndarray) -> int:
        scaled = row / self.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        if self.top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (the token that crosses included)
            cutoff = int(np.searchsorted(np.cumsum(sorted_probs), self.top_p)) + 1
            sorted_probs = sorted_probs[:cutoff]
        cumulative = np.cumsum(sorted_probs)
        u = self._rng.random() * cumulative[-1]
        pick = min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)
        return int(order[pick])


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
