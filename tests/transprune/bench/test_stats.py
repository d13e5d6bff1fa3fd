"""transprune.bench.stats: medians that skip missing figures, and paired ratios of side-by-side runs."""

from __future__ import annotations

from transprune.bench.stats import flat, median, paired_ratio, ratio


def test_median_skips_missing_values():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None and median([]) is None


def test_paired_ratio_is_the_median_of_per_run_ratios_not_the_ratio_of_medians():
    pruned, unpruned = [1.0, 4.0, 10.0], [2.0, 4.0, 40.0]  # ratios 0.5, 1.0, 0.25
    assert paired_ratio(pruned, unpruned) == 0.5
    assert ratio(median(pruned), median(unpruned)) == 1.0
    assert paired_ratio([1.0, None, 3.0], [2.0, 5.0, 0.0]) == 0.5  # a missing or zero pair is left out


def test_flat_splices_list_values():
    samples = [{"prefill_ms": [1.0, 2.0]}, {"prefill_ms": 3.0}, {}]
    assert flat(samples, "prefill_ms") == [1.0, 2.0, 3.0, None]


def test_ratio_of_missing_figures_is_none():
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None
