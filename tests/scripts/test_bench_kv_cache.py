"""scripts/bench_kv_cache.py: a smoke run on the tiny build writes a complete report.

Timings are not compared (a shared machine makes them noise); the test checks that every figure
was measured, and the KV bytes, which are arithmetic: one buffer of (cached + steps) positions per
cache for the in-place host, twice that for the copying one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_kv_cache.py"


def test_smoke_run_on_tiny(paper_build, tmp_path):
    out = tmp_path / "kv.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(paper_build[0]), "--segment", "segment_3", "--cached",
                           "8,40", "--steps", "3", "--repeats", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    config = report["config"]
    assert (config["segment"], config["layers"], config["steps"], config["repeats"]) == ("segment_3", [13, 14], 3, 1)
    assert list(report["results"]) == ["8", "40"]
    heads, dim = config["kv_heads"], config["head_dim"]
    for cached, row in report["results"].items():
        for host in ("copying", "in_place"):
            (sample,) = row["samples_ms"][host]
            assert sample > 0 and row["median_ms"][host] == round(sample, 3)
        per_position = 2 * 2 * heads * dim * 4  # two layers, key and value, fp32
        assert row["kv_bytes"]["in_place"] == per_position * (int(cached) + 3)
        assert row["kv_bytes"]["copying"] == 2 * row["kv_bytes"]["in_place"]
        assert row["in_place_over_copying"] > 0
    assert done.stdout.splitlines()[2].startswith("| cached positions | copying every cache")


def test_a_cache_longer_than_the_model_is_refused(paper_build, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(paper_build[0]), "--cached", "100000",
                           "--out", str(tmp_path / "kv.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "exceed the model's" in done.stderr
    assert not (tmp_path / "kv.json").exists()
