"""scripts/trt_memory_table.py: the README's per-target memory table, from the model preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trt_memory_table.py"


def test_llava_7b_table_refuses_the_8gb_nano_and_pruning_shrinks_the_cache(tmp_path):
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--text-tokens", "128", "--new-tokens", "512",
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert "weights 13.16 GiB at 16 bits" in done.stdout
    rows = {(r["target"], r["precision"]): r for r in json.loads(out.read_text())["rows"]}
    assert not rows[("jetson-orin-nano", "fp16")]["paper"]["fits"]
    assert rows[("jetson-agx-orin", "fp16")]["paper"]["fits"]
    assert ("jetson-agx-orin", "bf16") not in rows and ("datacenter-hopper", "fp8") in rows
    paper, none = rows[("jetson-thor", "fp16")]["paper"], rows[("jetson-thor", "fp16")]["none"]
    # per layer 2 buffers x (key + value) x 32 heads x 128 x 2 bytes per position: the paper schedule
    # keeps 576 image tokens in 7 layers, 504 in 2, 360 in 3 and 72 in 20
    per_position = 2 * 2 * 32 * 128 * 2
    paper_positions = 7 * 576 + 2 * 504 + 3 * 360 + 20 * 72 + 32 * 640
    assert paper["kv_cache_gib"] == pytest.approx(paper_positions * per_position / 2**30, abs=1e-3)
    assert none["kv_cache_gib"] == pytest.approx(32 * (576 + 640) * per_position / 2**30, abs=1e-3)
    assert "| jetson-orin-nano | 8 GB | fp16 |" in done.stdout and "no: 16-bit weights alone exceed it" in done.stdout

