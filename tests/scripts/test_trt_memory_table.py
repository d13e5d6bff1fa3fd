"""scripts/trt_memory_table.py: docs/tensorrt.md's per-target memory table, from the model preset."""

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
    rows = {(r["target"], r["precision"]): r for r in json.loads(out.read_text())["rows"] if r["weights"] == "16-bit"}
    assert not rows[("jetson-orin-nano", "fp16")]["paper"]["fits"]
    assert rows[("jetson-agx-orin", "fp16")]["paper"]["fits"]
    assert ("jetson-agx-orin", "bf16") not in rows and ("datacenter-hopper", "fp8") in rows
    paper, none = rows[("jetson-thor", "fp16")]["paper"], rows[("jetson-thor", "fp16")]["none"]
    # per layer one buffer x (key + value) x 32 heads x 128 x 2 bytes per position: the paper schedule
    # keeps 576 image tokens in 7 layers, 504 in 2, 360 in 3 and 72 in 20
    per_position = 2 * 32 * 128 * 2  # one buffer per cache (schema 5), key + value, 32 heads x 128, fp16
    paper_positions = 7 * 576 + 2 * 504 + 3 * 360 + 20 * 72 + 32 * 640
    assert paper["kv_cache_gib"] == pytest.approx(paper_positions * per_position / 2**30, abs=1e-3)
    assert none["kv_cache_gib"] == pytest.approx(32 * (576 + 640) * per_position / 2**30, abs=1e-3)
    assert "| jetson-orin-nano | 8 GB | 16-bit | fp16 |" in done.stdout
    assert "no: 16-bit weights alone exceed it" in done.stdout
    assert "| jetson-thor | 128 GB | 16-bit | fp16/bf16/fp8 | 22.6 (0.43) |" in done.stdout  # equal rows share one


def test_int4_rows_per_target(tmp_path):
    """Each target also gets an int4 row (an fp16 export with --weights int4: decoder and lm_head in
    blocks of 128): 4.02 GiB of weights, the same KV cache; the 8 GB Orin Nano still says no, because
    its weights, 1 GiB workspace and 1 GiB runtime alone take 6.02 GiB of its 6.0 GiB budget."""
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--text-tokens", "128", "--new-tokens", "512",
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert "4.02 GiB with int4 weights (blocks of 128)" in done.stdout
    data = json.loads(out.read_text())
    rows = {(r["target"], r["weights"], r["precision"]): r for r in data["rows"]}
    targets = [r["target"] for r in data["rows"] if r["weights"] == "int4"]
    assert sorted(targets) == sorted({r["target"] for r in data["rows"]})  # one int4 row per target, fp16
    assert all(r["precision"] == "fp16" for r in data["rows"] if r["weights"] == "int4")
    nano, nano16 = rows[("jetson-orin-nano", "int4", "fp16")], rows[("jetson-orin-nano", "16-bit", "fp16")]
    assert nano["paper"]["weights_gib"] == pytest.approx(4.022, abs=1e-3)
    assert nano["paper"]["kv_cache_gib"] == nano16["paper"]["kv_cache_gib"]
    assert not nano["paper"]["fits"] and nano["paper"]["headroom_gib"] == pytest.approx(-0.450, abs=1e-3)
    assert rows[("jetson-orin-nx", "int4", "fp16")]["paper"]["fits"]
    assert not rows[("jetson-orin-nx", "16-bit", "fp16")]["paper"]["fits"]
    assert ("| jetson-orin-nano | 8 GB | int4 | fp16 | 6.5 (0.43) | 6.6 (0.59) | no: int4 weights, workspace and "
            "runtime alone exceed it |") in done.stdout
    assert "| jetson-orin-nx | 16 GB | int4 | fp16 | 7.5 (0.43) | 7.6 (0.59) | yes |" in done.stdout



def test_llava_next_caches_are_sized_for_the_largest_image(tmp_path):
    """LLaVA-NeXT engines hold the largest image's tokens (2928: the 2 x 2 pinpoint filled), as
    transprune-build's profiles do, not the paper's nominal 2880."""
    out = tmp_path / "memory.json"
    subprocess.run([sys.executable, str(SCRIPT), "--model", "llava-next-7b", "--text-tokens", "128",
                    "--new-tokens", "512", "--out", str(out)], capture_output=True, text=True, check=True)
    rows = {(r["target"], r["precision"]): r for r in json.loads(out.read_text())["rows"]}
    paper, none = rows[("jetson-agx-orin", "fp16")]["paper"], rows[("jetson-agx-orin", "fp16")]["none"]
    per_position = 2 * 32 * 128 * 2  # one buffer per cache (schema 5), key + value, 32 heads x 128, fp16
    kept = 7 * 2928 + 2 * int(2928 * 0.875) + 3 * int(2928 * 0.625) + 20 * int(2928 * 0.125)
    assert paper["kv_cache_gib"] == pytest.approx((kept + 32 * 640) * per_position / 2**30, abs=1e-3)
    assert none["kv_cache_gib"] == pytest.approx(32 * (2928 + 640) * per_position / 2**30, abs=1e-3)
