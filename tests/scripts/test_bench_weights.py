"""scripts/bench_weights.py: a smoke run on ``tiny`` writes a complete, sane JSON report.

Runs the script as a subprocess (``--model tiny --block-size 32 --repeats 1``, three of the
variants) with ``TRANSPRUNE_CACHE`` pointing at the session cache that holds the tiny checkpoint.
The session's ``paper_build`` (fp32) and ``int4_build`` (blocks of 32) are copied into the exports
folder first, so the script exports nothing and only converts the int4 build to MatMulNBits (fp16
is left out: exporting it would take minutes and test nothing the other variants do not).
Timings are not checked against anything (a shared machine makes them noise); only that they
exist and are positive, and that the agreement figures are what they must be (fp32 against
itself: everything identical).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ir")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_weights.py"
VARIANTS = ("fp32", "int4", "int4-nbits")
NEW_TOKENS, AGREEMENT_TOKENS = 3, 4
STAGES = 3  # the paper schedule prunes three times


@pytest.fixture(scope="module")
def report(tmp_path_factory, paper_build, int4_build, transprune_cache):
    exports = tmp_path_factory.mktemp("bench-weights")
    shutil.copytree(paper_build[0], exports / "tiny-paper-fp32")
    shutil.copytree(int4_build[0], exports / "tiny-paper-int4")
    out = exports / "w.json"
    env = {**os.environ, "TRANSPRUNE_CACHE": str(transprune_cache)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--block-size", str(int4_build[1]["weights"]["block_size"]),
         "--repeats", "1", "--new-tokens", str(NEW_TOKENS), "--agreement-tokens", str(AGREEMENT_TOKENS),
         "--threads", "1", "--pause", "0", "--variants", ",".join(VARIANTS), "--exports", str(exports), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout, exports


def test_builds_reused_and_converted(report):
    data, _, exports = report
    builds = data["config"]["builds"]
    assert builds["fp32"]["reused"] is True and builds["int4"]["reused"] is True
    assert set(builds) == {"fp32", "int4", "int4-nbits-acc4"}  # only what the chosen variants run
    build = builds["int4-nbits-acc4"]
    assert build["reused"] is False and build["path"] == str(exports / "tiny-paper-int4-nbits-acc4")
    weights = json.loads((Path(build["path"]) / "manifest.json").read_text())["weights"]
    assert weights["form"] == "MatMulNBits" and weights["accuracy_level"] == 4
    assert list(data["config"]["variants"]) == list(VARIANTS)


def test_every_variant_has_sane_figures(report):
    data, _, _ = report
    for name in VARIANTS:
        assert data["bytes"][name]["graphs"] > 0
        m = data["medians"][name]
        assert m["load_ms"] > 0 and m["prefill_ms"] > 0 and m["decode_ms_per_token"] > 0
        assert m["decode_steps_min"] == NEW_TOKENS - 1
        (load,) = data["load_samples"][name]
        assert load["torch_imported"] is False  # the load probe measures the runtime alone
        (sample,) = data["samples"][name]
        assert sample["new_tokens"] == NEW_TOKENS  # EOS ignored: the length is forced
        rss = data["rss"][name]
        assert 10 * 2**20 < rss["peak_rss_bytes"] < 8 * 2**30 and rss["torch_imported"] is False
        agreed = data["agreement"][name]
        assert agreed["tokens"] == AGREEMENT_TOKENS and len(agreed["token_ids"]) == AGREEMENT_TOKENS
        assert 0 <= agreed["token_agreement"] <= 1
        assert len(agreed["kept_overlap"]) == STAGES and all(0 <= o <= 1 for o in agreed["kept_overlap"])
        assert agreed["max_logit_error_first_step"] >= 0
    sizes = {name: data["bytes"][name]["graphs"] for name in VARIANTS}
    # on tiny the float parts (embedding table, vision tower) are over half of fp32's bytes: 0.58x measured
    assert sizes["int4"] < 0.75 * sizes["fp32"]
    assert sizes["int4-nbits"] <= sizes["int4"]  # the same int4 values repacked, no DequantizeLinear nodes
    for name in VARIANTS[1:]:
        assert set(data["ratios"][name]["over_fp32"]) == {"load", "prefill", "decode"}
    assert "over_int4" in data["ratios"]["int4-nbits"]


def test_fp32_agrees_with_itself_and_the_same_math_agrees_exactly(report):
    data, _, _ = report
    agreed = data["agreement"]
    assert agreed["fp32"]["token_agreement"] == 1.0 and agreed["fp32"]["first_token_identical"] is True
    assert agreed["fp32"]["kept_overlap"] == [1.0] * STAGES
    assert agreed["fp32"]["max_logit_error_first_step"] == 0.0
    # the converted build at level 4 computes what the QDQ build computes at onnxruntime's default (4)
    assert agreed["int4-nbits"]["token_ids"] == agreed["int4"]["token_ids"]
    assert agreed["int4-nbits"]["kept_overlap"] == agreed["int4"]["kept_overlap"]


def test_config_records_the_run_and_the_machine(report):
    data, _, _ = report
    config = data["config"]
    assert (config["model"], config["schedule"], config["threads"], config["repeats"]) == ("tiny", "paper", 1, 1)
    assert config["block_size"] == 32 and config["image_tokens"] == [576, 504, 360, 72]
    assert config["machine"]["versions"]["onnxruntime"]
    assert config["loadavg_before"] is None or len(config["loadavg_before"]) == 3
    assert config["wall_s"] > 0


def test_prints_a_markdown_table(report):
    data, stdout, _ = report
    lines = stdout.splitlines()
    assert lines[0].startswith("| weights | build (MiB) | load (ms) |")
    assert lines[1].startswith("|---")
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(VARIANTS)
    assert rows[0].startswith("| fp32 |") and f"| {AGREEMENT_TOKENS}/{AGREEMENT_TOKENS} | same |" in rows[0]
    assert any("MatMulNBits" in row for row in rows)
