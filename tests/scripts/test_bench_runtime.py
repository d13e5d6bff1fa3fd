"""scripts/bench_runtime.py: a smoke run on ``tiny`` writes a complete, sane JSON report.

Runs the script as a subprocess (``--model tiny --repeats 1 --new-tokens 3``) with
``TRANSPRUNE_CACHE`` pointing at the session cache that already holds the tiny checkpoint. The
session's paper and unpruned builds are copied into the exports folder first, so the script reuses
both (exporting a missing build is the same ``ensure_build`` that tests/scripts/test_bench_next.py
runs). Timings are not checked against any target (a shared machine
makes them noise); only that they exist and are positive, and that the FLOPs ratio, the kept
counts and the token counts are what they must be. About a minute. (The build-reuse rule itself:
tests/transprune/bench/test_builds.py.)
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
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from transprune.flops import flops_report  # noqa: E402
from transprune.presets import model_preset  # noqa: E402
from transprune.schedule import preset  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_runtime.py"
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def report(tmp_path_factory, paper_build, schedule_build, transprune_cache):
    exports = tmp_path_factory.mktemp("bench-exports")
    shutil.copytree(paper_build[0], exports / "tiny-paper")
    shutil.copytree(schedule_build("none")[0], exports / "tiny-none")
    out = exports / "b.json"
    env = {**os.environ, "TRANSPRUNE_CACHE": str(transprune_cache)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--repeats", "1", "--new-tokens", str(NEW_TOKENS),
         "--threads", "1", "--decode-batch", "2", "--exports", str(exports), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout, exports


def test_reuses_both_builds(report):
    data, _, exports = report
    builds = data["config"]["builds"]
    for kind, schedule in (("pruned", "paper"), ("unpruned", "none")):
        assert builds[kind] == {"path": str(exports / f"tiny-{schedule}"), "reused": True, "export_s": None}
        manifest = json.loads((exports / f"tiny-{schedule}" / "manifest.json").read_text())
        assert manifest["schedule"] == preset(schedule).to_dict()


def test_config_records_the_run(report):
    data, _, _ = report
    config = data["config"]
    assert config["model"] == "tiny"
    assert config["weights"] == {"format": "float", "block_size": None}
    assert (config["threads"], config["repeats"], config["new_tokens"]) == (1, 1, NEW_TOKENS)
    assert config["image_tokens"] == 576
    assert config["text_tokens"] > 0
    assert config["prompt_tokens"] == config["text_tokens"] + 576
    assert config["kept_image_tokens"] == {"pruned": [576, 504, 360, 72], "unpruned": [576]}
    assert config["machine"]["cpu_count"] == os.cpu_count()
    assert config["machine"]["versions"]["onnxruntime"] and config["machine"]["versions"]["torch"]
    assert "max_new_tokens=1" in config["ttft_method"]
    assert data["checks"]["kept_matches_schedule"] is True
    assert data["checks"]["hf_prompt_tokens_match"] is True


def test_flops_ratio_is_the_flops_model_for_the_prompts_text_tokens(report):
    data, _, _ = report
    text_tokens = data["config"]["text_tokens"]
    expected = flops_report(model=model_preset("tiny"), schedule=preset("paper"),
                            text_tokens=text_tokens).whole_with_iga_ratio
    assert data["flops"]["text_tokens"] == text_tokens
    assert data["flops"]["whole_with_iga_ratio"] == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 1
    goal = data["targets"]["prefill_matches_flops"]
    assert goal["value"] == pytest.approx(data["ratios"]["prefill_pruned_over_unpruned"] / expected)
    assert goal["met"] == (abs(goal["value"] - 1) <= 0.05)


def test_samples_medians_and_ratios_are_sane(report):
    data, _, _ = report
    for kind in ("pruned", "unpruned", "hf"):
        (sample,) = data["samples"][kind]
        assert sample["ttft_ms"] > 0 and sample["total_ms"] > 0
        assert sample["new_tokens"] == NEW_TOKENS  # EOS ignored: the length is forced
        assert data["medians"][kind]["ttft_ms"] == sample["ttft_ms"]
    for kind in ("pruned", "unpruned"):
        (sample,) = data["samples"][kind]
        assert sample["decode_steps"] == NEW_TOKENS - 1
        assert len(sample["prefill_ms"]) == 2 and all(v > 0 for v in sample["prefill_ms"])
        assert sample["decode_ms_per_token"] > 0
        assert sample["timings"]["total_run"]["prefill_total"] == sample["prefill_ms"][1]
        medians = data["medians"][kind]
        assert medians["prefill_ms"] > 0 and medians["decode_ms_per_token"] > 0
        assert medians["decode_steps_min"] == NEW_TOKENS - 1
    assert set(data["samples"]["pruned"][0]["timings"]["total_run"]) >= {
        "vision", "segment_0", "segment_3", "scorer_0", "scorer_2", "head", "prefill_total"}
    for name, value in data["ratios"].items():
        assert value is not None and value > 0, name
    assert set(data["targets"]) == {"prefill_matches_flops", "scorers_within_flops_share", "ttft_vs_hf",
                                    "decode_cheaper", "decode_cheaper_batched", "rss_not_higher", "load_not_slower"}
    for name, target in data["targets"].items():
        assert target["value"] is not None and isinstance(target["met"], bool), name
    assert data["targets"]["decode_cheaper"]["met"] == (data["ratios"]["decode_pruned_over_unpruned"] <= 0.9)
    scorers = data["scorers"]
    assert 0 < scorers["time_share"] < 1 and 0 < scorers["flops_share"] < 1
    assert data["targets"]["scorers_within_flops_share"]["value"] == pytest.approx(
        scorers["time_share"] - scorers["flops_share"])
    assert len(data["warmup"]["hf"]["token_ids"]) == NEW_TOKENS


def test_batched_decode_times_both_runtimes_at_the_asked_batch(report):
    data, _, _ = report
    batched = data["batched_decode"]
    assert (batched["batch"], batched["new_tokens"]) == (2, NEW_TOKENS)
    for kind in ("pruned", "unpruned"):
        (sample,) = batched["samples"][kind]
        assert sample["batch"] == 2 and sample["decode_steps"] == NEW_TOKENS - 1
        assert sample["decode_ms_per_step"] > 0 and sample["prefill_ms"] > 0
        assert batched["median_ms_per_step"][kind] == sample["decode_ms_per_step"]
    assert batched["pruned_over_unpruned"] == pytest.approx(
        batched["samples"]["pruned"][0]["decode_ms_per_step"] / batched["samples"]["unpruned"][0]["decode_ms_per_step"])
    target = data["targets"]["decode_cheaper_batched"]
    assert "at batch 2" in target["rule"] and target["met"] == (target["value"] <= 0.9)


def test_peak_rss_comes_from_separate_processes(report):
    data, _, _ = report
    rss = data["rss"]
    assert set(rss) == {"pruned", "unpruned", "hf"}
    for kind, probe in rss.items():
        assert probe["kind"] == kind
        assert probe["new_tokens"] == NEW_TOKENS
        assert 10 * 2**20 < probe["peak_rss_bytes"] < 8 * 2**30
        assert probe["ru_maxrss_bytes"] >= probe["peak_rss_bytes"]  # ru_maxrss also holds the parent's
    # the runtime never imports torch; the HF baseline does
    assert rss["pruned"]["torch_imported"] is False and rss["unpruned"]["torch_imported"] is False
    assert rss["hf"]["torch_imported"] is True


def test_load_time_comes_from_fresh_processes_alternating(report):
    data, _, _ = report
    load = data["load"]
    assert {kind: len(v) for kind, v in load["samples_s"].items()} == {"pruned": 1, "unpruned": 1}
    assert all(v > 0 for v in load["samples_s"]["pruned"] + load["samples_s"]["unpruned"])
    assert load["pruned_over_unpruned"] == pytest.approx(load["samples_s"]["pruned"][0] / load["samples_s"]["unpruned"][0])
    target = data["targets"]["load_not_slower"]
    assert target["value"] == load["pruned_over_unpruned"] and target["met"] == (target["value"] <= 1)
    rss = data["targets"]["rss_not_higher"]
    assert rss["value"] == pytest.approx(data["rss"]["pruned"]["peak_rss_bytes"] / data["rss"]["unpruned"]["peak_rss_bytes"])


def test_prints_a_markdown_table(report):
    _, stdout, _ = report
    lines = stdout.splitlines()
    assert lines[0].startswith("| ") and "runtime, pruned (paper)" in lines[0] and "transformers eager" in lines[0]
    assert lines[1].startswith("|---")
    for row in ("| prefill (ms) |", "| decode (ms/token) |", "| time to first token (ms) |",
                f"| total, {NEW_TOKENS} new tokens (ms) |", "| peak RSS (MiB) |", "| load, fresh process (s) |",
                "| scorers' share of prefill |", "| decode at batch 2 (ms/step) |"):
        assert any(line.startswith(row) for line in lines), row


@pytest.mark.parametrize("argv, message", [(["--decode-batch", "-1"], "--decode-batch must be >= 0"),
                                           (["--repeats", "0"], "--repeats must be >= 1"),
                                           (["--weights", "int8"], "invalid choice")])
def test_bad_arguments_exit_2_before_any_work(argv, message, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--exports", str(tmp_path / "e"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "e").exists()  # nothing exported, nothing written
