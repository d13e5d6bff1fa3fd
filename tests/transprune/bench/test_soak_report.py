"""transprune.bench.soak_report: a soak report's failures and its RSS slope (the whole run is
tested through the script, in tests/scripts/test_soak.py)."""

from __future__ import annotations

import pytest

from transprune.bench.soak_report import failures, rss_summary


def test_identical_reference_answers_fail():
    report = {"config": {"max_rss_slope": None}, "requests": [{}] * 3,
              "reference": {"distinct_answers": 1, "stream_differs_from_generate": []}}
    assert any("all alike" in f for f in failures(report))


def test_rss_summary_slope_is_mib_per_100_generations_over_the_second_half():
    mib = 2**20
    flat = [(n, 300 * mib) for n in range(11)]
    assert rss_summary(flat)["slope_mib_per_100_second_half"] == 0
    # flat, then growing 1 MiB every 10 generations over the second half
    growing = [(n, int((300 + max(0, n - 50) / 10) * mib)) for n in range(101)]
    summary = rss_summary(growing)
    assert summary["slope_mib_per_100_second_half"] == pytest.approx(10, abs=0.01)
    assert (summary["start_mib"], summary["end_mib"], summary["max_mib"], summary["growth_mib"]) == (300, 305, 305, 5)
    report = {"config": {"max_rss_slope": 5.0}, "requests": [], "reference": {}, "soak": {
        "rss": summary, "wrong": 0, "exceptions": 0, "checked": 100, "errors": {},
        "warmup": {"wrong": 0, "exceptions": 0, "checked": 1, "errors": {}}}}
    assert any("RSS grows" in f for f in failures(report))
    assert rss_summary([(0, None)])["slope_mib_per_100_second_half"] is None
