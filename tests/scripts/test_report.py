"""scripts/report.py: a ``--quick`` run on ``tiny`` writes the markdown, the plots and the JSON.

Runs the script once as a subprocess (``--model tiny --quick --threads 1``: schedules none and
paper, 1 repetition, 2 new tokens) with ``TRANSPRUNE_CACHE`` pointing at the session cache that
already holds the tiny checkpoint. The session's paper and unpruned builds are copied into the
exports folder first, so the script reuses both (exporting a missing build is the same
``ensure_build`` that tests/scripts/test_bench_next.py runs). Timings are never compared with anything (a shared machine makes them noise); only that
they exist and are positive. The FLOPs figures are checked against the paper's published ones
and against ``transprune.flops`` computed here from schedules built another way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from transprune.flops import flops_report  # noqa: E402
from transprune.presets import model_preset  # noqa: E402
from transprune.schedule import Schedule, preset, resolve_schedule  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "report.py"
NEW_TOKENS = 2  # --quick
# The FLOPs table's schedules, built here through resolve_schedule (the CLI's path), not the script's.
FLOPS_SCHEDULES = {
    "paper": preset("paper"), "ttv-only": preset("ttv-only"), "iga-only": preset("iga-only"),
    **{f"shift-{a}-{b}-{c}": resolve_schedule(prune=f"{a},{b},{c}")
       for a, b, c in ((5, 7, 10), (6, 8, 11), (8, 10, 13), (9, 11, 14))},
    "sweep-0.875-0.625-0.25": resolve_schedule(ratios="0.875,0.625,0.25"),
    "sweep-0.875-0.75-0.5": resolve_schedule(ratios="0.875,0.75,0.5"),
    "none": preset("none"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, paper_build, schedule_build, transprune_cache):
    root = tmp_path_factory.mktemp("report")
    exports, docs, out = root / "exports", root / "docs", root / "report.json"
    shutil.copytree(paper_build[0], exports / "tiny-paper")
    shutil.copytree(schedule_build("none")[0], exports / "tiny-none")
    env = {**os.environ, "TRANSPRUNE_CACHE": str(transprune_cache)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--quick", "--threads", "1", "--exports", str(exports),
         "--docs", str(docs), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"data": json.loads(out.read_text()), "markdown": (docs / "BENCHMARKS.md").read_text(), "docs": docs,
            "exports": exports, "stderr": done.stderr}


def table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_flops_table_shows_the_papers_llava_1_5_figures(run):
    rows = {(r[0], r[1]): r for r in table_rows(run["markdown"], "model")}
    paper = rows[("llava-1.5-7b", "paper")]
    assert paper[5:8] == ["3.82", "1.56", "40.8%"]  # baseline, pruned, ratio: the published 3.82 -> 1.56 (40.8%)
    assert paper[-1] == "3.82 -> 1.56 TFLOPs (40.8%)"
    assert "- llava-1.5-7b, paper: ours 3.82 -> 1.56 TFLOPs (40.8%), published 3.82 -> 1.56: matches" in run["markdown"]
    next_paper = rows[("llava-next-7b", "paper")]
    assert next_paper[4].startswith("2880 -> ") and next_paper[-1] == "20.83 -> 8.33 TFLOPs"


@pytest.mark.parametrize("model", ["llava-1.5-7b", "llava-next-7b"])
def test_flops_table_is_complete_and_agrees_with_the_flops_model(run, model):
    rows = {r[1]: r for r in table_rows(run["markdown"], "model") if r[0] == model}
    assert list(rows) == list(FLOPS_SCHEDULES)  # complete even in --quick
    json_rows = {r["schedule"]: r for r in run["data"]["flops_table"] if r["model"] == model}
    for name, schedule in FLOPS_SCHEDULES.items():
        expected = flops_report(model=model_preset(model), schedule=schedule, text_tokens=64)
        row, stored = rows[name], json_rows[name]
        assert row[5:10] == [f"{expected.baseline_tflops:.2f}", f"{expected.pruned_tflops:.2f}", f"{expected.ratio:.1%}",
                             f"{expected.whole_ratio:.1%}", f"{expected.whole_with_iga_ratio:.1%}"], name
        assert stored["whole_with_iga_ratio"] == pytest.approx(expected.whole_with_iga_ratio, rel=1e-12)
        assert stored["report"]["schedule"]["prune"] == list(schedule.prune)
        assert stored["report"]["schedule"]["accumulate"] == list(schedule.accumulate)
    assert rows["none"][7] == "100.0%" and float(rows["shift-5-7-10"][7][:-1]) < float(rows["paper"][7][:-1])


def test_reuses_both_builds(run):
    builds, exports = run["data"]["measured"]["builds"], run["exports"]
    for name in ("paper", "none"):
        assert builds[name] == {"path": str(exports / f"tiny-{name}"), "reused": True, "export_s": None}
        manifest = json.loads((exports / f"tiny-{name}" / "manifest.json").read_text())
        assert manifest["schedule"] == preset(name).to_dict()
    assert "reusing" in run["stderr"] and "exporting" not in run["stderr"]


def test_every_measured_schedule_has_positive_timings(run):
    data = run["data"]
    measured, config = data["measured"], data["config"]
    assert config["schedules"] == ["none", "paper"]
    assert (config["repeats"], config["new_tokens"], config["threads"]) == (1, NEW_TOKENS, 1)
    assert config["image_tokens"] == 576 and config["prompt_tokens"] == config["text_tokens"] + 576
    for name in config["schedules"]:
        (sample,) = measured["samples"][name]
        assert sample["prefill_ms"] > 0 and sample["decoder_prefill_ms"] > 0 and sample["decode_ms_per_token"] > 0
        assert sample["new_tokens"] == NEW_TOKENS and sample["decode_steps"] == NEW_TOKENS - 1  # EOS ignored
        assert sample["timings"]["prefill_total"] == sample["prefill_ms"]
        assert all(sample["timings"][graph] > 0 for graph in ("vision", "embed", "segment_0", "head"))
        summary = measured["summary"][name]
        assert summary["prefill_ms"] == sample["prefill_ms"]
        assert summary["decode_ms_per_token"] > 0 and summary["prefill_over_none"] > 0
        expected = flops_report(model=model_preset("tiny"), schedule=Schedule.from_dict(measured["schedules"][name]),
                                text_tokens=config["text_tokens"]).whole_with_iga_ratio
        assert summary["flops_ratio"] == pytest.approx(expected, rel=1e-12)
    assert measured["summary"]["none"]["prefill_over_none"] == 1.0
    assert all(sample["timings"]["scorer_0"] > 0 for sample in measured["samples"]["paper"])
    assert data["checks"]["every_run_made_new_tokens"] is True


def test_kept_image_tokens_equal_the_schedules_keep_counts(run):
    measured = run["data"]["measured"]
    for name, schedule in measured["schedules"].items():
        expected = [576, *Schedule.from_dict(schedule).keep_counts(576)]
        assert measured["kept"][name]["measured"] == expected, name
        assert all(s["kept_image_tokens"] == expected for s in measured["samples"][name])
    assert measured["kept"]["paper"]["measured"] == [576, 504, 360, 72]
    assert run["data"]["checks"]["kept_matches_schedule"] is True


def test_peak_rss_comes_from_separate_torch_free_processes(run):
    rss = run["data"]["measured"]["rss"]
    assert set(rss) == {"none", "paper"}
    for name, probe in rss.items():
        assert probe["build"] == run["data"]["measured"]["builds"][name]["path"]
        assert probe["new_tokens"] == NEW_TOKENS
        assert 10 * 2**20 < probe["peak_rss_bytes"] < 8 * 2**30
        assert probe["torch_imported"] is False


def test_plots_are_real_images_linked_from_the_markdown(run):
    docs, plots = run["docs"], run["data"]["plots"]
    assert set(plots) == {"prefill", "sweep", "decode", "memory"}
    for key, path in plots.items():
        path = Path(path)
        assert path.parent == docs and path.suffix == ".png", key
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 400 <= image.width <= 3000 and 300 <= image.height <= 3000, (key, image.size)
            image.verify()
        assert f"]({path.name})" in run["markdown"], key  # linked relative to the markdown


def test_markdown_records_the_machine_and_the_configuration(run):
    text, config = run["markdown"], run["data"]["config"]
    assert f"{os.cpu_count()} logical cores" in text and "load average" in text
    assert config["machine"]["cpu_model"] and config["machine"]["cpu_model"] in text
    assert f"{config['text_tokens']} text + 576 image tokens" in text
    assert f"{NEW_TOKENS} new tokens per generation" in text and "1 repetition(s)" in text
    assert "tiny test model" in text and "## How measured" in text
    rows = {r[0]: r for r in table_rows(text, "schedule")}
    assert rows["paper"][1] == "576 -> 504 -> 360 -> 72"
    assert re.fullmatch(r"\d+\.\d{3}", rows["paper"][4])  # prefill / none, measured


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--schedules", "paper", "nope"], "unknown schedule(s) nope"),
    (["--model", "tiny", "--schedules", "shift-9-11-14"], "does not fit --model tiny"),
    (["--model", "llava-1.5-7b"], "invalid choice"),
])
def test_bad_arguments_exit_2_before_any_work(tmp_path, argv, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *argv, "--docs", str(tmp_path / "docs"),
                           "--out", str(tmp_path / "r.json"), "--exports", str(tmp_path / "exports")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert not any(tmp_path.iterdir())  # nothing exported or written


def test_a_build_that_does_not_load_is_reported_and_the_rest_measured(run, tmp_path, transprune_cache):
    """A damaged paper build (a graph's bytes changed after export; its manifest still matches, so
    it is reused): the run goes on without it, names it in the markdown and the JSON, and exits 1.
    No export happens (none and paper are reused)."""
    exports = tmp_path / "exports"
    for name in ("tiny-none", "tiny-paper"):
        shutil.copytree(run["exports"] / name, exports / name)
    with open(exports / "tiny-paper" / "head.onnx", "ab") as graph:
        graph.write(b"\0")
    env = {**os.environ, "TRANSPRUNE_CACHE": str(transprune_cache)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--quick", "--schedules", "paper", "--skip-rss",
         "--threads", "1", "--exports", str(exports), "--docs", str(tmp_path / "docs"), "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "not measured: paper" in done.stderr and "exporting" not in done.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["config"]["schedules"] == ["none"]
    assert data["config"]["requested_schedules"] == ["none", "paper"]
    assert data["measured"]["failed"]["paper"].startswith("load or warm-up failed: ")
    assert "head.onnx" in data["measured"]["failed"]["paper"]
    text = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "- **not measured: paper**, load or warm-up failed" in text
    assert "Peak memory per schedule: not measured (`--skip-rss`)" in text
    assert data["measured"]["rss"] is None and data["plots"]["memory"] is None
