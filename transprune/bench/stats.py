"""Medians and paired ratios: how every benchmark here turns repeated runs into one figure.

Timings on a shared machine are noisy, so each figure is a median over repetitions, and a
comparison of two engines is the median of the ratios of runs made side by side (in the same
repetition), which cancels the drift that a ratio of medians would keep.
"""

from __future__ import annotations

import statistics


def median(values) -> float | None:
    """Median of the values that are not None; None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratio(numerators, denominators) -> float | None:
    """Median of the ratios of runs made side by side."""
    return median([n / d for n, d in zip(numerators, denominators) if n is not None and d])


def flat(samples: list[dict], key: str) -> list:
    """``key`` of every sample, a list-valued one spliced in (e.g. the prefill of both runs of a repetition)."""
    out = []
    for sample in samples:
        value = sample.get(key)
        out.extend(value if isinstance(value, list) else [value])
    return out


def ratio(numerator, denominator) -> float | None:
    """numerator / denominator, None when either is missing (or the denominator is 0)."""
    return numerator / denominator if numerator is not None and denominator else None


def in_turn(items, rep: int):
    """``items`` in order on even repetitions, reversed on odd ones (same sequence type): drift on
    a shared machine then falls on every item alike."""
    return items if rep % 2 == 0 else items[::-1]
